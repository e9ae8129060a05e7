//! `dev.ues.lens`: live views over records, kept up to date incrementally, and schema lenses
//! between lexicon versions.
//!
//! A view is declared as JSON ([`def`]): the collections it reads, joined on paths, filtered,
//! grouped, with the columns it selects, an order and a bound. It is stored as the account's
//! `dev.ues.lens.view` record (key: its name), so it replicates with the account; every node
//! holding the record builds the view once from the records it holds, then maintains it from
//! the event log with work proportional to each change ([`engine`]), its state committed with
//! the application's cursor. Views are read with `dev.ues.lens.query` (and REST), followed
//! live over `/ws` (topic `lens`: the rows, then each commit's `{added, removed}`), and can back
//! a feed (`app.bsky.feed.getFeedSkeleton`, from a selected `uri` column).

pub mod def;
pub mod engine;
mod records;
pub mod schema;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, OnceLock};

use axum::extract::Query;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use ues_protocol::gateway::Topic;
use ues_protocol::node::extract::XJson;
use ues_protocol::node::sequencer::{self, Happened, LogEvent};
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::accounts::{record_counts, records_in};
use ues_protocol::sync::repo::ipld::storage::Migration;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Connection, OptionalExtension, Transaction, params};
use ues_protocol::sync::repo::ipld::{dagcbor, json as ipld_json};
use ues_protocol::sync::repo::repo::Write;
use ues_protocol::sync::repo::syntax::{Nsid, RecordKey};

use crate::App;
use crate::mirror::{self, Answer, Input, Mirrored, Route, param};
use def::View;
use engine::{Diff, LensError, Maint};

/// The application's name.
pub const NAME: &str = "dev.ues.lens";

/// The collection of view definitions.
pub const VIEW: &str = "dev.ues.lens.view";

/// Migrations of the node's database. The views' state was kept there before it had a database
/// of its own ([`DATABASE`]): the first three made and remade it there and are empty now; the
/// fourth drops it.
const MIGRATIONS: &[Migration] = &[
    Migration { id: "dev.ues.lens/0001_views", sql: "" },
    Migration { id: "dev.ues.lens/0002_digest_keys", sql: "" },
    Migration { id: "dev.ues.lens/0003_build_again", sql: "" },
    Migration {
        id: "dev.ues.lens/0004_own_database",
        sql: "DROP TABLE IF EXISTS main.lens_in; DROP TABLE IF EXISTS main.lens_key; DROP TABLE IF EXISTS main.lens_mm;
              DROP TABLE IF EXISTS main.lens_out; DROP TABLE IF EXISTS main.lens_view;
              DELETE FROM main.app_cursor WHERE app = 'dev.ues.lens';",
    },
];

/// The views' own database (`lens.sqlite` beside the node's). Its pages are 4 KiB where the
/// node's are 1 KiB: a change walks several B-trees of up to millions of entries from root to
/// leaf, and four times the fan-out takes a level or two off each walk (measured in
/// `docs/benchmarks.md`: a change on a million-row view 43 µs rather than 63). The node's own
/// tables keep small pages, which suit its commits. A new layout `version` builds every view
/// again from the records held (a replay of the log would build a view again at each event of
/// its definition's record).
pub const DATABASE: crate::AppDatabase =
    crate::AppDatabase { schema: "lens", page_size: 4096, version: 2, sql: engine::SCHEMA_SQL };

/// Messages queued to one `/ws` subscriber at most (one that lags is told how many it missed).
const QUEUE: usize = 256;

/// The largest first message of a view subscription (its rows), bytes.
const MAX_FIRST_BYTES: usize = 8 << 20;

/// Subscriptions to views at once, node-wide, at most.
const MAX_SUBSCRIPTIONS: usize = 10_000;

/// How views are bounded (`[lens]` in `node.toml`).
#[derive(Debug, Clone)]
pub struct LensConfig {
    /// Stored rows (inputs, groups and outputs) one view may hold; a definition whose inputs
    /// already pass it is refused, and a view that grows past it stops.
    pub max_view_rows: i64,
    /// Views one account may have.
    pub max_views_per_account: usize,
}

impl Default for LensConfig {
    fn default() -> Self {
        LensConfig { max_view_rows: 5_000_000, max_views_per_account: 32 }
    }
}

/// A view as the catalog holds it.
struct Loaded {
    id: i64,
    did: String,
    name: String,
    view: Option<Arc<View>>,
    built_seq: i64,
    stopped: Option<String>,
}

impl Loaded {
    fn uri(&self) -> String {
        view_uri(&self.did, &self.name)
    }
}

fn view_uri(did: &str, name: &str) -> String {
    format!("at://{did}/{VIEW}/{name}")
}

/// A message for a view's subscribers, told once the event `seq` it follows has committed.
struct Told {
    seq: i64,
    id: i64,
    msg: Value,
    /// The view is gone (deleted, redefined or stopped): its subscriptions end.
    close: bool,
}

/// Builds of one account's views in a minute, at most (a definition rewritten faster than that
/// stops, rather than rebuilding inside the event consumer's transaction again and again).
const BUILDS_PER_MINUTE: usize = 10;

/// A `/ws` subscriber of a view: the newest event its first rows already held, and its queue.
struct Subscriber {
    as_of: i64,
    tx: broadcast::Sender<Value>,
}

/// The application.
pub struct Lens {
    cfg: LensConfig,
    node: OnceLock<Arc<Node>>,
    /// The views, read from the database when `dirty`.
    catalog: parking_lot::Mutex<(bool, Arc<Vec<Loaded>>)>,
    /// Messages to subscribers not yet told (their transaction may not have committed yet).
    pending: parking_lot::Mutex<Vec<Told>>,
    /// When each account's views were last built (a bound on rebuilds).
    builds: parking_lot::Mutex<HashMap<String, Vec<std::time::Instant>>>,
    /// Subscribers by view id.
    subscribers: parking_lot::Mutex<HashMap<i64, Vec<Subscriber>>>,
}

