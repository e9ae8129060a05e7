//! `dev.ues.stats`: how many records each account holds, by collection, kept up to date from
//! the node's event log (never by scanning on request) and served over XRPC
//! (`dev.ues.stats.getCounts`), REST (`GET /api/v1/apps/dev.ues.stats/counts/{repo}`) and `/ws`
//! (topic `stats`: a message whenever a count of the named repository changes).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use ues_protocol::gateway::Topic;
use ues_protocol::node::sequencer::{self, Happened, LogEvent};
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::accounts::record_counts;
use ues_protocol::sync::repo::ipld::storage::Migration;
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Connection, Transaction, params};

use crate::App;

/// The application's name.
pub const NAME: &str = "dev.ues.stats";

const MIGRATIONS: &[Migration] = &[Migration {
    id: "dev.ues.stats/0001_counts",
    sql: "CREATE TABLE stats_count (
        did TEXT NOT NULL,
        collection TEXT NOT NULL,
        n INTEGER NOT NULL,
        PRIMARY KEY (did, collection)
    ) WITHOUT ROWID;
    CREATE TABLE stats_seen (did TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;",
}];

/// The lexicon of `dev.ues.stats.getCounts`.
const GET_COUNTS: &str = r##"{
  "lexicon": 1,
  "id": "dev.ues.stats.getCounts",
  "defs": {
    "main": {
      "type": "query",
      "description": "How many records a repository holds, by collection.",
      "parameters": {
        "type": "params",
        "required": ["repo"],
        "properties": { "repo": { "type": "string", "format": "at-identifier" } }
      },
      "output": {
        "encoding": "application/json",
        "schema": {
          "type": "object",
          "required": ["did", "collections", "total"],
          "properties": {
            "did": { "type": "string", "format": "did" },
            "total": { "type": "integer" },
            "collections": { "type": "array", "items": { "type": "ref", "ref": "#count" } }
          }
        }
      }
    },
    "count": {
      "type": "object",
      "required": ["collection", "count"],
      "properties": { "collection": { "type": "string", "format": "nsid" }, "count": { "type": "integer" } }
    }
  }
}"##;

/// Updates queued to one repository's `/ws` subscribers at most (the gateway tells a subscriber
/// that lags how many it missed).
const UPDATES: usize = 64;

/// Repositories watched at once at most (each is one channel, shared by its subscribers; only
/// repositories hosted here can be watched).
const MAX_WATCHED: usize = 10_000;

/// The application.
#[derive(Default)]
pub struct Stats {
    /// The updates of each repository someone subscribed to (entries whose subscribers are all
    /// gone are dropped at the next subscription or update).
    updates: parking_lot::Mutex<std::collections::HashMap<String, broadcast::Sender<Value>>>,
}

/// A repository's counts, by collection.
pub fn counts(conn: &Connection, did: &str) -> rusqlite::Result<Vec<(String, u64)>> {
    let mut s = conn.prepare_cached("SELECT collection, n FROM stats_count WHERE did = ?1 ORDER BY collection")?;
    let rows = s.query_map([did], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
    rows.collect()
}

fn add(tx: &Transaction<'_>, did: &str, collection: &str, delta: i64) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO stats_count (did, collection, n) VALUES (?1, ?2, ?3)
         ON CONFLICT (did, collection) DO UPDATE SET n = n + excluded.n",
        params![did, collection, delta],
    )?;
    if delta < 0 {
        tx.execute("DELETE FROM stats_count WHERE did = ?1 AND collection = ?2 AND n <= 0", params![did, collection])?;
    }
    Ok(())
}

