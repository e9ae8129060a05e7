//! # ues-apps: layer 6 of the UES node
//!
//! Applications hosted by the node, and the host they plug into. An application is an [`App`]:
//! a name, its own SQLite tables, XRPC methods with their lexicons, REST routes, `/ws` topics,
//! and a consumer of the node's event log. The [`Host`] applies the applications' migrations,
//! hands their routes and topics to the faces, and feeds each one the event log from a durable
//! cursor kept in the same transaction as the application's own writes: an application that
//! was down catches up where it stopped, and applies every event exactly once.
//!
//! Built in: [`stats`] (`dev.ues.stats`), per-account record counts by collection, and [`feed`]
//! (`dev.ues.feed`), the node as its own Bluesky AppView: timelines, threads, profiles and
//! notifications from the records of the accounts it holds. An application's name is an NSID
//! authority of its own, but the methods it serves need not be in it (the feed serves
//! `app.bsky.*`).
//!
//! ## Layer contract
//! Depends only on `ues-protocol`, plugging its routes and event topics into the registries that
//! layer defines. Nothing below knows this crate exists.

pub mod asset;
pub mod chat;
pub mod contract;
pub mod credential;
pub mod feed;
pub mod lens;
mod mirror;
mod peer;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde_json::Value;
use ues_protocol::gateway::{Registry, Topic};
use ues_protocol::node::Node;
use ues_protocol::node::sequencer::{self, LogEvent};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, OptionalExtension, Transaction};
use ues_protocol::sync::repo::ipld::storage::{Error as StoreError, Migration};

pub use ues_protocol as protocol;

/// Events an application is given per transaction.
const BATCH: usize = 500;

/// How long a woken consumer lets new events gather before it applies them.
const GATHER: Duration = Duration::from_millis(50);

/// An application the node hosts.
pub trait App: Send + Sync + 'static {
    /// Its name: an NSID authority of its own (`dev.ues.stats`), unique on the node.
    fn name(&self) -> &'static str;

    /// Given the node once, when the host is made (before any other call): an application that
    /// reads the node's data outside the calls that pass it (a rebuild reads records) keeps it.
    fn attach(&self, node: &Arc<Node>) {
        let _ = node;
    }

    /// Its SQLite tables (applied to the node's database at start; ids prefixed by its name).
    fn migrations(&self) -> &'static [Migration] {
        &[]
    }

    /// Its own database, when its state is kept apart from the node's (attached to the node's
    /// connections; see [`AppDatabase`]). None by default: its tables are in the node's.
    fn database(&self) -> Option<AppDatabase> {
        None
    }

    /// The lexicons of its XRPC methods (JSON documents): calls are validated against them.
    fn lexicons(&self) -> Vec<Value> {
        Vec::new()
    }

    /// Its XRPC methods (`/xrpc/<its nsid>.*`), served with the node's XRPC layers (limits,
    /// parameter validation, metrics).
    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        Router::new()
    }

    /// Its REST routes (under `/api/v1/apps/<name>/`).
    fn rest(self: Arc<Self>, node: Arc<Node>) -> Router {
        let _ = node;
        Router::new()
    }

    /// Routes it serves outside its own REST prefix (`/api/v1/timeline`): paths no other
    /// application or face serves.
    fn api(self: Arc<Self>, node: Arc<Node>) -> Router {
        let _ = node;
        Router::new()
    }

    /// The OpenAPI `paths` of its REST routes (an object; merged into the node's
    /// `/api/openapi.json`).
    fn openapi(&self) -> Value {
        Value::Object(Default::default())
    }

    /// Its `/ws` topics (name, source).
    fn topics(self: Arc<Self>, node: Arc<Node>) -> Vec<(String, Arc<dyn Topic>)> {
        let _ = node;
        Vec::new()
    }

    /// Applies events of the node's log, in order, inside `tx`, the transaction that also moves
    /// the application's cursor past them: what it writes there commits with the cursor or not
    /// at all. The transaction holds the node's database writer: keep it short (aggregate, then
    /// write once per thing changed).
    fn apply(&self, tx: &Transaction<'_>, events: &[LogEvent]) -> rusqlite::Result<()>;

    /// Rebuilds the application's state from the node's current data inside `tx` (the cursor
    /// moves to the newest event in the same transaction): run when the events it missed are
    /// no longer in the log (pruned past the backfill window), and on first start.
    fn rebuild(&self, tx: &Transaction<'_>) -> rusqlite::Result<()>;

    /// Its background tasks (started with the event consumers, stopped with them).
    fn tasks(self: Arc<Self>, node: Arc<Node>) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = node;
        Vec::new()
    }

    /// How long its consumer, woken by new events, lets more gather before applying them: longer
    /// means fewer transactions under a steady stream of commits, shorter means live
    /// subscribers hear sooner.
    fn gather(&self) -> Duration {
        GATHER
    }

    /// Called after a batch of events committed (to tell live subscribers); nothing by default.
    fn applied(&self, node: &Node, events: &[LogEvent]) {
        let _ = (node, events);
    }
}