impl Lens {
    /// The application, bounded by `cfg`.
    pub fn new(cfg: LensConfig) -> Self {
        Lens {
            cfg,
            node: OnceLock::new(),
            catalog: parking_lot::Mutex::new((true, Arc::new(Vec::new()))),
            pending: parking_lot::Mutex::new(Vec::new()),
            builds: parking_lot::Mutex::new(HashMap::new()),
            subscribers: parking_lot::Mutex::new(HashMap::new()),
        }
    }

    fn node(&self) -> &Arc<Node> {
        self.node.get().expect("attached before use")
    }

    fn catalog(&self, conn: &Connection) -> rusqlite::Result<Arc<Vec<Loaded>>> {
        let mut c = self.catalog.lock();
        if c.0 {
            c.1 = Arc::new(load(conn, &self.node().lexicons)?);
            c.0 = false;
        }
        Ok(c.1.clone())
    }

    /// Reads the catalog again now (within the caller's transaction) and again at the next
    /// use (in case that transaction rolls back).
    fn reload(&self, conn: &Connection) -> rusqlite::Result<Arc<Vec<Loaded>>> {
        let fresh = Arc::new(load(conn, &self.node().lexicons)?);
        *self.catalog.lock() = (true, fresh.clone());
        Ok(fresh)
    }
}

fn load(conn: &Connection, lexicons: &ues_protocol::sync::repo::lexicon::Lexicons) -> rusqlite::Result<Vec<Loaded>> {
    let mut s =
        conn.prepare_cached("SELECT id, did, name, definition, built_seq, stopped FROM lens_view ORDER BY id")?;
    let rows = s.query_map([], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get(4)?,
            r.get(5)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (id, did, name, definition, built_seq, stopped) = row?;
        let compiled = serde_json::from_str::<Value>(&definition)
            .map_err(|e| e.to_string())
            .and_then(|d| def::compile(&d, lexicons).map_err(|e| e.0));
        let (view, stopped) = match (compiled, stopped) {
            (Ok(v), stopped) => (Some(Arc::new(v)), stopped),
            (Err(_), Some(s)) => (None, Some(s)),
            // It compiled when built: the node's lexicons changed since. Stopped, not frozen.
            (Err(e), None) => {
                let why = format!("the definition no longer checks against this node's lexicons: {e}");
                conn.execute("UPDATE lens_view SET stopped = ?2 WHERE id = ?1", params![id, why])?;
                (None, Some(why))
            }
        };
        out.push(Loaded { id, did, name, view, built_seq, stopped });
    }
    Ok(out)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A record's JSON (with the parts every alias offers), from its DAG-CBOR.
fn record_value(bytes: &[u8], did: &str, collection: &str, rkey: &str, cid: &str) -> Option<Value> {
    let ipld = dagcbor::decode_atproto(bytes).ok()?;
    match ipld_json::to_json(&ipld) {
        Value::Object(m) => Some(def::with_meta(m, did, collection, rkey, cid)),
        _ => None,
    }
}

/// The record's columns for every alias of `view` reading `collection`.
fn changes_of(view: &View, collection: &str, record: Option<&Value>) -> Vec<(usize, Option<engine::Row>)> {
    view.aliases_of(collection).map(|a| (a, record.map(|r| engine::row_of(view, a, r)))).collect()
}

/// Per-batch maintenance of the views touched.
struct Batch<'t> {
    tx: &'t Connection,
    max_state: i64,
    maints: HashMap<i64, Maint<'t>>,
    stopped: Vec<(i64, String)>,
    closed: &'t mut Vec<(i64, String)>,
}

impl<'t> Batch<'t> {
    fn change(
        &mut self,
        l: &'t Loaded,
        view: &'t View,
        alias: usize,
        rid: &str,
        row: Option<engine::Row>,
        diff: &mut Diff,
    ) -> rusqlite::Result<()> {
        if self.stopped.iter().any(|(id, _)| *id == l.id) {
            return Ok(());
        }
        if !self.maints.contains_key(&l.id) {
            let m = Maint::new(self.tx, l.id, view, self.max_state)?;
            self.maints.insert(l.id, m);
        }
        let m = self.maints.get_mut(&l.id).expect("inserted");
        match m.change(alias, rid, row, diff) {
            Ok(()) => Ok(()),
            Err(LensError::Sql(e)) => Err(e),
            Err(LensError::Stop(why)) => {
                self.maints.remove(&l.id);
                self.stopped.push((l.id, why));
                Ok(())
            }
        }
    }

    fn finish(mut self) -> rusqlite::Result<()> {
        for (_, m) in std::mem::take(&mut self.maints) {
            m.finish()?;
        }
        for (id, why) in self.stopped {
            tracing::warn!(app = NAME, view = id, reason = %why, "a view stopped");
            engine::drop_state(self.tx, id)?;
            self.tx.execute("UPDATE lens_view SET stopped = ?2 WHERE id = ?1", params![id, why])?;
            self.closed.push((id, format!("stopped: {why}")));
        }
        Ok(())
    }
}