/// Counts records afresh (of one account, or of all) from the node's data, as it stands in this
/// transaction: the newest event then in the log. The counts of an account recounted so reflect
/// every event up to that one, and its events up to there are not applied again
/// (`stats_seen`); a recount of all needs no mark, the cursor moving to that event with it.
fn recount(tx: &Transaction<'_>, did: Option<&str>) -> rusqlite::Result<i64> {
    tx.execute("DELETE FROM stats_count WHERE ?1 IS NULL OR did = ?1", [did])?;
    tx.execute("DELETE FROM stats_seen WHERE ?1 IS NULL OR did = ?1", [did])?;
    for (d, c, n) in record_counts(tx, did)? {
        tx.execute("INSERT INTO stats_count (did, collection, n) VALUES (?1, ?2, ?3)", params![d, c, n as i64])?;
    }
    let seq = sequencer::latest_seq_in(tx)?;
    if let Some(did) = did {
        tx.execute("INSERT INTO stats_seen (did, seq) VALUES (?1, ?2)", params![did, seq])?;
    }
    Ok(seq)
}

/// The newest event the account's counts already reflect (a recount was made after it).
fn seen_up_to(tx: &Transaction<'_>, did: &str) -> rusqlite::Result<i64> {
    let mut s = tx.prepare_cached("SELECT seq FROM stats_seen WHERE did = ?1")?;
    let mut rows = s.query([did])?;
    match rows.next()? {
        Some(r) => r.get(0),
        None => Ok(i64::MIN),
    }
}

/// Writes the gathered deltas.
fn flush(tx: &Transaction<'_>, deltas: &mut BTreeMap<(&str, &str), i64>) -> rusqlite::Result<()> {
    for ((did, collection), delta) in std::mem::take(deltas) {
        if delta != 0 {
            add(tx, did, collection, delta)?;
        }
    }
    Ok(())
}

fn answer(node: &Node, repo: &str) -> Result<Value, NodeError> {
    let account = node.readable_repo(repo)?;
    let did = account.did.to_string();
    let rows = node.accounts.db().read(|c| counts(c, &did)).map_err(NodeError::internal)?;
    let total: u64 = rows.iter().map(|(_, n)| n).sum();
    let collections: Vec<Value> = rows.into_iter().map(|(c, n)| json!({ "collection": c, "count": n })).collect();
    Ok(json!({ "did": did, "collections": collections, "total": total }))
}

#[derive(Deserialize)]
struct RepoParam {
    repo: String,
}

