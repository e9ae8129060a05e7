//! `dev.ues.feed`: the node as its own Bluesky AppView. It indexes the posts, likes, reposts,
//! follows, blocks and profiles of every account the node holds (hosted and replicated) from
//! the node's event log, keeping counts and notifications as records come and go, and answers
//! the `app.bsky.*` read methods Bluesky's apps call (timelines, author feeds, threads,
//! profiles, social graph, notifications, search) from that index, with the viewer's state.
//!
//! With no AppView configured (the default) these methods are answered here whatever
//! `atproto-proxy` header a client sends for `#bsky_appview`; with `[xrpc] appview_url` set,
//! `[feed] mode` chooses between this index and the remote AppView.

mod index;
mod lexicon_docs;
mod records;
mod remote;
mod schema;
mod views;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, OnceLock};

use axum::Router;
use serde_json::Value;
use tokio::sync::broadcast;
use ues_protocol::gateway::Topic;
use ues_protocol::node::Node;
use ues_protocol::node::sequencer::{self, Happened, LogEvent};
use ues_protocol::sync::repo::accounts::{account_dids, records_in};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Transaction};
use ues_protocol::sync::repo::ipld::storage::{Blockstore, Migration};
use ues_protocol::sync::repo::ipld::{dagcbor, json};
use ues_protocol::sync::repo::syntax::Did;

use crate::App;
use index::Indexer;

/// The application's name.
pub const NAME: &str = "dev.ues.feed";

/// The lexicon of `dev.ues.feed.getStatus`.
const GET_STATUS: &str = r##"{
  "lexicon": 1,
  "id": "dev.ues.feed.getStatus",
  "defs": {
    "main": {
      "type": "query",
      "description": "How far the feed's index is: the last event of the node's log it reflects, and the newest logged.",
      "output": {
        "encoding": "application/json",
        "schema": {
          "type": "object",
          "required": ["cursor", "head", "caughtUp", "serving"],
          "properties": {
            "cursor": { "type": "integer" },
            "head": { "type": "integer" },
            "caughtUp": { "type": "boolean" },
            "serving": { "type": "boolean", "description": "Whether this node answers the Bluesky read methods from the index." }
          }
        }
      }
    }
  }
}"##;

/// The lexicon of `dev.ues.feed.getRemoteStatus`.
const GET_REMOTE_STATUS: &str = r##"{
  "lexicon": 1,
  "id": "dev.ues.feed.getRemoteStatus",
  "defs": {
    "main": {
      "type": "query",
      "description": "Where the feed stands with an account hosted elsewhere that accounts here follow.",
      "parameters": {
        "type": "params",
        "required": ["did"],
        "properties": { "did": { "type": "string", "format": "did" } }
      },
      "output": {
        "encoding": "application/json",
        "schema": {
          "type": "object",
          "required": ["did", "state"],
          "properties": {
            "did": { "type": "string", "format": "did" },
            "state": { "type": "string", "knownValues": ["pending", "live", "refused", "tooLarge"] },
            "pds": { "type": "string", "format": "uri" },
            "rev": { "type": "string" },
            "lastError": { "type": "string" },
            "unfollowedAt": { "type": "string", "format": "datetime" }
          }
        }
      },
      "errors": [{ "name": "NotFound" }]
    }
  }
}"##;

/// How the feed is set up (`[feed]` in `node.toml`).
#[derive(Debug, Clone)]
pub struct FeedConfig {
    /// Answer the Bluesky read methods here (else they go to the configured AppView).
    pub serve: bool,
    /// Accounts hosted elsewhere followed at most (the most recently followed are kept).
    pub max_remote_accounts: usize,
    /// Largest repository fetched from another PDS.
    pub max_repo_bytes: u64,
    /// Largest message taken from another PDS's event stream.
    pub max_frame_bytes: usize,
    /// How long an account no longer followed stays indexed.
    pub unfollow_grace: std::time::Duration,
    /// A relay whose `subscribeRepos` carries the followed accounts' commits (instead of one
    /// connection to each account's PDS); their repositories are still fetched from their PDS.
    pub relay: Option<String>,
}

impl Default for FeedConfig {
    fn default() -> Self {
        Self {
            serve: true,
            max_remote_accounts: 5000,
            max_repo_bytes: 64 << 20,
            max_frame_bytes: 5 << 20,
            unfollow_grace: std::time::Duration::from_secs(24 * 3600),
            relay: None,
        }
    }
}

/// Signed-in sockets watched at once at most (one channel per account, shared by its sockets).
const MAX_WATCHED: usize = 10_000;

/// Messages queued per watched account (the gateway tells a socket that lags how many it missed).
const UPDATES: usize = 256;

/// The application.
pub struct Feed {
    cfg: FeedConfig,
    node: OnceLock<Arc<Node>>,
    /// Wakes the remote tracker (a local account followed someone).
    poke: Arc<tokio::sync::Notify>,
    /// The live messages of each signed-in account watching the `feed` topic.
    live: parking_lot::Mutex<HashMap<String, broadcast::Sender<Value>>>,
}

