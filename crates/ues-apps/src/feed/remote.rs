//! Following accounts hosted elsewhere. When an account of this node follows one that is not
//! here, the feed fetches that account's repository from its own PDS (found through its DID
//! document), checks it (the commit signed by the account's key, the record tree complete)
//! and indexes it; then it stays current from that PDS's `subscribeRepos` stream (or, with
//! `[feed] relay`, from that relay's, one connection for every account), checking
//! every commit (signature; `since` the revision held, else the repository is fetched again;
//! the operations undone on the event's blocks give the tree held) before indexing it. Nothing
//! of a repository or commit that does not check is indexed; the refusal is logged and shown
//! by `dev.ues.feed.getRemoteStatus`. Accounts no longer followed are dropped after a grace
//! period.
//!
//! Bounded: accounts tracked, bytes per fetched repository, bytes per stream message,
//! connections (one per PDS), fetches at once (four), reconnections (backoff 1 s doubling to
//! 5 min), refetches of a refused account (backoff 1 min doubling to 6 h). The stream's cursor
//! is kept in the same transaction as what each event indexed: a restart neither indexes an
//! event twice nor misses one.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use ues_protocol::node::{Node, NodeError};
use ues_protocol::sync::repo::crypto::PublicKey;
use ues_protocol::sync::repo::firehose::{CheckError, Frame, FrameLimits, decode_frame, verify_commit};
use ues_protocol::sync::repo::identity::{is_public, parse_did_document};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, OptionalExtension, params};
use ues_protocol::sync::repo::ipld::storage::{Blockstore, MemoryBlockstore};
use ues_protocol::sync::repo::repo::import_car;
use ues_protocol::sync::repo::syntax::{Did, Handle, Nsid};

use super::index::Indexer;
use super::{FeedConfig, NAME, now_ms, record_json, records};

/// `feed_remote.state`.
const PENDING: i64 = 0;
pub(super) const LIVE: i64 = 1;
pub(super) const REFUSED: i64 = 2;
pub(super) const TOO_LARGE: i64 = 3;

pub(super) fn state_name(s: i64) -> &'static str {
    match s {
        PENDING => "pending",
        LIVE => "live",
        REFUSED => "refused",
        _ => "tooLarge",
    }
}

/// How often the followed set is looked at without a nudge.
const RECONCILE: Duration = Duration::from_secs(30);
/// Repositories fetched at once at most.
const FETCHES: usize = 4;
/// PDS connections at most.
const MAX_HOSTS: usize = 256;
/// Records listed per collection page when indexing a fetched repository.
const PAGE: usize = 1000;

/// An account's identity, as its DID document says and its handle confirms.
struct Identity {
    pds: String,
    key: PublicKey,
    handle: Option<String>,
}

fn resolve(node: &Node, did: &Did, fresh: bool) -> Result<Identity, String> {
    let doc = if fresh { node.dids.refresh(did) } else { node.dids.resolve(did) }
        .map_err(|e| format!("DID not resolved: {e}"))?;
    let id = parse_did_document(&doc, did).map_err(|e| format!("DID document: {e}"))?;
    let pds = id.pds_endpoint.ok_or("the DID document names no #atproto_pds")?;
    let key = id.signing_key.ok_or("the DID document names no #atproto key")?;
    // A handle is shown only when it names the DID back.
    let handle = id
        .handle
        .filter(|h| node.dids.handle(&node.cfg.handle_resolver, h, false).as_ref() == Some(did))
        .map(|h: Handle| h.to_string());
    Ok(Identity { pds: pds.trim_end_matches('/').to_string(), key, handle })
}

/// Whether a URL's host may be called: public addresses only, unless this is a development node.
fn allowed(node: &Node, url: &str) -> bool {
    if node.development() {
        return true;
    }
    url.starts_with("https://") || url.starts_with("wss://")
}

/// The tracker: keeps the set of followed remote accounts, fetches them, runs the streams.
pub(super) struct Tracker {
    pub(super) node: Arc<Node>,
    pub(super) cfg: FeedConfig,
    pub(super) poke: Arc<Notify>,
}