impl App for Stats {
    fn name(&self) -> &'static str {
        NAME
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn lexicons(&self) -> Vec<Value> {
        vec![serde_json::from_str(GET_COUNTS).expect("the lexicon is valid JSON")]
    }

    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        Router::new().route(
            "/xrpc/dev.ues.stats.getCounts",
            get(|State(node): State<Arc<Node>>, Query(p): Query<RepoParam>| async move {
                blocking(move || answer(&node, &p.repo)).await.map(Json)
            }),
        )
    }

    fn rest(self: Arc<Self>, node: Arc<Node>) -> Router {
        Router::new().route(
            "/counts/{repo}",
            get(move |Path(repo): Path<String>| {
                let node = node.clone();
                async move { blocking(move || answer(&node, &repo)).await.map(Json).map_err(rest_error) }
            }),
        )
    }

    fn topics(self: Arc<Self>, node: Arc<Node>) -> Vec<(String, Arc<dyn Topic>)> {
        vec![("stats".to_string(), Arc::new(StatsTopic { app: self, node }) as Arc<dyn Topic>)]
    }

    fn apply(&self, tx: &Transaction<'_>, events: &[LogEvent]) -> rusqlite::Result<()> {
        // Deltas by (account, collection), written once per pair: a batch of writes to one
        // collection is one statement, not one per record.
        let mut deltas: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        let mut horizons: HashMap<&str, i64> = HashMap::new();
        for e in events {
            let horizon = match horizons.get(e.did.as_str()) {
                Some(h) => *h,
                None => *horizons.entry(e.did.as_str()).or_insert(seen_up_to(tx, &e.did)?),
            };
            if e.seq <= horizon {
                continue;
            }
            match &e.what {
                Happened::Commit(ops) => {
                    for op in ops {
                        let delta = match op.action.as_str() {
                            "create" => 1,
                            "delete" => -1,
                            _ => continue,
                        };
                        *deltas.entry((e.did.as_str(), op.collection.as_str())).or_default() += delta;
                    }
                }
                Happened::Account { status } if status == "deleted" => {
                    flush(tx, &mut deltas)?;
                    tx.execute("DELETE FROM stats_count WHERE did = ?1", [&e.did])?;
                    tx.execute("DELETE FROM stats_seen WHERE did = ?1", [&e.did])?;
                    horizons.insert(e.did.as_str(), i64::MIN);
                }
                Happened::Sync => {
                    flush(tx, &mut deltas)?;
                    let upto = recount(tx, Some(&e.did))?;
                    horizons.insert(e.did.as_str(), upto);
                }
                _ => {}
            }
        }
        flush(tx, &mut deltas)
    }

    fn rebuild(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        recount(tx, None).map(drop)
    }

    fn applied(&self, node: &Node, events: &[LogEvent]) {
        let watched: Vec<(String, broadcast::Sender<Value>)> = {
            let mut updates = self.updates.lock();
            updates.retain(|_, tx| tx.receiver_count() > 0);
            if updates.is_empty() {
                return;
            }
            updates.iter().map(|(d, tx)| (d.clone(), tx.clone())).collect()
        };
        let touched: BTreeSet<(&str, &str)> = events
            .iter()
            .flat_map(|e| match &e.what {
                Happened::Commit(ops) => ops.iter().map(|o| (e.did.as_str(), o.collection.as_str())).collect(),
                _ => Vec::new(),
            })
            .collect();
        for (did, collection) in touched {
            let Some((_, tx)) = watched.iter().find(|(d, _)| d == did) else { continue };
            let n = node.accounts.db().read(|c| {
                c.query_row("SELECT n FROM stats_count WHERE did = ?1 AND collection = ?2", [did, collection], |r| {
                    r.get::<_, i64>(0)
                })
                .or_else(|e| if e == rusqlite::Error::QueryReturnedNoRows { Ok(0) } else { Err(e) })
            });
            match n {
                Ok(n) => {
                    let _ = tx.send(json!({ "did": did, "collection": collection, "count": n }));
                }
                Err(e) => tracing::warn!(app = NAME, error = %e, "a count could not be read for subscribers"),
            }
        }
    }
}

/// The `stats` topic: a hosted repository's counts as they change.
struct StatsTopic {
    app: Arc<Stats>,
    node: Arc<Node>,
}

impl Topic for StatsTopic {
    /// `{"topic": "stats", "repo": "<did>"}`: refused unless the repository is hosted here.
    fn subscribe(&self, params: &Value, _did: Option<&str>) -> Result<broadcast::Receiver<Value>, (String, String)> {
        let refuse = |name: &str, message: &str| (name.to_string(), message.to_string());
        let repo = params
            .get("repo")
            .and_then(Value::as_str)
            .and_then(|r| ues_protocol::sync::repo::syntax::Did::new(r).ok())
            .ok_or_else(|| refuse("InvalidRequest", "the stats topic needs \"repo\": the repository's DID"))?;
        match self.node.accounts.get(&repo) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(refuse("RepoNotFound", "no such repository here")),
            Err(e) => {
                tracing::error!(app = NAME, error = %e, "an account could not be read");
                return Err(refuse("InternalServerError", "Internal Server Error"));
            }
        }
        let mut updates = self.app.updates.lock();
        updates.retain(|_, tx| tx.receiver_count() > 0);
        if updates.len() >= MAX_WATCHED && !updates.contains_key(repo.as_str()) {
            return Err(refuse("TooManySubscriptions", "too many repositories watched on this node"));
        }
        Ok(updates.entry(repo.to_string()).or_insert_with(|| broadcast::channel(UPDATES).0).subscribe())
    }
}

/// REST answers not-found as 404 (XRPC keeps the reference PDS's 400s).
fn rest_error(e: NodeError) -> NodeError {
    match e.kind {
        ues_protocol::node::Kind::NotFound => NodeError { status: axum::http::StatusCode::NOT_FOUND, ..e },
        _ => e,
    }
}