impl Lens {
    /// Defines (or redefines) the view `name` of `did` from its record, and builds it from the
    /// records held now.
    fn define(
        &self,
        tx: &Transaction<'_>,
        did: &str,
        name: &str,
        cid: &str,
        record: &Value,
        seq: i64,
    ) -> rusqlite::Result<()> {
        self.undefine(tx, did, name, seq, "redefined")?;
        let definition = record.get("definition").cloned().unwrap_or(Value::Null);
        let compiled = def::compile(&definition, &self.node().lexicons);
        let stopped = match &compiled {
            Ok(v) if v.name != name => {
                Some(format!("the definition's name {:?} is not its record key {name:?}", v.name))
            }
            Ok(_) => None,
            Err(e) => Some(format!("the definition was refused: {e}")),
        };
        // The bounds createView checks hold for a record written any other way too.
        let views: i64 = tx.query_row("SELECT count(*) FROM lens_view WHERE did = ?1", [did], |r| r.get(0))?;
        let stopped = stopped.or_else(|| {
            (views as usize >= self.cfg.max_views_per_account).then(|| {
                format!(
                    "the account has {} views already ([lens] max_views_per_account)",
                    self.cfg.max_views_per_account
                )
            })
        });
        let stopped = stopped.or_else(|| {
            let mut builds = self.builds.lock();
            let now = std::time::Instant::now();
            let recent = builds.entry(did.to_string()).or_default();
            recent.retain(|t| now.duration_since(*t) < std::time::Duration::from_secs(60));
            if recent.len() >= BUILDS_PER_MINUTE {
                return Some(format!(
                    "the account's views were rebuilt more than {BUILDS_PER_MINUTE} times in a minute"
                ));
            }
            recent.push(now);
            None
        });
        let seq = sequencer::latest_seq_in(tx)?;
        tx.execute(
            "INSERT INTO lens_view (did, name, cid, definition, built_seq, stopped, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![did, name, cid, definition.to_string(), seq, stopped, now_ms()],
        )?;
        let id = tx.last_insert_rowid();
        if let (Ok(view), None) = (compiled, &stopped) {
            let started = std::time::Instant::now();
            let n = self.build(tx, id, &view)?;
            tracing::info!(app = NAME, %did, view = name, records = n, ms = started.elapsed().as_millis() as u64, "a view was built");
        }
        self.reload(tx)?;
        Ok(())
    }

    fn undefine(&self, tx: &Transaction<'_>, did: &str, name: &str, seq: i64, why: &str) -> rusqlite::Result<()> {
        let id: Option<i64> = tx
            .query_row("SELECT id FROM lens_view WHERE did = ?1 AND name = ?2", params![did, name], |r| r.get(0))
            .optional()?;
        if let Some(id) = id {
            engine::drop_state(tx, id)?;
            tx.execute("DELETE FROM lens_view WHERE id = ?1", [id])?;
            self.close(seq, id, &view_uri(did, name), why);
            self.reload(tx)?;
        }
        Ok(())
    }

    /// Ends a view's subscriptions (told after `seq` commits).
    fn close(&self, seq: i64, id: i64, uri: &str, why: &str) {
        let msg = json!({ "view": uri, "seq": seq, "closed": why });
        self.pending.lock().push(Told { seq, id, msg, close: true });
    }

    /// Brings the account's own view definitions in line with its records (after an import),
    /// or removes them all (`gone`: the account was deleted).
    fn reconcile_views(&self, tx: &Transaction<'_>, did: &str, gone: bool, seq: i64) -> rusqlite::Result<()> {
        let held: Vec<(String, String)> = tx
            .prepare_cached("SELECT name, cid FROM lens_view WHERE did = ?1")?
            .query_map([did], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<rusqlite::Result<_>>()?;
        let records = if gone { Vec::new() } else { records_in(tx, did, &[VIEW])? };
        for (name, _) in &held {
            if !records.iter().any(|r| &r.rkey == name) {
                self.undefine(tx, did, name, seq, "deleted")?;
            }
        }
        for r in records {
            if held.iter().any(|(n, c)| *n == r.rkey && *c == r.cid) {
                continue;
            }
            let value = r
                .cid
                .parse()
                .ok()
                .and_then(|cid| self.node().accounts.blocks().get(&cid).ok().flatten())
                .and_then(|b| record_value(&b, did, VIEW, &r.rkey, &r.cid));
            if let Some(v) = value {
                self.define(tx, did, &r.rkey, &r.cid, &v, seq)?;
            }
        }
        Ok(())
    }

    /// A created or updated record's JSON: from the event's own blocks, or the node's (a
    /// record the event left out, as a large commit's may).
    fn op_record(&self, did: &str, op: &sequencer::RecordOp) -> Option<Value> {
        let cid = op.cid.as_deref()?;
        let bytes: Vec<u8> = match op.record.as_deref() {
            Some(b) => b.to_vec(),
            None => self.node().accounts.blocks().get(&cid.parse().ok()?).ok().flatten()?.to_vec(),
        };
        record_value(&bytes, did, &op.collection, &op.rkey, cid)
    }

    /// Feeds every record the view reads, as held now, through its maintenance.
    fn build(&self, tx: &Transaction<'_>, id: i64, view: &View) -> rusqlite::Result<usize> {
        let node = self.node().clone();
        let collections: BTreeSet<&str> = view.aliases.iter().map(|a| a.collection.as_str()).collect();
        let collections: Vec<&str> = collections.into_iter().collect();
        let mut m = Maint::new(tx, id, view, self.cfg.max_view_rows)?;
        let mut diff = Diff::default();
        let mut n = 0;
        for (did, _, status) in ues_protocol::sync::repo::accounts::account_dids(tx)? {
            if status != "active" {
                continue;
            }
            for r in records_in(tx, &did, &collections)? {
                let Some(bytes) = r.cid.parse().ok().and_then(|cid| node.accounts.blocks().get(&cid).ok().flatten())
                else {
                    continue;
                };
                let Some(value) = record_value(&bytes, &did, &r.collection, &r.rkey, &r.cid) else { continue };
                let rid = format!("at://{did}/{}/{}", r.collection, r.rkey);
                for (alias, row) in changes_of(view, &r.collection, Some(&value)) {
                    match m.change(alias, &rid, row, &mut diff) {
                        Ok(()) => {}
                        Err(LensError::Sql(e)) => return Err(e),
                        Err(LensError::Stop(why)) => {
                            engine::drop_state(tx, id)?;
                            tx.execute("UPDATE lens_view SET stopped = ?2 WHERE id = ?1", params![id, why])?;
                            return Ok(n);
                        }
                    }
                }
                n += 1;
                diff = Diff::default();
            }
        }
        m.finish()?;
        Ok(n)
    }

    /// Brings the view's copy of one account's records in line with what the node holds (after
    /// an import, or when the account is gone).
    fn resync<'t>(
        &self,
        batch: &mut Batch<'t>,
        l: &'t Loaded,
        view: &'t View,
        did: &str,
        gone: bool,
        diff: &mut Diff,
    ) -> rusqlite::Result<()> {
        let node = self.node().clone();
        for (alias, a) in view.aliases.iter().enumerate() {
            let prefix = format!("at://{did}/{}/", a.collection);
            let mut held: BTreeSet<String> = engine::held(batch.tx, l.id, view, alias, did)?.into_iter().collect();
            if !gone {
                for r in records_in(batch.tx, did, &[a.collection.as_str()])? {
                    let rid = format!("{prefix}{}", r.rkey);
                    held.remove(&rid);
                    let value = r
                        .cid
                        .parse()
                        .ok()
                        .and_then(|cid| node.accounts.blocks().get(&cid).ok().flatten())
                        .and_then(|b| record_value(&b, did, &a.collection, &r.rkey, &r.cid));
                    let row = value.map(|v| engine::row_of(view, alias, &v));
                    batch.change(l, view, alias, &rid, row, diff)?;
                }
            }
            for rid in held {
                batch.change(l, view, alias, &rid, None, diff)?;
            }
        }
        Ok(())
    }
}