/// An application's own database: a file beside the node's (`<schema>.sqlite`), attached to
/// every connection of the node's database under `schema`, so the application's transactions
/// read the node's tables and write its own. It holds the application's cursor too: a
/// transaction is atomic within each database file, not across them, so state and cursor must
/// share a file.
///
/// Its state is derived from the node's data: a file of another layout `version` (or none) has
/// its tables dropped and made again by `sql`, and the application is rebuilt from the node's
/// data. Backups leave it out for the same reason.
#[derive(Debug, Clone, Copy)]
pub struct AppDatabase {
    /// The schema name it is attached under (and its file's stem).
    pub schema: &'static str,
    /// Its page size when created (bytes).
    pub page_size: u32,
    /// Its layout's version (kept as the file's `user_version`; above 0).
    pub version: i64,
    /// Creates its tables (names qualified by the schema).
    pub sql: &'static str,
}

impl AppDatabase {
    /// How the node's storage attaches it.
    pub fn attached(&self) -> ues_protocol::sync::repo::ipld::storage::Attached {
        ues_protocol::sync::repo::ipld::storage::Attached {
            schema: self.schema.to_string(),
            file: format!("{}.sqlite", self.schema).into(),
            page_size: self.page_size,
        }
    }

    /// The table holding the application's cursor.
    fn cursor_table(&self) -> String {
        format!("{}.app_cursor", self.schema)
    }

    /// Makes its tables when the file is new or of another layout (every table in it dropped;
    /// the host then sets the cursor before the log's first event, so that it rebuilds the
    /// application). Returns whether it did.
    pub fn prepare(&self, tx: &Transaction<'_>) -> rusqlite::Result<bool> {
        let s = self.schema;
        let version: i64 = tx.query_row(&format!("PRAGMA {s}.user_version"), [], |r| r.get(0))?;
        if version == self.version {
            return Ok(false);
        }
        let tables: Vec<String> = tx
            .prepare(&format!("SELECT name FROM {s}.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"))?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        for t in tables {
            tx.execute(&format!("DROP TABLE {s}.\"{}\"", t.replace('"', "\"\"")), [])?;
        }
        tx.execute_batch(self.sql)?;
        tx.execute(&format!("CREATE TABLE {s}.app_cursor (app TEXT PRIMARY KEY, seq INTEGER NOT NULL)"), [])?;
        tx.pragma_update(Some(s), "user_version", self.version)?;
        Ok(true)
    }
}

/// The table holding `app`'s cursor.
fn cursor_table(app: &dyn App) -> String {
    app.database().map_or_else(|| "main.app_cursor".to_string(), |d| d.cursor_table())
}

/// How the built-in applications are set up (`node.toml`).
#[derive(Debug, Clone, Default)]
pub struct AppsConfig {
    /// The feed's.
    pub feed: feed::FeedConfig,
    /// The chat's.
    pub chat: chat::ChatConfig,
    /// The asset registry's.
    pub asset: asset::AssetConfig,
    /// The live views'.
    pub lens: lens::LensConfig,
}

/// The applications built into the node, by name.
pub fn built_in(cfg: &AppsConfig) -> Vec<Arc<dyn App>> {
    vec![
        Arc::new(stats::Stats::default()),
        Arc::new(feed::Feed::new(cfg.feed.clone())),
        Arc::new(chat::Chat::new(cfg.chat.clone())),
        Arc::new(asset::Asset::new(cfg.asset.clone())),
        Arc::new(credential::Credentials::default()),
        Arc::new(lens::Lens::new(cfg.lens.clone())),
    ]
}