impl Tracker {
    pub(super) async fn run(self) {
        let mut streams: HashMap<String, JoinHandle<()>> = HashMap::new();
        // Accounts being fetched (a slow PDS holds one of the slots, not all of them).
        let fetching: Arc<parking_lot::Mutex<HashSet<i64>>> = Arc::default();
        let mut jobs = tokio::task::JoinSet::new();
        loop {
            while jobs.try_join_next().is_some() {}
            let (node, cfg) = (self.node.clone(), self.cfg.clone());
            let busy: HashSet<i64> = fetching.lock().clone();
            let free = FETCHES.saturating_sub(busy.len());
            let pass = tokio::task::spawn_blocking(move || {
                reconcile(&node, &cfg)?;
                let picked = due(&node, free, &busy)?;
                let hosts = live_hosts(&node, &cfg)?;
                Ok::<_, rusqlite::Error>((picked, hosts))
            })
            .await;
            match pass {
                Ok(Ok((picked, hosts))) => {
                    for (actor, did) in picked {
                        fetching.lock().insert(actor);
                        let (node, cfg, fetching, poke) =
                            (self.node.clone(), self.cfg.clone(), fetching.clone(), self.poke.clone());
                        jobs.spawn_blocking(move || {
                            if let Err(e) = backfill(&node, &cfg, actor, &did) {
                                tracing::error!(app = NAME, %did, error = %e, "a remote repository could not be indexed");
                            }
                            fetching.lock().remove(&actor);
                            poke.notify_one();
                        });
                    }
                    streams.retain(|h, t| {
                        let keep = hosts.contains(h) && !t.is_finished();
                        if !keep {
                            t.abort();
                        }
                        keep
                    });
                    for h in hosts.into_iter().take(MAX_HOSTS) {
                        if !streams.contains_key(&h) && streams.len() < MAX_HOSTS {
                            let task =
                                tokio::spawn(stream(self.node.clone(), self.cfg.clone(), h.clone(), self.poke.clone()));
                            streams.insert(h, task);
                        }
                    }
                }
                Ok(Err(e)) => tracing::error!(app = NAME, error = %e, "following remote accounts failed; retrying"),
                Err(e) => tracing::error!(app = NAME, error = %e, "following remote accounts panicked; retrying"),
            }
            let _ = tokio::time::timeout(RECONCILE, self.poke.notified()).await;
        }
    }
}