impl App for Lens {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(node.clone());
    }

    fn database(&self) -> Option<crate::AppDatabase> {
        Some(DATABASE)
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    /// Subscribers follow views live: a short gathering window (a batch per 10 ms at most).
    fn gather(&self) -> std::time::Duration {
        std::time::Duration::from_millis(10)
    }

    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        let (a, b, c, d, e) = (self.clone(), self.clone(), self.clone(), self.clone(), self.clone());
        Router::new()
            .route(
                "/xrpc/dev.ues.lens.createView",
                post(move |h: HeaderMap, XJson(body): XJson<Value>| create_view(a, h, body)),
            )
            .route(
                "/xrpc/dev.ues.lens.deleteView",
                post(move |h: HeaderMap, XJson(body): XJson<Value>| delete_view(b, h, body)),
            )
            .route(
                "/xrpc/dev.ues.lens.listViews",
                get(move |h: HeaderMap, Query(p): Query<Vec<(String, String)>>| list_views(c, h, p)),
            )
            .route(
                "/xrpc/dev.ues.lens.query",
                get(move |h: HeaderMap, Query(p): Query<Vec<(String, String)>>| query(d, h, p)),
            )
            .route("/xrpc/dev.ues.lens.createSchemaLens", {
                let app = self.clone();
                post(move |h: HeaderMap, XJson(body): XJson<Value>| records::create(app.node().clone(), h, body))
            })
            .route("/xrpc/dev.ues.lens.putRecord", {
                let app = self.clone();
                post(move |h: HeaderMap, XJson(body): XJson<Value>| records::put_record(app.node().clone(), h, body))
            })
            .route("/xrpc/dev.ues.lens.getRecord", {
                let app = self.clone();
                get(move |Query(p): Query<Vec<(String, String)>>| records::get_record(app.node().clone(), p))
            })
            .route("/xrpc/dev.ues.lens.listRecords", {
                let app = self.clone();
                get(move |Query(p): Query<Vec<(String, String)>>| records::list_records(app.node().clone(), p))
            })
            .route(
                "/xrpc/app.bsky.feed.getFeedSkeleton",
                get(move |h: HeaderMap, Query(p): Query<Vec<(String, String)>>| feed_skeleton(e, h, p)),
            )
    }

    fn api(self: Arc<Self>, node: Arc<Node>) -> Router {
        mirror::routes(self, node, ROUTES)
    }

    fn openapi(&self) -> Value {
        let mut paths = mirror::openapi(LEXICONS, ROUTES, "lenses", public);
        // REST answers a view or record not found with 404, and a stopped or existing view
        // with 409.
        for op in paths
            .as_object_mut()
            .into_iter()
            .flat_map(|p| p.values_mut())
            .filter_map(Value::as_object_mut)
            .flat_map(|o| o.values_mut())
        {
            let err = json!({ "description": "", "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ApiError" } } } });
            let mut e404 = err.clone();
            e404["description"] = json!("Not found: the body names what");
            let mut e409 = err;
            e409["description"] = json!("Conflict: the view exists, or stopped (the body says why)");
            op["responses"]["404"] = e404;
            op["responses"]["409"] = e409;
        }
        paths
    }

    fn topics(self: Arc<Self>, node: Arc<Node>) -> Vec<(String, Arc<dyn Topic>)> {
        let _ = node;
        vec![("lens".to_string(), Arc::new(LensTopic { app: self }) as Arc<dyn Topic>)]
    }

    fn apply(&self, tx: &Transaction<'_>, events: &[LogEvent]) -> rusqlite::Result<()> {
        if let Some(first) = events.first() {
            // A batch applied again (its first attempt rolled back) tells its differences once.
            self.pending.lock().retain(|t| t.seq < first.seq);
        }
        let mut catalog = self.catalog(tx)?;
        let mut told = Vec::new();
        for e in events {
            // Definitions first: a view defined by this event is built from the records as they
            // stand now, which already hold this event's other records.
            if let Happened::Commit(ops) = &e.what {
                for op in ops.iter().filter(|o| o.collection == VIEW) {
                    if RecordKey::new(&op.rkey).is_err() {
                        continue;
                    }
                    let record = if op.action == "delete" { None } else { self.op_record(&e.did, op) };
                    match (op.action.as_str(), record) {
                        ("delete", _) => self.undefine(tx, &e.did, &op.rkey, e.seq, "deleted")?,
                        (_, Some(r)) => {
                            let existing = catalog.iter().find(|l| l.did == e.did && l.name == op.rkey).map(|l| l.id);
                            let unchanged = match existing {
                                Some(id) => l_cid(tx, id)? == op.cid,
                                None => false,
                            };
                            if !unchanged {
                                self.define(tx, &e.did, &op.rkey, op.cid.as_deref().unwrap_or_default(), &r, e.seq)?;
                            }
                        }
                        _ => {}
                    }
                    catalog = self.catalog(tx)?;
                }
            }
            match &e.what {
                Happened::Sync => {
                    self.reconcile_views(tx, &e.did, false, e.seq)?;
                    catalog = self.catalog(tx)?;
                }
                Happened::Account { status } if status == "deleted" => {
                    self.reconcile_views(tx, &e.did, true, e.seq)?;
                    catalog = self.catalog(tx)?;
                }
                _ => {}
            }
            let mut closed = Vec::new();
            let mut batch = Batch {
                tx,
                max_state: self.cfg.max_view_rows,
                maints: HashMap::new(),
                stopped: Vec::new(),
                closed: &mut closed,
            };
            let mut diffs: Vec<(i64, String, Diff)> = Vec::new();
            for l in catalog.iter() {
                let Some(view) = l.view.as_deref() else { continue };
                if l.stopped.is_some() || e.seq <= l.built_seq {
                    continue;
                }
                let mut diff = Diff::default();
                match &e.what {
                    Happened::Commit(ops) => {
                        for op in ops {
                            if view.aliases_of(&op.collection).next().is_none() {
                                continue;
                            }
                            let rid = format!("at://{}/{}/{}", e.did, op.collection, op.rkey);
                            let record = match op.action.as_str() {
                                "delete" => None,
                                _ => self.op_record(&e.did, op),
                            };
                            for (alias, row) in changes_of(view, &op.collection, record.as_ref()) {
                                batch.change(l, view, alias, &rid, row, &mut diff)?;
                            }
                        }
                    }
                    Happened::Sync => self.resync(&mut batch, l, view, &e.did, false, &mut diff)?,
                    // Only an active account's records are in views: one taken down, deactivated
                    // or deleted leaves them, and comes back into them when active again.
                    Happened::Account { status } => {
                        self.resync(&mut batch, l, view, &e.did, status != "active", &mut diff)?
                    }
                    _ => {}
                }
                diff.net();
                if !diff.is_empty() {
                    diffs.push((l.id, l.uri(), diff));
                }
            }
            let stopped: Vec<i64> = batch.stopped.iter().map(|(id, _)| *id).collect();
            batch.finish()?;
            for (id, uri, diff) in diffs {
                if !stopped.contains(&id) {
                    let msg = json!({ "view": uri, "seq": e.seq, "added": diff.added, "removed": diff.removed });
                    told.push(Told { seq: e.seq, id, msg, close: false });
                }
            }
            if !closed.is_empty() {
                for (id, why) in closed {
                    let uri = catalog.iter().find(|l| l.id == id).map(|l| l.uri()).unwrap_or_default();
                    told.push(Told {
                        seq: e.seq,
                        id,
                        msg: json!({ "view": uri, "seq": e.seq, "closed": why }),
                        close: true,
                    });
                }
                catalog = self.reload(tx)?;
            }
        }
        self.pending.lock().extend(told);
        Ok(())
    }

    fn rebuild(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        // Every view is built again from the records held now (from the definitions the
        // accounts' records hold).
        let seq = sequencer::latest_seq_in(tx)?;
        let old: Vec<(i64, String, String)> = tx
            .prepare("SELECT id, did, name FROM lens_view")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<rusqlite::Result<_>>()?;
        self.pending.lock().clear();
        for (id, did, name) in old {
            self.close(seq, id, &view_uri(&did, &name), "rebuilt");
        }
        for table in ["lens_in", "lens_key", "lens_mm", "lens_out", "lens_view"] {
            tx.execute(&format!("DELETE FROM {table}"), [])?;
        }
        self.reload(tx)?;
        for (did, _, status) in ues_protocol::sync::repo::accounts::account_dids(tx)? {
            if status == "deleted" {
                continue;
            }
            for r in records_in(tx, &did, &[VIEW])? {
                let value = r
                    .cid
                    .parse()
                    .ok()
                    .and_then(|cid| self.node().accounts.blocks().get(&cid).ok().flatten())
                    .and_then(|b| record_value(&b, &did, VIEW, &r.rkey, &r.cid));
                if let Some(v) = value {
                    self.define(tx, &did, &r.rkey, &r.cid, &v, seq)?;
                }
            }
        }
        Ok(())
    }

    fn applied(&self, _node: &Node, events: &[LogEvent]) {
        let Some(last) = events.last().map(|e| e.seq) else { return };
        // Taken and told under the subscribers' lock: two committers tell in commit order.
        let mut subs = self.subscribers.lock();
        let ready: Vec<Told> = {
            let mut p = self.pending.lock();
            let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut *p).into_iter().partition(|t| t.seq <= last);
            *p = later;
            ready
        };
        if ready.is_empty() {
            return;
        }
        subs.retain(|_, list| {
            list.retain(|s| s.tx.receiver_count() > 0);
            !list.is_empty()
        });
        for t in ready {
            if let Some(list) = subs.get(&t.id) {
                for s in list.iter().filter(|s| s.as_of < t.seq) {
                    let _ = s.tx.send(t.msg.clone());
                }
            }
            if t.close {
                subs.remove(&t.id);
            }
        }
    }
}