/// The `/ws` topic `feed`: a signed-in socket's new timeline items and notifications.
struct FeedTopic {
    app: Arc<Feed>,
}

impl Topic for FeedTopic {
    fn subscribe(&self, _params: &Value, did: Option<&str>) -> Result<broadcast::Receiver<Value>, (String, String)> {
        let did =
            did.ok_or_else(|| ("AuthRequired".to_string(), "the feed topic needs a signed-in socket".to_string()))?;
        let mut live = self.app.live.lock();
        live.retain(|_, tx| tx.receiver_count() > 0);
        if live.len() >= MAX_WATCHED && !live.contains_key(did) {
            return Err(("TooManySubscriptions".into(), "too many accounts watch their feed on this node".into()));
        }
        Ok(live.entry(did.to_string()).or_insert_with(|| broadcast::channel(UPDATES).0).subscribe())
    }
}

impl Feed {
    /// The application, set up by `cfg`.
    pub fn new(cfg: FeedConfig) -> Self {
        Self { cfg, node: OnceLock::new(), poke: Arc::default(), live: parking_lot::Mutex::default() }
    }

    fn node(&self) -> &Arc<Node> {
        self.node.get().expect("the host attaches the node before it applies events")
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// A record's JSON from its DAG-CBOR bytes (`None`: not a record).
fn record_json(bytes: &[u8]) -> Option<Value> {
    let ipld = dagcbor::decode_atproto(bytes).ok()?;
    let v = json::to_json(&ipld);
    v.is_object().then_some(v)
}

/// Handle and status of an account the node holds.
fn account_facts(node: &Node, did: &str) -> Option<(String, String)> {
    let did = Did::new(did).ok()?;
    match node.accounts.get(&did) {
        Ok(Some(a)) => Some((a.handle.to_string(), a.status)),
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(app = NAME, %did, error = %e, "an account could not be read");
            None
        }
    }
}

impl Feed {
    /// Indexes one account afresh from the node's data as this transaction sees it, and marks
    /// its events up to the newest logged as reflected.
    fn reindex(&self, ix: &mut Indexer<'_, '_>, did: &str, handle: Option<&str>, status: &str) -> rusqlite::Result<()> {
        let node = self.node();
        ix.remove_actor(did)?;
        let actor = ix.local(did, handle, status)?;
        let mut skipped = 0usize;
        for r in records_in(ix.tx, did, records::COLLECTIONS)? {
            let value = r
                .cid
                .parse()
                .ok()
                .and_then(|cid| node.accounts.blocks().get(&cid).ok().flatten())
                .and_then(|b| record_json(&b));
            match value {
                Some(v) => {
                    if !ix.put(did, &r.collection, &r.rkey, &r.cid, &v, r.indexed_at)? {
                        skipped += 1;
                    }
                }
                None => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::info!(app = NAME, %did, skipped, "records the feed could not read were left out");
        }
        let seq = sequencer::latest_seq_in(ix.tx)?;
        ix.set_horizon(actor, seq)
    }
}

impl App for Feed {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&self, node: &Arc<Node>) {
        let _ = self.node.set(node.clone());
    }

    fn migrations(&self) -> &'static [Migration] {
        schema::MIGRATIONS
    }