/// Brings `feed_remote` in line with who local accounts follow.
fn reconcile(node: &Node, cfg: &FeedConfig) -> rusqlite::Result<()> {
    let now = now_ms();
    let grace = cfg.unfollow_grace.as_millis() as i64;
    node.accounts
        .db()
        .write(|tx| {
            tx.execute("CREATE TEMP TABLE IF NOT EXISTS feed_wanted (actor_id INTEGER PRIMARY KEY)", [])?;
            tx.execute("DELETE FROM temp.feed_wanted", [])?;
            tx.execute(
                "INSERT INTO temp.feed_wanted (actor_id)
                 SELECT s.id FROM feed_follow f JOIN feed_actor l ON l.id = f.actor_id JOIN feed_actor s ON s.id = f.subject_id
                 WHERE l.local = 1 AND s.local = 0 AND s.status != 'deleted'
                 GROUP BY s.id ORDER BY max(f.sort_at) DESC LIMIT ?1",
                [cfg.max_remote_accounts as i64],
            )?;
            tx.execute("INSERT OR IGNORE INTO feed_remote (actor_id) SELECT actor_id FROM temp.feed_wanted", [])?;
            tx.execute(
                "UPDATE feed_remote SET unfollowed_at = NULL WHERE unfollowed_at IS NOT NULL AND actor_id IN (SELECT actor_id FROM temp.feed_wanted)",
                [],
            )?;
            tx.execute(
                "UPDATE feed_remote SET unfollowed_at = ?1 WHERE unfollowed_at IS NULL AND actor_id NOT IN (SELECT actor_id FROM temp.feed_wanted)",
                [now],
            )?;
            let gone: Vec<(i64, String)> = tx
                .prepare("SELECT r.actor_id, a.did FROM feed_remote r JOIN feed_actor a ON a.id = r.actor_id WHERE r.unfollowed_at < ?1")?
                .query_map([now - grace], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<rusqlite::Result<_>>()?;
            let mut ix = Indexer::new(tx);
            for (id, did) in gone {
                ix.remove_actor(&did)?;
                tx.execute("DELETE FROM feed_remote WHERE actor_id = ?1", [id])?;
                tracing::info!(app = NAME, %did, "a remote account no longer followed was dropped");
            }
            Ok::<_, ues_protocol::sync::repo::ipld::storage::Error>(())
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// The PDSes of accounts followed live (or waiting for a fetch after one).
/// With `[feed] relay`, that relay instead, as soon as one account is followed.
fn live_hosts(node: &Node, cfg: &FeedConfig) -> rusqlite::Result<Vec<String>> {
    let hosts: Vec<String> = node.accounts.db().read(|c| {
        c.prepare("SELECT DISTINCT pds FROM feed_remote WHERE pds IS NOT NULL AND state IN (0, 1)")?
            .query_map([], |r| r.get(0))?
            .collect()
    })?;
    Ok(match &cfg.relay {
        Some(relay) if !hosts.is_empty() => vec![relay.clone()],
        _ => hosts,
    })
}

/// Marks an account's fetch or commit refused (or too large), or, for a failure that may pass
/// (`PENDING`: its PDS or its DID's directory did not answer), still waiting; with a backoff
/// before the next try either way.
fn refuse(node: &Node, actor: i64, did: &str, state: i64, why: &str) -> rusqlite::Result<()> {
    if state == PENDING {
        tracing::info!(app = NAME, %did, reason = why, "a remote repository could not be fetched; trying again later");
    } else {
        tracing::warn!(app = NAME, %did, reason = why, "remote repository refused; nothing of it indexed");
    }
    node.accounts
        .db()
        .write(|tx| {
            tx.execute(
                "UPDATE feed_remote SET state = ?2, last_error = ?3, attempts = attempts + 1,
                 next_try_at = ?4 + min(60000 * (1 << min(attempts, 9)), 21600000) WHERE actor_id = ?1",
                params![actor, state, why, now_ms()],
            )?;
            Ok::<_, ues_protocol::sync::repo::ipld::storage::Error>(())
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// Up to `n` accounts due for a fetch, those in `busy` left out.
fn due(node: &Node, n: usize, busy: &HashSet<i64>) -> rusqlite::Result<Vec<(i64, String)>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    let rows: Vec<(i64, String)> = node.accounts.db().read(|c| {
        c.prepare(
            "SELECT r.actor_id, a.did FROM feed_remote r JOIN feed_actor a ON a.id = r.actor_id
             WHERE r.unfollowed_at IS NULL AND r.state IN (0, 2, 3) AND r.next_try_at <= ?1
             ORDER BY r.next_try_at LIMIT ?2",
        )?
        .query_map(params![now_ms(), (n + busy.len()) as i64], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect()
    })?;
    Ok(rows.into_iter().filter(|(a, _)| !busy.contains(a)).take(n).collect())
}

/// Fetches, checks and indexes one account's repository.
fn backfill(node: &Node, cfg: &FeedConfig, actor: i64, did: &str) -> rusqlite::Result<()> {
    let did = did.to_string();
    let Ok(parsed) = Did::new(&did) else {
        refuse(node, actor, &did, REFUSED, "not a DID")?;
        return Ok(());
    };
    let id = match resolve(node, &parsed, false) {
        Ok(id) => id,
        Err(e) => {
            refuse(node, actor, &did, PENDING, &e)?;
            return Ok(());
        }
    };
    if !allowed(node, &id.pds) {
        refuse(node, actor, &did, REFUSED, "the PDS is not an https: URL")?;
        return Ok(());
    }
    let url = format!("{}/xrpc/com.atproto.sync.getRepo?did={did}", id.pds);
    let mut car = Vec::new();
    let res = match node.service_agent().get(&url).call() {
        Ok(res) => res,
        Err(e) => {
            refuse(node, actor, &did, PENDING, &format!("getRepo: {e}"))?;
            return Ok(());
        }
    };
    let fetched = Ok(res).and_then(|mut res| {
        if res.status() != 200 {
            return Err(format!("getRepo answered {}", res.status()));
        }
        res.body_mut()
            .as_reader()
            .take(cfg.max_repo_bytes + 1)
            .read_to_end(&mut car)
            .map_err(|e| format!("getRepo: {e}"))
    });
    if let Err(e) = fetched {
        refuse(node, actor, &did, REFUSED, &e)?;
        return Ok(());
    }
    if car.len() as u64 > cfg.max_repo_bytes {
        refuse(node, actor, &did, TOO_LARGE, &format!("the repository is over {} bytes", cfg.max_repo_bytes))?;
        return Ok(());
    }
    let repo = match import_car(MemoryBlockstore::new(), &car[..], &parsed, &id.key) {
        Ok(r) => r,
        Err(e) => {
            refuse(node, actor, &did, REFUSED, &format!("the repository does not check: {e}"))?;
            return Ok(());
        }
    };
    let rev = repo.commit().rev.to_string();
    let data = repo.commit().data.to_string();
    // Read every indexed record out of the checked repository before taking the writer.
    let mut items: Vec<(String, String, String, Value)> = Vec::new();
    for coll in records::COLLECTIONS {
        let Ok(nsid) = Nsid::new(*coll) else { continue };
        let mut after: Option<ues_protocol::sync::repo::syntax::RecordKey> = None;
        loop {
            let page = match repo.list_records(&nsid, after.as_ref(), PAGE) {
                Ok(p) => p,
                Err(e) => {
                    refuse(node, actor, &did, REFUSED, &format!("the repository does not read: {e}"))?;
                    return Ok(());
                }
            };
            for (rkey, cid) in &page {
                if let Some(v) = repo.store().get(cid).ok().flatten().and_then(|b| record_json(&b)) {
                    items.push((coll.to_string(), rkey.clone(), cid.to_string(), v));
                }
            }
            if page.len() < PAGE {
                break;
            }
            after = page.last().and_then(|(k, _)| ues_protocol::sync::repo::syntax::RecordKey::new(k).ok());
            if after.is_none() {
                break;
            }
        }
    }
    let count = items.len();
    let now = now_ms();
    node.accounts
        .db()
        .write(|tx| {
            let mut ix = Indexer::new(tx);
            ix.remove_actor(&did)?;
            tx.execute("UPDATE feed_actor SET handle = ?2 WHERE id = ?1", params![actor, id.handle])?;
            for (coll, rkey, cid, v) in &items {
                ix.put(&did, coll, rkey, cid, v, now)?;
            }
            tx.execute(
                "UPDATE feed_remote SET state = 1, pds = ?2, rev = ?3, data_cid = ?4, bytes = ?5, attempts = 0, last_error = NULL
                 WHERE actor_id = ?1",
                params![actor, id.pds, rev, data, car.len() as i64],
            )?;
            Ok::<_, ues_protocol::sync::repo::ipld::storage::Error>(())
        })
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    tracing::info!(app = NAME, %did, records = count, bytes = car.len(), %rev, "remote repository fetched, checked and indexed");
    Ok(())
}

/// `ws(s)://` for an `http(s)://` base.
fn ws_url(pds: &str, cursor: Option<i64>) -> String {
    let base = if let Some(rest) = pds.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = pds.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        pds.to_string()
    };
    match cursor {
        Some(c) => format!("{base}/xrpc/com.atproto.sync.subscribeRepos?cursor={c}"),
        None => format!("{base}/xrpc/com.atproto.sync.subscribeRepos"),
    }
}

/// Connects to a PDS's stream over TCP to an address that may be called.
async fn connect(
    node: &Node,
    cfg: &FeedConfig,
    url: &str,
) -> Result<tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>, String> {
    let rest = url.split("://").nth(1).ok_or("no scheme")?;
    let authority = rest.split('/').next().unwrap_or("");
    let default_port = if url.starts_with("wss://") { 443 } else { 80 };
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p))
            if p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with(']')
                || authority.starts_with('[') && p.parse::<u16>().is_ok() =>
        {
            (h.trim_start_matches('[').trim_end_matches(']').to_string(), p.parse::<u16>().map_err(|e| e.to_string())?)
        }
        _ => (authority.trim_start_matches('[').trim_end_matches(']').to_string(), default_port),
    };
    let addrs: Vec<std::net::SocketAddr> =
        tokio::net::lookup_host((host.as_str(), port)).await.map_err(|e| format!("resolving {host}: {e}"))?.collect();
    let addr = addrs
        .into_iter()
        .find(|a| node.development() || is_public(a.ip()))
        .ok_or_else(|| format!("{host} has no public address"))?;
    let tcp = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| "connecting timed out".to_string())?
        .map_err(|e| format!("connecting: {e}"))?;
    let config = WebSocketConfig::default()
        .max_message_size(Some(cfg.max_frame_bytes))
        .max_frame_size(Some(cfg.max_frame_bytes));
    let (ws, _) = tokio::time::timeout(
        Duration::from_secs(10),
        tokio_tungstenite::client_async_tls_with_config(url, tcp, Some(config), None),
    )
    .await
    .map_err(|_| "the WebSocket handshake timed out".to_string())?
    .map_err(|e| format!("the WebSocket handshake: {e}"))?;
    Ok(ws)
}

/// One PDS's stream, reconnected with backoff for as long as the task lives.
async fn stream(node: Arc<Node>, cfg: FeedConfig, pds: String, poke: Arc<Notify>) {
    let mut backoff = Duration::from_secs(1);
    let mut refetched = false;
    loop {
        let n = node.clone();
        let p = pds.clone();
        let cursor: Option<i64> = tokio::task::spawn_blocking(move || {
            n.accounts
                .db()
                .read(|c| c.query_row("SELECT cursor FROM feed_upstream WHERE url = ?1", [&p], |r| r.get(0)).optional())
                .ok()
                .flatten()
        })
        .await
        .ok()
        .flatten();
        if !allowed(&node, &pds) {
            tracing::warn!(app = NAME, %pds, "a PDS that is not an https: URL is not followed");
            return;
        }
        let url = ws_url(&pds, cursor);
        match connect(&node, &cfg, &url).await {
            Ok(mut ws) => {
                tracing::info!(app = NAME, %pds, ?cursor, "following a PDS's stream");
                // Opened afresh (no cursor kept): what its accounts committed between their
                // fetch and now came before the stream, so they are fetched once more (once
                // per stream, not at each reconnection).
                if cursor.is_none() && !refetched {
                    refetched = true;
                    let (n, p) = (node.clone(), pds.clone());
                    let relay = cfg.relay.as_deref() == Some(pds.as_str());
                    let marked = tokio::task::spawn_blocking(move || {
                        n.accounts.db().write(|tx| {
                            let n = tx.execute(
                                "UPDATE feed_remote SET state = 0, next_try_at = 0 WHERE (?2 OR pds = ?1) AND state = 1",
                                params![p, relay],
                            )?;
                            Ok::<_, ues_protocol::sync::repo::ipld::storage::Error>(n)
                        })
                    })
                    .await;
                    if matches!(marked, Ok(Ok(n)) if n > 0) {
                        poke.notify_one();
                    }
                }
                let mut good = 0u64;
                while let Some(msg) = ws.next().await {
                    let bytes = match msg {
                        Ok(tokio_tungstenite::tungstenite::Message::Binary(b)) => b,
                        Ok(tokio_tungstenite::tungstenite::Message::Close(_)) => break,
                        Ok(_) => continue,
                        Err(e) => {
                            tracing::warn!(app = NAME, %pds, error = %e, "a PDS's stream was cut");
                            break;
                        }
                    };
                    let (n, p, c, k) = (node.clone(), pds.clone(), cfg.clone(), poke.clone());
                    match tokio::task::spawn_blocking(move || on_frame(&n, &c, &p, &bytes, &k)).await {
                        Ok(Ok(true)) => good += 1,
                        Ok(Ok(false)) => break,
                        Ok(Err(e)) => {
                            tracing::error!(app = NAME, %pds, error = %e, "a stream event could not be applied");
                            break;
                        }
                        Err(e) => {
                            tracing::error!(app = NAME, %pds, error = %e, "applying a stream event panicked");
                            break;
                        }
                    }
                    if good > 0 {
                        backoff = Duration::from_secs(1);
                    }
                }
            }
            Err(e) => tracing::info!(app = NAME, %pds, error = %e, "a PDS's stream could not be opened"),
        }
        let jitter = Duration::from_millis(u64::from(rand_jitter()) % 1000);
        tokio::time::sleep(backoff + jitter).await;
        backoff = (backoff * 2).min(Duration::from_secs(300));
    }
}

fn rand_jitter() -> u16 {
    rand::random()
}

/// Applies one stream frame; `false` when the stream should be dropped (an error frame, or
/// one that does not decode).
fn on_frame(node: &Node, cfg: &FeedConfig, pds: &str, bytes: &[u8], poke: &Notify) -> rusqlite::Result<bool> {
    let limits = FrameLimits { max_frame: cfg.max_frame_bytes, ..FrameLimits::default() };
    let frame = match decode_frame(bytes, &limits) {
        Ok(f) => f,
        Err(e) => {
            tracing::warn!(app = NAME, %pds, error = %e, "a stream frame was refused; reconnecting");
            return Ok(false);
        }
    };
    let (seq, did) = match &frame {
        Frame::Commit(ev) => (ev.seq, ev.repo.to_string()),
        Frame::Identity { seq, did } | Frame::Account { seq, did, .. } | Frame::Sync { seq, did, .. } => {
            (*seq, did.to_string())
        }
        Frame::Error { error, message } => {
            tracing::warn!(app = NAME, %pds, %error, ?message, "a PDS's stream ended with an error");
            return Ok(false);
        }
        Frame::Info { .. } | Frame::Other(_) => return Ok(true),
    };
    type Held = (i64, i64, Option<String>, Option<String>);
    let held: Option<Held> = node.accounts.db().read(|c| {
        c.query_row(
            "SELECT r.actor_id, r.state, r.rev, r.data_cid FROM feed_remote r JOIN feed_actor a ON a.id = r.actor_id
             WHERE a.did = ?1 AND (?3 OR r.pds = ?2) AND r.unfollowed_at IS NULL",
            params![did, pds, cfg.relay.as_deref() == Some(pds)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()
    })?;
    let write = |f: &dyn Fn(&rusqlite::Transaction<'_>) -> rusqlite::Result<()>| -> rusqlite::Result<()> {
        node.accounts
            .db()
            .write(|tx| {
                f(tx)?;
                tx.execute(
                    "INSERT INTO feed_upstream (url, cursor) VALUES (?1, ?2) ON CONFLICT (url) DO UPDATE SET cursor = excluded.cursor",
                    params![pds, seq],
                )?;
                Ok::<_, ues_protocol::sync::repo::ipld::storage::Error>(())
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
    };
    let Some((actor, state, rev, data)) = held.filter(|h| h.1 == LIVE) else {
        // Events of accounts not followed (most of a relay's) move the kept cursor now and
        // then, not one transaction each: after a restart a few are read again and skipped.
        if seq % 256 == 0 {
            write(&|_| Ok(()))?;
        }
        return Ok(true);
    };
    match frame {
        Frame::Commit(ev) => {
            let (Some(rev), Some(data)) = (rev, data.and_then(|d| d.parse().ok())) else {
                write(&|tx| refetch(tx, actor))?;
                poke.notify_one();
                return Ok(true);
            };
            let parsed = ev.repo.clone();
            let mut result = resolve(node, &parsed, false).map_err(Some).and_then(|id| {
                verify_commit(&ev, &id.key, Some((&rev, data)))
                    .map_err(|e| match e {
                        CheckError::BadSignature => None,
                        e => Some(e.to_string()),
                    })
                    .map(|v| (v, id))
            });
            // A signature that does not verify may follow a key rotation: look again once.
            if let Err(None) = result {
                result = resolve(node, &parsed, true).map_err(Some).and_then(|id| {
                    verify_commit(&ev, &id.key, Some((&rev, data))).map_err(|e| Some(e.to_string())).map(|v| (v, id))
                });
            }
            match result {
                Ok((v, _)) => {
                    let now = now_ms();
                    write(&|tx| {
                        let mut ix = Indexer::new(tx);
                        for (op, bytes) in &v.records {
                            let Some((coll, rkey)) = op.path.split_once('/') else { continue };
                            if !records::COLLECTIONS.contains(&coll) {
                                continue;
                            }
                            match (op.action.as_str(), bytes.as_deref().and_then(record_json)) {
                                ("delete", _) | (_, None) => ix.remove(&did, coll, rkey)?,
                                (_, Some(value)) => {
                                    let cid = op.cid.map(|c| c.to_string()).unwrap_or_default();
                                    ix.put(&did, coll, rkey, &cid, &value, now)?;
                                }
                            }
                        }
                        tx.execute(
                            "UPDATE feed_remote SET rev = ?2, data_cid = ?3, bytes = bytes + ?4 WHERE actor_id = ?1",
                            params![actor, v.rev, v.data.to_string(), ev.blocks.len() as i64],
                        )?;
                        Ok(())
                    })?;
                }
                Err(Some(e)) if e.starts_with("revision") => write(&|_| Ok(()))?,
                Err(Some(e)) if e.starts_with("the commit follows") => {
                    tracing::info!(app = NAME, %did, "commits were missed; the repository is fetched again");
                    write(&|tx| refetch(tx, actor))?;
                    poke.notify_one();
                }
                Err(e) => {
                    let why = e.unwrap_or_else(|| "the commit's signature does not verify".into());
                    write(&|_| Ok(()))?;
                    refuse(node, actor, &did, REFUSED, &format!("a commit does not check: {why}"))?;
                }
            }
        }
        Frame::Identity { .. } => {
            if let Ok(parsed) = Did::new(&did) {
                let handle = resolve(node, &parsed, true).ok().and_then(|i| i.handle);
                write(&|tx| {
                    tx.execute("UPDATE feed_actor SET handle = ?2 WHERE id = ?1", params![actor, handle])?;
                    Ok(())
                })?;
            }
        }
        Frame::Account { active, status, .. } => {
            let status = if active { "active".to_string() } else { status.unwrap_or_else(|| "deactivated".into()) };
            write(&|tx| {
                tx.execute("UPDATE feed_actor SET status = ?2 WHERE id = ?1", params![actor, status])?;
                Ok(())
            })?;
        }
        // A newer state than the one held: fetch it (one at or below the revision held says
        // nothing new).
        Frame::Sync { rev: synced, .. } => {
            if rev.as_deref().is_some_and(|held| synced.as_str() <= held) {
                write(&|_| Ok(()))?;
            } else {
                write(&|tx| refetch(tx, actor))?;
                poke.notify_one();
            }
        }
        _ => write(&|_| Ok(()))?,
    }
    let _ = state;
    Ok(true)
}

fn refetch(tx: &rusqlite::Transaction<'_>, actor: i64) -> rusqlite::Result<()> {
    tx.execute("UPDATE feed_remote SET state = 0, next_try_at = 0 WHERE actor_id = ?1", [actor])?;
    Ok(())
}

/// `dev.ues.feed.getRemoteStatus`.
pub(super) fn status(node: &Node, did: &str) -> Result<Value, NodeError> {
    type Row = (i64, Option<String>, Option<String>, Option<String>, Option<i64>);
    let row: Option<Row> = node
        .accounts
        .db()
        .read(|c| {
            c.query_row(
                "SELECT r.state, r.pds, r.rev, r.last_error, r.unfollowed_at FROM feed_remote r JOIN feed_actor a ON a.id = r.actor_id WHERE a.did = ?1",
                [did],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .optional()
        })
        .map_err(NodeError::internal)?;
    let Some((state, pds, rev, last_error, unfollowed_at)) = row else {
        return Err(NodeError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "NotFound",
            "this account is not followed from here",
        ));
    };
    let mut v = json!({ "did": did, "state": state_name(state) });
    if let Some(p) = pds {
        v["pds"] = Value::String(p);
    }
    if let Some(r) = rev {
        v["rev"] = Value::String(r);
    }
    if let Some(e) = last_error {
        v["lastError"] = Value::String(e);
    }
    if let Some(u) = unfollowed_at {
        v["unfollowedAt"] = Value::String(ues_protocol::node::sequencer::iso_from_millis(u));
    }
    Ok(v)
}