fn l_cid(tx: &Connection, id: i64) -> rusqlite::Result<Option<String>> {
    tx.query_row("SELECT cid FROM lens_view WHERE id = ?1", [id], |r| r.get(0)).optional()
}

/// A view's row in the catalog table.
struct Found {
    id: i64,
    did: String,
    name: String,
    stopped: Option<String>,
}

/// The view a method names: its `at://` URI, or the caller's view of that name.
fn find(conn: &Connection, view: &str, caller: Option<&str>) -> rusqlite::Result<Option<Found>> {
    let (did, name) = match view.strip_prefix("at://").and_then(|r| r.split_once('/')) {
        Some((did, rest)) => match rest.split_once('/') {
            Some((VIEW, name)) => (did.to_string(), name.to_string()),
            _ => return Ok(None),
        },
        None => match caller {
            Some(did) => (did.to_string(), view.to_string()),
            None => return Ok(None),
        },
    };
    conn.prepare_cached("SELECT id, did, name, stopped FROM lens_view WHERE did = ?1 AND name = ?2")?
        .query_row(params![did, name], |r| {
            Ok(Found { id: r.get(0)?, did: r.get(1)?, name: r.get(2)?, stopped: r.get(3)? })
        })
        .optional()
}

fn read<T>(node: &Node, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, NodeError> {
    node.accounts.db().read(f).map_err(NodeError::internal)
}

fn signed_in(node: &Node, headers: &HeaderMap, nsid: &str) -> Option<String> {
    headers
        .contains_key(axum::http::header::AUTHORIZATION)
        .then(|| crate::peer::caller(node, headers, nsid).ok())
        .flatten()
}

async fn create_view(app: Arc<Lens>, headers: HeaderMap, body: Value) -> Answer {
    let node = app.node().clone();
    let did = crate::peer::caller(&node, &headers, "dev.ues.lens.createView")?;
    blocking(move || {
        let definition = body.get("definition").cloned().unwrap_or(Value::Null);
        let view = def::compile(&definition, &node.lexicons).map_err(|e| NodeError::bad("InvalidDefinition", e.0))?;
        let (mine, counts) = read(&node, |c| {
            let mine: Vec<String> = c
                .prepare_cached("SELECT name FROM lens_view WHERE did = ?1")?
                .query_map([&did], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            Ok((mine, record_counts(c, None)?))
        })?;
        if mine.contains(&view.name) {
            return Err(NodeError::conflict(
                "ViewExists",
                format!("a view named {:?} exists: delete it first", view.name),
            ));
        }
        if mine.len() >= app.cfg.max_views_per_account {
            return Err(NodeError::bad(
                "TooManyViews",
                format!("an account has at most {} views", app.cfg.max_views_per_account),
            ));
        }
        // The records it would hold (each read once per alias reading its collection).
        let inputs: u64 = view
            .aliases
            .iter()
            .map(|a| counts.iter().filter(|(_, c, _)| *c == a.collection).map(|(_, _, n)| n).sum::<u64>())
            .sum();
        if inputs as i64 > app.cfg.max_view_rows {
            return Err(NodeError::bad(
                "ViewTooLarge",
                format!(
                    "the view would hold {inputs} records, past this node's bound of {} ([lens] max_view_rows)",
                    app.cfg.max_view_rows
                ),
            ));
        }
        let collection = Nsid::new(VIEW).map_err(NodeError::internal)?;
        let record =
            json!({ "$type": VIEW, "definition": definition, "createdAt": sequencer::iso_from_millis(now_ms()) });
        let (ipld, _) = node.prepare_record(&collection, &view.name, record, Some(true))?;
        let did = node.served_did(&did)?;
        let rkey = RecordKey::new(&view.name).map_err(|e| NodeError::invalid(e.to_string()))?;
        let res = node.commit(None, &did, &[Write::Create { collection, rkey, record: ipld }], None)?;
        let cid = res.ops.first().and_then(|o| o.cid).map(|c| c.to_string()).unwrap_or_default();
        // The view is built before the call answers: apply the log up to this commit now (the
        // event consumer may be applying an earlier batch meanwhile: then look again).
        let mut found = None;
        for _ in 0..200 {
            crate::catch_up(&node, app.as_ref()).map_err(NodeError::internal)?;
            found = read(&node, |c| find(c, &view.name, Some(did.as_str())))?;
            if found.is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let Some(found) = found else { return Err(NodeError::internal("a new view was not built")) };
        let stopped = found.stopped;
        if let Some(why) = stopped {
            let name = if why.contains("max_view_rows") { "ViewTooLarge" } else { "ViewStopped" };
            return Err(NodeError::bad(name, why));
        }
        tracing::info!(app = NAME, %did, view = %view.name, "a view was created");
        Ok(Json(json!({ "uri": view_uri(did.as_str(), &view.name), "name": view.name, "cid": cid })))
    })
    .await
}

async fn delete_view(app: Arc<Lens>, headers: HeaderMap, body: Value) -> Answer {
    let node = app.node().clone();
    let did = crate::peer::caller(&node, &headers, "dev.ues.lens.deleteView")?;
    blocking(move || {
        let name = body.get("view").and_then(Value::as_str).unwrap_or_default();
        let Some(Found { did: owner, name, .. }) = read(&node, |c| find(c, name, Some(&did)))? else {
            return Err(NodeError::not_found("ViewNotFound", "no such view"));
        };
        if owner != did {
            return Err(NodeError::new(
                axum::http::StatusCode::FORBIDDEN,
                "NotAuthorized",
                "the view is another account's",
            ));
        }
        let collection = Nsid::new(VIEW).map_err(NodeError::internal)?;
        let rkey = RecordKey::new(&name).map_err(|e| NodeError::invalid(e.to_string()))?;
        let did = node.served_did(&did)?;
        node.commit(None, &did, &[Write::Delete { collection, rkey, swap: None }], None)?;
        crate::catch_up(&node, app.as_ref()).map_err(NodeError::internal)?;
        Ok(Json(json!({ "uri": view_uri(did.as_str(), &name) })))
    })
    .await
}

async fn list_views(app: Arc<Lens>, headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let node = app.node().clone();
    let did = match param(&p, "repo") {
        Some(r) => node.readable_repo(r)?.did.to_string(),
        None => crate::peer::caller(&node, &headers, "dev.ues.lens.listViews")?,
    };
    let rows = read(&node, |c| {
        c.prepare_cached(
            "SELECT name, definition, top_n, stopped, created_at FROM lens_view WHERE did = ?1 ORDER BY name",
        )?
        .query_map([&did], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, i64>(4)?,
            ))
        })?
        .collect::<rusqlite::Result<Vec<_>>>()
    })?;
    let views: Vec<Value> = rows
        .into_iter()
        .map(|(name, definition, n, stopped, _)| {
            let mut v = json!({
                "uri": view_uri(&did, &name),
                "name": name,
                "definition": serde_json::from_str::<Value>(&definition).unwrap_or(Value::Null),
                "rows": n,
            });
            if let Some(s) = stopped {
                v["stopped"] = Value::String(s);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "views": views })))
}