    fn lexicons(&self) -> Vec<Value> {
        let mut docs = vec![
            serde_json::from_str(GET_STATUS).expect("the lexicon is valid JSON"),
            serde_json::from_str(GET_REMOTE_STATUS).expect("the lexicon is valid JSON"),
        ];
        if self.cfg.serve {
            docs.extend(
                lexicon_docs::DOCS.iter().map(|d| serde_json::from_str(d).expect("the lexicons are valid JSON")),
            );
        }
        docs
    }

    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        let serving = self.cfg.serve;
        let status = Router::new()
            .route("/xrpc/dev.ues.feed.getStatus", axum::routing::get(move |node| views::get_status(node, serving)))
            .route(
                "/xrpc/dev.ues.feed.getRemoteStatus",
                axum::routing::get(
                    |axum::extract::State(node): axum::extract::State<Arc<Node>>,
                     axum::extract::Query(p): axum::extract::Query<HashMap<String, String>>| async move {
                        let did = p.get("did").cloned().unwrap_or_default();
                        ues_protocol::node::blocking(move || remote::status(&node, &did)).await.map(axum::Json)
                    },
                ),
            );
        if !self.cfg.serve {
            return status;
        }
        views::routes().merge(status)
    }

    fn apply(&self, tx: &Transaction<'_>, events: &[LogEvent]) -> rusqlite::Result<()> {
        let node = self.node();
        let mut ix = Indexer::new(tx);
        // Per account met in this batch: its number and the events its rows already reflect.
        let mut met: HashMap<&str, (i64, i64)> = HashMap::new();
        let mut skipped = 0usize;
        for e in events {
            let (actor, horizon) = match met.get(e.did.as_str()) {
                Some(m) => *m,
                None => {
                    let (handle, status) = account_facts(node, &e.did).unzip();
                    let actor = ix.local(&e.did, handle.as_deref(), status.as_deref().unwrap_or("active"))?;
                    let h = ix.horizon(actor)?;
                    *met.entry(e.did.as_str()).or_insert((actor, h))
                }
            };
            if e.seq <= horizon {
                continue;
            }
            match &e.what {
                Happened::Commit(ops) => {
                    let indexed_at = e.time_ms.unwrap_or_else(now_ms);
                    for op in ops {
                        if !records::COLLECTIONS.contains(&op.collection.as_str()) {
                            continue;
                        }
                        if op.action == "delete" {
                            ix.remove(&e.did, &op.collection, &op.rkey)?;
                            continue;
                        }
                        let Some(cid) = &op.cid else { continue };
                        let bytes = match &op.record {
                            Some(b) => Some(b.to_vec()),
                            None => cid.parse().ok().and_then(|c| node.accounts.blocks().get(&c).ok().flatten()),
                        };
                        match bytes.as_deref().and_then(record_json) {
                            Some(v) => {
                                if !ix.put(&e.did, &op.collection, &op.rkey, cid, &v, indexed_at)? {
                                    skipped += 1;
                                }
                            }
                            None => {
                                ix.remove(&e.did, &op.collection, &op.rkey)?;
                                skipped += 1;
                            }
                        }
                    }
                }
                Happened::Identity => {
                    let (handle, status) = account_facts(node, &e.did).unzip();
                    ix.local(&e.did, handle.as_deref(), status.as_deref().unwrap_or("active"))?;
                }
                Happened::Account { status } if status == "deleted" => {
                    ix.remove_actor(&e.did)?;
                    tx.execute("UPDATE feed_actor SET local = 0, status = 'deleted' WHERE id = ?1", [actor])?;
                    met.insert(e.did.as_str(), (actor, i64::MIN));
                }
                Happened::Account { status } => {
                    tx.execute("UPDATE feed_actor SET status = ?2 WHERE id = ?1", rusqlite::params![actor, status])?;
                }
                Happened::Sync => {
                    let (handle, status) = account_facts(node, &e.did).unzip();
                    self.reindex(&mut ix, &e.did, handle.as_deref(), status.as_deref().unwrap_or("active"))?;
                    let h = ix.horizon(actor)?;
                    met.insert(e.did.as_str(), (actor, h));
                }
            }
        }
        if skipped > 0 {
            tracing::info!(app = NAME, skipped, "records the feed could not read were left out");
        }
        Ok(())
    }

    fn tasks(self: Arc<Self>, node: Arc<Node>) -> Vec<tokio::task::JoinHandle<()>> {
        let tracker = remote::Tracker { node, cfg: self.cfg.clone(), poke: self.poke.clone() };
        vec![tokio::spawn(tracker.run())]
    }

    fn applied(&self, node: &Node, events: &[LogEvent]) {
        let followed = events.iter().any(|e| match &e.what {
            Happened::Commit(ops) => ops.iter().any(|o| o.collection == records::FOLLOW),
            _ => false,
        });
        if followed {
            self.poke.notify_one();
        }
        let watching: HashMap<String, broadcast::Sender<Value>> = {
            let mut live = self.live.lock();
            live.retain(|_, tx| tx.receiver_count() > 0);
            if live.is_empty() {
                return;
            }
            live.clone()
        };
        let who: HashSet<String> = watching.keys().cloned().collect();
        match node.accounts.db().read(|c| views::live_messages(c, node, &who, events)) {
            Ok(messages) => {
                for (did, m) in messages {
                    if let Some(tx) = watching.get(&did) {
                        let _ = tx.send(m);
                    }
                }
            }
            Err(e) => tracing::warn!(app = NAME, error = %e, "live feed messages could not be made"),
        }
    }

    fn topics(self: Arc<Self>, _node: Arc<Node>) -> Vec<(String, Arc<dyn Topic>)> {
        if !self.cfg.serve {
            return Vec::new();
        }
        vec![("feed".to_string(), Arc::new(FeedTopic { app: self }) as Arc<dyn Topic>)]
    }

    fn api(self: Arc<Self>, node: Arc<Node>) -> Router {
        if !self.cfg.serve {
            return Router::new();
        }
        views::rest_routes(node)
    }

    fn rebuild(&self, tx: &Transaction<'_>) -> rusqlite::Result<()> {
        for table in [
            "feed_profile",
            "feed_actor_fts",
            "feed_post",
            "feed_post_fts",
            "feed_item",
            "feed_like",
            "feed_repost",
            "feed_follow",
            "feed_block",
            "feed_post_count",
            "feed_actor_count",
            "feed_notif",
            "feed_horizon",
            "feed_list",
            "feed_list_item",
            "feed_generator",
        ] {
            tx.execute(&format!("DELETE FROM {table}"), [])?;
        }
        tx.execute("UPDATE feed_actor SET local = 0", [])?;
        // Accounts followed elsewhere are fetched again.
        tx.execute("UPDATE feed_remote SET state = 0, next_try_at = 0", [])?;
        let mut ix = Indexer::new(tx);
        for (did, handle, status) in account_dids(tx)? {
            if status != "deleted" {
                self.reindex(&mut ix, &did, Some(&handle), &status)?;
            }
        }
        Ok(())
    }
}