/// The built-in applications `enabled` names; an unknown name is an error.
pub fn select(enabled: &[String], cfg: &AppsConfig) -> Result<Vec<Arc<dyn App>>, String> {
    let all = built_in(cfg);
    let mut out = Vec::new();
    for name in enabled {
        let app = all.iter().find(|a| a.name() == name).ok_or_else(|| {
            let known: Vec<_> = all.iter().map(|a| a.name()).collect();
            format!("no application named {name:?} (built in: {})", known.join(", "))
        })?;
        out.push(app.clone());
    }
    Ok(out)
}

/// The cursors of the applications (the last event each applied).
const HOST_MIGRATIONS: &[Migration] = &[Migration {
    id: "apps/0001_cursor",
    sql: "CREATE TABLE app_cursor (app TEXT PRIMARY KEY, seq INTEGER NOT NULL);",
}];

/// The applications of a running node.
pub struct Host {
    node: Arc<Node>,
    apps: Vec<Arc<dyn App>>,
}

impl Host {
    /// Applies the applications' migrations (and the host's) to the node's database.
    pub fn new(node: Arc<Node>, apps: Vec<Arc<dyn App>>) -> Result<Self, String> {
        node.migrate(HOST_MIGRATIONS).map_err(|e| e.message)?;
        for app in &apps {
            node.migrate(app.migrations()).map_err(|e| format!("{}: {}", app.name(), e.message))?;
            if let Some(d) = app.database() {
                let db = node.accounts.db();
                if !db.attached().iter().any(|(s, _)| s == d.schema) {
                    return Err(format!("{}: the node's database has no {:?} attached", app.name(), d.schema));
                }
                let made = db
                    .write(|tx| {
                        let made = d.prepare(tx)?;
                        if made {
                            // Before the log's first event: the host rebuilds rather than replays.
                            set_cursor(tx, &d.cursor_table(), app.name(), -1)?;
                        }
                        Ok::<_, StoreError>(made)
                    })
                    .map_err(|e| format!("{}: {e}", app.name()))?;
                if made {
                    tracing::info!(app = app.name(), schema = d.schema, "application database made; rebuilding");
                }
            }
            app.attach(&node);
        }
        Ok(Host { node, apps })
    }

    /// The applications' lexicons (to load into the node's before it is built).
    pub fn lexicons(apps: &[Arc<dyn App>]) -> Vec<Value> {
        apps.iter().flat_map(|a| a.lexicons()).collect()
    }

    /// The applications' XRPC methods, for the XRPC face.
    pub fn xrpc(&self) -> Router<Arc<Node>> {
        self.apps.iter().fold(Router::new(), |r, a| r.merge(a.clone().xrpc()))
    }

    /// The OpenAPI `paths` of the applications' REST routes.
    pub fn openapi(&self) -> Value {
        let mut paths = serde_json::Map::new();
        for app in &self.apps {
            if let Value::Object(p) = app.openapi() {
                paths.extend(p);
            }
        }
        Value::Object(paths)
    }

    /// The applications' REST routes and `/ws` topics, for the gateway.
    pub fn registry(&self) -> Result<Registry, String> {
        let mut reg = Registry::default();
        for app in &self.apps {
            reg = reg.routes(
                Router::new().nest(&format!("/api/v1/apps/{}", app.name()), app.clone().rest(self.node.clone())),
            );
            reg = reg.routes(app.clone().api(self.node.clone()));
            for (name, topic) in app.clone().topics(self.node.clone()) {
                reg = reg.topic(&name, topic)?;
            }
        }
        Ok(reg)
    }

    /// Starts feeding each application the event log (one task each); dropping the handle
    /// stops them (an event batch in progress commits or rolls back whole).
    pub fn start(&self) -> Consumers {
        let mut tasks: Vec<_> = self.apps.iter().map(|a| tokio::spawn(consume(self.node.clone(), a.clone()))).collect();
        for app in &self.apps {
            tasks.extend(app.clone().tasks(self.node.clone()));
        }
        Consumers(tasks)
    }
}