/// A view's rows, in order, from a cursor.
fn page(
    node: &Node,
    view: &str,
    caller: Option<&str>,
    limit: usize,
    cursor: Option<&str>,
) -> Result<(Vec<Value>, Option<String>), NodeError> {
    let after = decode_cursor(cursor)?;
    read(node, |c| {
        let Some(Found { id, stopped, .. }) = find(c, view, caller)? else {
            return Ok(Err(NodeError::not_found("ViewNotFound", "no such view")));
        };
        if let Some(why) = stopped {
            return Ok(Err(NodeError::conflict("ViewStopped", why)));
        }
        let (rows, last) = engine::rows(c, id, after.as_deref(), limit)?;
        let cursor = (rows.len() == limit).then(|| last.map(|l| data_encoding::HEXLOWER.encode(&l))).flatten();
        Ok(Ok((rows, cursor)))
    })?
}

/// A page of a feed: post URIs and the next page's cursor.
pub type FeedPage = (Vec<String>, Option<String>);

/// The posts of a view that backs a feed (its selected `uri` column, in the view's order) and
/// the next page's cursor; `None` when there is no such view (or the node runs no views).
pub fn feed_posts(
    conn: &Connection,
    view: &str,
    limit: usize,
    cursor: Option<&str>,
) -> Result<Option<FeedPage>, NodeError> {
    let after = decode_cursor(cursor)?;
    let found = match find(conn, view, None) {
        Ok(Some(f)) if f.stopped.is_none() => f,
        _ => return Ok(None),
    };
    let (rows, last) = engine::rows(conn, found.id, after.as_deref(), limit).map_err(NodeError::internal)?;
    let cursor = (rows.len() == limit).then(|| last.map(|l| data_encoding::HEXLOWER.encode(&l))).flatten();
    let posts = rows
        .iter()
        .filter_map(|r| r.get("uri").and_then(Value::as_str))
        .filter(|u| u.starts_with("at://") && u.contains("/app.bsky.feed.post/"))
        .map(str::to_string)
        .collect();
    Ok(Some((posts, cursor)))
}