/// The applications' event consumers, once [`Host::start`] started them.
#[must_use = "dropping the handle stops the consumers"]
pub struct Consumers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Consumers {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}

/// Catches `app` up with the event log, then follows it as it grows.
async fn consume(node: Arc<Node>, app: Arc<dyn App>) {
    let mut latest = node.firehose.watch_latest();
    loop {
        let (n, a) = (node.clone(), app.clone());
        match tokio::task::spawn_blocking(move || catch_up(&n, a.as_ref())).await {
            Ok(Ok(0)) => {}
            Ok(Ok(applied)) => tracing::debug!(app = app.name(), applied, "events applied"),
            Ok(Err(e)) => {
                tracing::error!(app = app.name(), error = %e, "applying events failed; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(app = app.name(), error = %e, "the application panicked applying events; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        }
        // New events wake it; a minute passes at most without a look (a missed wake-up costs
        // no more than that). Woken, it lets events gather for a moment: one transaction per
        // its gathering window ([`App::gather`], [`GATHER`] unless it says) at most, so a busy write path
        // shares its database with few of them.
        if tokio::time::timeout(Duration::from_secs(60), latest.changed()).await.is_ok() {
            tokio::time::sleep(app.gather()).await;
        }
    }
}

/// Applies the events after the application's cursor, a batch per transaction, until a batch
/// comes short (everything logged when it was read); returns how many it applied.
pub fn catch_up(node: &Node, app: &dyn App) -> Result<usize, StoreError> {
    let db = node.accounts.db();
    let name = app.name();
    let table = cursor_table(app);
    let read_cursor = format!("SELECT seq FROM {table} WHERE app = ?1");
    let mut total = 0;
    loop {
        let (cursor, latest): (Option<i64>, i64) = db.read(|c| {
            let cursor = c.query_row(&read_cursor, [name], |r| r.get(0)).optional()?;
            Ok::<_, rusqlite::Error>((cursor, sequencer::latest_seq_in(c)?))
        })?;
        let first = sequencer::first_seq(db)?;
        // Never started, or the events after the cursor were pruned: rebuild from the data;
        // but a log that still holds every event since the node's first is replayed instead
        // (the same state, built in batches rather than in one long transaction). A cursor
        // past the log's end (an application database beside an older copy of the node's)
        // rebuilds too.
        let gap = match (cursor, first) {
            (Some(c), _) if c > latest => true,
            (None, Some(1)) => false,
            (None, _) => true,
            (Some(c), Some(f)) => f > c + 1,
            (Some(_), None) => false,
        };
        if gap {
            db.write(|tx| {
                app.rebuild(tx)?;
                let seq = sequencer::latest_seq_in(tx)?;
                set_cursor(tx, &table, name, seq)?;
                Ok::<_, StoreError>(())
            })?;
            tracing::info!(app = name, "application state rebuilt from the node's data");
            continue;
        }
        let cursor = cursor.unwrap_or(0);
        let events = sequencer::read_events(db, cursor, BATCH)?;
        let Some(last) = events.last().map(|e| e.seq) else { return Ok(total) };
        let applied = db.write(|tx| {
            // Another consumer of the same application (a method that waits for the log to be
            // applied) may have moved it: then this batch is its, and told by it.
            let now: Option<i64> = tx.query_row(&read_cursor, [name], |r| r.get(0)).optional()?;
            if now.unwrap_or(0) != cursor {
                return Ok::<_, StoreError>(false);
            }
            app.apply(tx, &events)?;
            set_cursor(tx, &table, name, last)?;
            Ok(true)
        })?;
        if !applied {
            continue;
        }
        app.applied(node, &events);
        total += events.len();
        // A short batch is everything there was: what arrived meanwhile waits for the next
        // wake-up, so that a steady stream of commits is applied in gathered batches, not
        // chased one transaction (one sync) per commit.
        if events.len() < BATCH {
            return Ok(total);
        }
    }
}

fn set_cursor(tx: &Transaction<'_>, table: &str, app: &str, seq: i64) -> rusqlite::Result<()> {
    tx.execute(
        &format!("INSERT INTO {table} (app, seq) VALUES (?1, ?2) ON CONFLICT (app) DO UPDATE SET seq = excluded.seq"),
        rusqlite::params![app, seq],
    )?;
    Ok(())
}