/// A page cursor (a row's place in the view's order, hex).
fn decode_cursor(cursor: Option<&str>) -> Result<Option<Vec<u8>>, NodeError> {
    match cursor {
        None | Some("") => Ok(None),
        Some(c) => {
            data_encoding::HEXLOWER.decode(c.as_bytes()).map(Some).map_err(|_| NodeError::invalid("Malformed cursor"))
        }
    }
}

fn limit_param(p: &[(String, String)], default: usize, max: usize) -> Result<usize, NodeError> {
    match param(p, "limit") {
        None => Ok(default),
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| NodeError::invalid(format!("limit is 1-{max}"))),
    }
}

async fn query(app: Arc<Lens>, headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let node = app.node().clone();
    blocking(move || {
        let view = param(&p, "view").ok_or_else(|| NodeError::invalid("view is required"))?;
        let caller = if view.starts_with("at://") { None } else { signed_in(&node, &headers, "dev.ues.lens.query") };
        if !view.starts_with("at://") && caller.is_none() {
            return Err(NodeError::auth_required("a view named without its URI is the signed-in caller's"));
        }
        let limit = limit_param(&p, 100, 1000)?;
        let (rows, cursor) = page(&node, view, caller.as_deref(), limit, param(&p, "cursor"))?;
        let mut out = json!({ "rows": rows });
        if let Some(c) = cursor {
            out["cursor"] = Value::String(c);
        }
        Ok(Json(out))
    })
    .await
}

/// `app.bsky.feed.getFeedSkeleton` from a view: `feed` is the view's URI, or the URI of a feed
/// generator record of the same account and name; the posts are the view's `uri` column.
async fn feed_skeleton(app: Arc<Lens>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let node = app.node().clone();
    blocking(move || {
        let feed = param(&p, "feed").ok_or_else(|| NodeError::invalid("feed is required"))?;
        let view = match feed.strip_prefix("at://").and_then(|r| r.split_once('/')) {
            Some((did, rest)) => match rest.split_once('/') {
                Some(("app.bsky.feed.generator", name)) => view_uri(did, name),
                _ => feed.to_string(),
            },
            None => return Err(NodeError::bad("UnknownFeed", format!("Unknown feed: {feed}"))),
        };
        let limit = limit_param(&p, 50, 100)?;
        let (posts, cursor) = read(&node, |c| Ok(feed_posts(c, &view, limit, param(&p, "cursor"))))??
            .ok_or_else(|| NodeError::bad("UnknownFeed", format!("Unknown feed: {feed}")))?;
        let posts: Vec<Value> = posts.into_iter().map(|u| json!({ "post": u })).collect();
        let mut out = json!({ "feed": posts });
        if let Some(c) = cursor {
            out["cursor"] = Value::String(c);
        }
        Ok(Json(out))
    })
    .await
}

const LEXICONS: &[&str] = &[
    include_str!("../../../../lexicons/dev/ues/lens/createView.json"),
    include_str!("../../../../lexicons/dev/ues/lens/deleteView.json"),
    include_str!("../../../../lexicons/dev/ues/lens/listViews.json"),
    include_str!("../../../../lexicons/dev/ues/lens/query.json"),
    include_str!("../../../../lexicons/dev/ues/lens/createSchemaLens.json"),
    include_str!("../../../../lexicons/dev/ues/lens/getRecord.json"),
    include_str!("../../../../lexicons/dev/ues/lens/listRecords.json"),
    include_str!("../../../../lexicons/dev/ues/lens/putRecord.json"),
];

const ROUTES: &[Route] = &[
    ("post", "/api/v1/lenses/views", "dev.ues.lens.createView", &[]),
    ("get", "/api/v1/lenses/views", "dev.ues.lens.listViews", &[]),
    ("delete", "/api/v1/lenses/views/{view}", "dev.ues.lens.deleteView", &["view"]),
    ("get", "/api/v1/lenses/views/{view}/rows", "dev.ues.lens.query", &["view"]),
    ("post", "/api/v1/lenses/schemas", "dev.ues.lens.createSchemaLens", &[]),
    ("get", "/api/v1/lenses/records", "dev.ues.lens.listRecords", &[]),
    ("get", "/api/v1/lenses/records/{rkey}", "dev.ues.lens.getRecord", &["rkey"]),
    ("post", "/api/v1/lenses/records/{rkey}", "dev.ues.lens.putRecord", &["rkey"]),
];

fn public(nsid: &str) -> bool {
    matches!(nsid, "dev.ues.lens.query" | "dev.ues.lens.getRecord" | "dev.ues.lens.listRecords")
}

impl Mirrored for Lens {
    fn dispatch(self: Arc<Self>, headers: HeaderMap, nsid: &'static str, input: Input) -> BoxFuture<'static, Answer> {
        Box::pin(async move {
            let node = self.node().clone();
            // REST says not-found and conflicts with their own statuses (XRPC keeps 400s).
            let rest = |e: NodeError| match e.kind {
                ues_protocol::node::Kind::NotFound => NodeError { status: axum::http::StatusCode::NOT_FOUND, ..e },
                ues_protocol::node::Kind::Conflict => NodeError { status: axum::http::StatusCode::CONFLICT, ..e },
                _ => e,
            };
            let answer = match (input, nsid) {
                (Input::Body(b), "dev.ues.lens.createView") => create_view(self, headers, b).await,
                (Input::Body(b), "dev.ues.lens.createSchemaLens") => records::create(node, headers, b).await,
                (Input::Body(b), "dev.ues.lens.putRecord") => records::put_record(node, headers, b).await,
                (Input::Params(p), "dev.ues.lens.getRecord") => records::get_record(node, p).await,
                (Input::Params(p), "dev.ues.lens.listRecords") => records::list_records(node, p).await,
                (Input::Body(b), _) => delete_view(self, headers, b).await,
                (Input::Params(p), "dev.ues.lens.listViews") => list_views(self, headers, p).await,
                (Input::Params(p), _) => query(self, headers, p).await,
            };
            answer.map_err(rest)
        })
    }

    fn public(&self, nsid: &str) -> bool {
        public(nsid)
    }
}

/// The `lens` topic: a view's rows, then what each commit changed in them.
struct LensTopic {
    app: Arc<Lens>,
}

impl Topic for LensTopic {
    /// `{"topic": "lens", "view": "<uri, or the caller's view name>"}`.
    fn subscribe(&self, params: &Value, did: Option<&str>) -> Result<broadcast::Receiver<Value>, (String, String)> {
        let refuse = |name: &str, message: &str| (name.to_string(), message.to_string());
        let view = params.get("view").and_then(Value::as_str).ok_or_else(|| {
            refuse("InvalidRequest", "the lens topic needs \"view\": a view's URI or your view's name")
        })?;
        let node = self.app.node().clone();
        let mut subs = self.app.subscribers.lock();
        subs.retain(|_, list| {
            list.retain(|s| s.tx.receiver_count() > 0);
            !list.is_empty()
        });
        if subs.values().map(Vec::len).sum::<usize>() >= MAX_SUBSCRIPTIONS {
            return Err(refuse("TooManySubscriptions", "too many views followed on this node"));
        }
        // The first rows and the event they reflect are read together, under the subscribers'
        // lock: differences told after this are exactly those of later events.
        let first: Result<_, rusqlite::Error> = node.accounts.db().read(|c| {
            // One read transaction: the rows and the event they reflect are of one moment.
            let c = &c.unchecked_transaction()?;
            let Some(Found { id, did: owner, name, stopped }) = find(c, view, did)? else { return Ok(None) };
            let as_of: i64 = c
                .query_row("SELECT seq FROM lens.app_cursor WHERE app = ?1", [NAME], |r| r.get(0))
                .optional()?
                .unwrap_or(0);
            let (rows, _) = engine::rows(c, id, None, def::MAX_LIMIT)?;
            Ok(Some((id, view_uri(&owner, &name), stopped, as_of, rows)))
        });
        let (id, uri, stopped, as_of, rows) = match first {
            Ok(Some(x)) => x,
            Ok(None) => return Err(refuse("ViewNotFound", "no such view")),
            Err(e) => {
                tracing::error!(app = NAME, error = %e, "a view could not be read");
                return Err(refuse("InternalServerError", "Internal Server Error"));
            }
        };
        if let Some(why) = stopped {
            return Err(refuse("ViewStopped", &why));
        }
        let first = json!({ "view": uri, "seq": as_of, "rows": rows });
        let size = first.to_string().len();
        if size > MAX_FIRST_BYTES {
            return Err(refuse(
                "ViewTooLarge",
                &format!(
                    "the view's rows are {size} bytes, more than one message carries ({MAX_FIRST_BYTES}): page it with query"
                ),
            ));
        }
        let (tx, rx) = broadcast::channel(QUEUE);
        let _ = tx.send(first);
        subs.entry(id).or_default().push(Subscriber { as_of, tx });
        Ok(rx)
    }
}

#[cfg(test)]
mod tests;
