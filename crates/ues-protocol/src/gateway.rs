//! The WebSocket event server for mobile and web apps (`/ws`): JSON text (or DAG-CBOR binary)
//! frames, many subscriptions over one socket, resumable by sequence number.
//!
//! Protocol (every message a JSON object with a `type`):
//! - server → `welcome` `{protocol, node, time, limits, did}` on connect (`did` when the socket
//!   was opened with a session token: `Authorization: Bearer` or `?access_token=`).
//! - `auth {token}` → `authed {did}`: the same access tokens as XRPC.
//! - `subscribe {id, topic: "repo", did, collection?, snapshot?, since?}` → `subscribed {id,
//!   seq}`; with `snapshot` the current records first (`record` messages, then `snapshot_end
//!   {seq}`), then `event {sub, seq, did, action, collection, rkey, uri, cid, record}` for every
//!   change after `seq`. With `since` (a sequence number seen before a disconnect) the events
//!   after it are replayed first, so a reconnecting client misses nothing and sees nothing
//!   twice; older than the retained window → `resync {sub, reason}`.
//! - `subscribe {id, topic: "account"}` (authenticated only: private) → `account {sub, seq,
//!   kind, ...}` for the caller's own account (handle and status changes).
//! - `batch: true` in a repo subscription: events that are ready together come as one
//!   `events {sub, events: [{seq, did, action, ...}, ...]}` message (in order; the same
//!   objects as `event` messages without `type` and `sub`), and a socket whose subscriptions
//!   all batch gets at most one delivery per 20 ms: far fewer frames and wake-ups for busy
//!   repositories, for at most 20 ms more latency.
//! - No echo: a write made with the header `X-Ues-Ws-Session: <session from welcome>` is not
//!   sent back to that socket, unless its subscription says `echo: true`.
//! - `subscribe {id, topic: "peers" | "sync"}` (the operator: a socket opened with `Authorization:
//!   Basic` admin credentials): `peer {event: connected |
//!   disconnected, peerId, addr}` and `sync {event: session | committed, ...}` as they happen;
//!   ephemeral: a socket that lags gets `gap {missed}` instead of what it missed.
//! - Applications' topics ([`Registry`]): `subscribe {id, topic: <theirs>, ...}` → `app {topic,
//!   sub, event}` (or `gap {missed}` when the socket lagged behind the topic's channel).
//! - `unsubscribe {id}`, `ping {id?}` → `pong`.
//! - `join {topic}` / `leave {topic}`: presence. Every member of the topic (the joiner too)
//!   gets `presence {topic, event: join|leave, who, members}`; who is the caller's DID, or
//!   `anon:<n>` without a session; a connection's presence ends with it.
//! - Errors that keep the socket open: `error {id?, error, message}`.
//!
//! Limits: clients (the next one is closed with 1013 and the reason), message size (1009),
//! subscriptions per socket, messages per second (1008), a bounded send queue per client
//! (a client that does not keep up is closed with 4008 and the sequence number to resume
//! from: nothing is dropped silently), heartbeat (WebSocket pings; 1001 after the timeout).
//! Malformed frames close with 1007. Clients may send DAG-CBOR binary frames instead of JSON;
//! with `?encoding=cbor` the server answers in DAG-CBOR binary frames too.
//!
//! Compression is negotiated in the URL: with `?compress=deflate` every message the server
//! sends (the welcome included) is a binary frame holding that message (JSON, or DAG-CBOR with
//! `encoding=cbor`) compressed on its own as raw DEFLATE (RFC 1951; browsers inflate it with
//! `DecompressionStream("deflate-raw")`); the welcome says `"compression": "deflate"`. Any
//! other value is refused before the upgrade (400). Clients send uncompressed frames.
//! (permessage-deflate, RFC 7692, is not offered: the WebSocket library has no extensions.)

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use ues_sync::repo::ipld::car::CarReader;
use ues_sync::repo::ipld::{Ipld, dagcbor, json as atjson};
use ues_sync::repo::syntax::{Did, Nsid, RecordKey};

use crate::http::READ_BUFFER;
use crate::node::Node;
use crate::node::sequencer::{events_after, oldest_seq};

/// Protocol version in `welcome`.
pub const PROTOCOL: u32 = 1;

/// Limits of the WebSocket server.
#[derive(Debug, Clone)]
pub struct WsConfig {
    /// Connected clients at once.
    pub max_clients: usize,
    /// Largest message a client may send.
    pub max_message_bytes: usize,
    /// Subscriptions per socket.
    pub max_subscriptions: usize,
    /// Messages queued for one client before it counts as too slow.
    pub queue: usize,
    /// Messages a client may send per second.
    pub max_messages_per_sec: u32,
    /// Interval of server pings.
    pub heartbeat: Duration,
    /// Silence after which a client is closed.
    pub timeout: Duration,
    /// Records a snapshot sends at most (a larger collection: page with XRPC first).
    pub max_snapshot: usize,
    /// Events a resume replays at most (further back: `resync`).
    pub max_replay: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            max_clients: 10_000,
            max_message_bytes: 64 << 10,
            max_subscriptions: 64,
            queue: 4_096,
            max_messages_per_sec: 50,
            heartbeat: Duration::from_secs(20),
            timeout: Duration::from_secs(60),
            max_snapshot: 10_000,
            max_replay: 100_000,
        }
    }
}

/// Shortest time between two deliveries to a socket whose subscriptions all batch.
const BATCH_INTERVAL: Duration = Duration::from_millis(20);

/// Most members of one presence topic, and topics at once.
const MAX_MEMBERS: usize = 10_000;
const MAX_TOPICS: usize = 100_000;

/// Who is online where: topic → connection → who (a DID, or `anon:<n>`), and each
/// connection's queue so joins and leaves reach the other members.
#[derive(Default)]
struct Presence {
    topics: HashMap<String, std::collections::BTreeMap<u64, String>>,
    queues: HashMap<u64, mpsc::Sender<(Message, i64)>>,
}

impl Presence {
    /// Tells every member of `topic` that `who` joined or left; returns the members now.
    fn announce(&self, topic: &str, event: &str, who: &str) -> Vec<String> {
        let Some(members) = self.topics.get(topic) else { return Vec::new() };
        let list: Vec<String> = members.values().cloned().collect();
        let msg = text(json!({"type": "presence", "topic": topic, "event": event, "who": who, "members": list}));
        for conn in members.keys() {
            if let Some(q) = self.queues.get(conn) {
                // A member whose queue is full misses this notice; its own sends close it.
                let _ = q.try_send((msg.clone(), 0));
            }
        }
        list
    }
}

struct Gateway {
    /// Applications' topics.
    topics: HashMap<String, Arc<dyn Topic>>,
    /// Events decoded once for all sockets: seq → decoded, newest [`PARSED_CACHE`].
    parsed: parking_lot::RwLock<ParsedCache>,
    st: Arc<Node>,
    cfg: WsConfig,
    clients: AtomicUsize,
    presence: parking_lot::Mutex<Presence>,
    next_conn: std::sync::atomic::AtomicU64,
    started: Instant,
    /// (when, events sent) a second ago and now: events per second for `/stats`.
    rate: parking_lot::Mutex<(Instant, u64, f64)>,
    /// Ticks (at most every [`BATCH_INTERVAL`], when events arrived): sockets whose
    /// subscriptions all batch deliver on it, so they wake together and cover the same events
    /// (one timer for all of them).
    tick: tokio::sync::watch::Sender<i64>,
    /// `events` messages built lately, shared by sockets whose batch covers the same events
    /// for the same subscription (the newest [`SHARED_BATCHES`]).
    batches: Recent<BatchKey, Utf8Bytes>,
    /// What a socket with one batch subscription, none of whose events can be its own, is sent
    /// for the events after a sequence number: the message (none if nothing matched) and the
    /// last sequence number it covers (the newest [`SHARED_BATCHES`]). Sockets that keep up
    /// all stand at the same number after each tick, so the first builds the message and the
    /// others send it without looking at the events (see `Conn::deliver`).
    ranges: Recent<RangeKey, (Option<Utf8Bytes>, i64)>,
    /// Compressed forms of the newest large messages ([`SHARED_BATCHES`]), by the message's
    /// buffer: a shared `events` message is compressed once for all the sockets that asked for
    /// compression. (Each entry holds its message, so its buffer's address is not reused.)
    compressed: Recent<Utf8Bytes, axum::body::Bytes>,
}

/// The newest [`SHARED_BATCHES`] entries of a small cache, searched newest first.
struct Recent<K, V>(parking_lot::Mutex<std::collections::VecDeque<(K, V)>>);

impl<K, V: Clone> Recent<K, V> {
    fn new() -> Self {
        Self(parking_lot::Mutex::new(std::collections::VecDeque::with_capacity(SHARED_BATCHES)))
    }

    /// The value of the newest entry whose key `hit` accepts.
    fn find(&self, hit: impl Fn(&K) -> bool) -> Option<V> {
        self.0.lock().iter().rev().find(|(k, _)| hit(k)).map(|(_, v)| v.clone())
    }

    /// Adds an entry, dropping the oldest past [`SHARED_BATCHES`].
    fn keep(&self, k: K, v: V) {
        let mut entries = self.0.lock();
        if entries.len() >= SHARED_BATCHES {
            entries.pop_front();
        }
        entries.push_back((k, v));
    }
}

/// A subscription (id, repository, collection) and the sequence number its socket stands at.
type RangeKey = (String, String, Option<String>, i64);

/// What makes two sockets' `events` messages identical: subscription id, repository,
/// collection, and the first and last sequence numbers of the run (none of it their own write).
type BatchKey = (String, String, Option<String>, i64, i64);

/// `events` messages kept for sharing.
const SHARED_BATCHES: usize = 64;

/// A live event source an application offers on `/ws` under a topic name of its own.
pub trait Topic: Send + Sync + 'static {
    /// Starts a subscription: `params` is the client's whole `subscribe` message, `did` the
    /// signed-in caller (`None` when anonymous). Returns the events (JSON, delivered as `app`
    /// messages), or a refusal as (error name, message).
    fn subscribe(
        &self,
        params: &Value,
        did: Option<&str>,
    ) -> Result<tokio::sync::broadcast::Receiver<Value>, (String, String)>;
}

/// Topic names the gateway serves itself.
pub const BUILT_IN_TOPICS: [&str; 4] = ["repo", "account", "peers", "sync"];

/// What applications plug into the gateway: WebSocket topics and HTTP routes. The protocol
/// layer defines it; applications (a layer above) fill it, so the gateway never depends on them.
#[derive(Default, Clone)]
pub struct Registry {
    topics: HashMap<String, Arc<dyn Topic>>,
    routes: Router,
}

impl Registry {
    /// Adds a topic (a built-in or already registered name is refused).
    pub fn topic(mut self, name: &str, topic: Arc<dyn Topic>) -> Result<Self, String> {
        if BUILT_IN_TOPICS.contains(&name) || self.topics.contains_key(name) {
            return Err(format!("the topic {name:?} is taken"));
        }
        self.topics.insert(name.to_string(), topic);
        Ok(self)
    }

    /// Adds HTTP routes (an application's REST endpoints).
    pub fn routes(mut self, routes: Router) -> Self {
        self.routes = self.routes.merge(routes);
        self
    }
}

/// The gateway's routes (`/ws`, `/stats`).
pub fn router(st: Arc<Node>, cfg: WsConfig) -> Router {
    router_with(st, cfg, Registry::default())
}

/// The gateway's routes with applications' topics and routes.
pub fn router_with(st: Arc<Node>, cfg: WsConfig, registry: Registry) -> Router {
    let routes = registry.routes.clone();
    let g = Arc::new(Gateway {
        topics: registry.topics,
        parsed: parking_lot::RwLock::new(Default::default()),
        st,
        cfg,
        clients: AtomicUsize::new(0),
        presence: parking_lot::Mutex::new(Presence::default()),
        next_conn: std::sync::atomic::AtomicU64::new(1),
        started: Instant::now(),
        rate: parking_lot::Mutex::new((Instant::now(), 0, 0.0)),
        tick: tokio::sync::watch::channel(0).0,
        batches: Recent::new(),
        ranges: Recent::new(),
        compressed: Recent::new(),
    });
    spawn_ticker(&g);
    // OAuth tokens on the socket and on the applications' REST routes: their proofs and scope.
    let oauth = axum::middleware::from_fn_with_state(g.st.clone(), crate::node::limits::oauth_layer);
    Router::new().route("/ws", get(upgrade)).route("/stats", get(stats)).with_state(g).merge(routes).layer(oauth)
}

/// Every [`BATCH_INTERVAL`] while the gateway lives, ticks for batch sockets if events arrived.
fn spawn_ticker(g: &Arc<Gateway>) {
    let weak = Arc::downgrade(g);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(BATCH_INTERVAL);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            every.tick().await;
            let Some(g) = weak.upgrade() else { break };
            // A tick only when events arrived since the last one (its value: the latest
            // sequence number), so idle batch sockets sleep.
            let latest = *g.st.firehose.latest();
            g.tick.send_if_modified(|t| {
                let changed = *t != latest;
                *t = latest;
                changed
            });
        }
    });
}

impl Gateway {
    /// `m` compressed (see [`Gateway::compressed`]; messages under 1 KiB are not kept).
    fn deflated(&self, m: &Utf8Bytes) -> axum::body::Bytes {
        let same = |k: &Utf8Bytes| k.as_bytes().as_ptr() == m.as_bytes().as_ptr() && k.len() == m.len();
        if let Some(z) = self.compressed.find(same) {
            return z;
        }
        let z = axum::body::Bytes::from(deflated(m.as_bytes()));
        if m.len() >= 1 << 10 {
            self.compressed.keep(m.clone(), z.clone());
        }
        z
    }

    /// The decoded event `seq` (decoded on first use, then shared).
    fn parsed(&self, seq: i64, frame: &[u8]) -> Option<Arc<Parsed>> {
        if let Some(p) = self.parsed.read().0.get(&seq) {
            return Some(p.clone());
        }
        let p = Arc::new(parse(seq, frame)?);
        let mut cache = self.parsed.write();
        if cache.1.len() >= PARSED_CACHE
            && let Some(old) = cache.1.pop_front()
        {
            cache.0.remove(&old);
        }
        if cache.0.insert(seq, p.clone()).is_none() {
            cache.1.push_back(seq);
        }
        Some(p)
    }
}

/// `GET /stats`: uptime, connected clients, subscriptions, queue depth, events per second.
async fn stats(State(g): State<Arc<Gateway>>, headers: HeaderMap) -> Result<axum::Json<Value>, crate::node::NodeError> {
    if !g.st.cfg.public_metrics {
        g.st.operator(&headers)?;
    }
    let m = &g.st.metrics;
    let events = m.ws_events.load(Ordering::Relaxed);
    let per_sec = {
        let mut r = g.rate.lock();
        let dt = r.0.elapsed().as_secs_f64();
        if dt >= 1.0 {
            *r = (Instant::now(), events, (events - r.1) as f64 / dt);
        }
        r.2
    };
    Ok(axum::Json(json!({
        "uptimeSeconds": g.started.elapsed().as_secs(),
        "wsClients": m.ws_clients.load(Ordering::Relaxed),
        "wsSubscriptions": m.ws_subscriptions.load(Ordering::Relaxed),
        "wsQueuedMessages": m.ws_queued.load(Ordering::Relaxed),
        "wsEventsSent": events,
        "wsEventsPerSecond": (per_sec * 10.0).round() / 10.0,
        "wsSlowClosed": m.ws_slow_closed.load(Ordering::Relaxed),
        "wsRefused": m.ws_refused.load(Ordering::Relaxed),
        "firehoseSeq": *g.st.firehose.latest(),
        "firehoseSubscribers": m.subscribers.load(Ordering::Relaxed),
        "p2pPeers": g.st.replication.get().map(|r| r.status().connected.len()),
        "rssBytes": proc_status_kib("VmRSS:").map(|k| k << 10),
        "peakRssBytes": proc_status_kib("VmHWM:").map(|k| k << 10),
    })))
}

#[derive(Deserialize)]
struct WsQuery {
    access_token: Option<String>,
    /// `cbor`: the server answers in DAG-CBOR binary frames (clients may send either).
    encoding: Option<String>,
    /// `deflate`: the server's messages are compressed (see the module's documentation).
    compress: Option<String>,
}

async fn upgrade(
    State(g): State<Arc<Gateway>>,
    headers: HeaderMap,
    Query(q): Query<WsQuery>,
    up: WebSocketUpgrade,
) -> Response {
    let mut headers = headers;
    if let Some(t) = q.access_token
        && let Ok(v) = format!("Bearer {t}").parse()
    {
        headers.insert(axum::http::header::AUTHORIZATION, v);
    }
    // The operator (HTTP Basic, as for admin calls) sees the node's peer and sync events; an
    // account's session sees its own; a socket without either only public data.
    let basic = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("Basic "));
    let (did, operator) = if basic {
        match g.st.operator(&headers) {
            Ok(()) => (None, true),
            Err(e) => return e.into_response(),
        }
    } else if headers.contains_key(axum::http::header::AUTHORIZATION) {
        match g.st.access(&headers) {
            Ok(c) => (Some(c.sub), false),
            Err(e) => return e.into_response(),
        }
    } else {
        (None, false)
    };
    // Frames above twice the limit are refused by the WebSocket layer itself; between the two,
    // the server answers 1009 with a reason.
    let limit = g.cfg.max_message_bytes;
    let deflate = match q.compress.as_deref() {
        None | Some("none") => false,
        Some("deflate") => true,
        Some(other) => {
            return crate::node::NodeError::invalid(format!("compress {other:?}: use deflate or none")).into_response();
        }
    };
    let cbor = match q.encoding.as_deref() {
        None | Some("json") => false,
        Some("cbor") => true,
        Some(other) => {
            return crate::node::NodeError::invalid(format!("encoding {other:?}: use json or cbor")).into_response();
        }
    };
    // A small read buffer: tungstenite zeroes the whole buffer on every read attempt, and
    // every wake-up of a socket's task polls its read side (128 KiB by default: at 1,000
    // sockets that zeroing was most of the node's CPU). Client messages are small; larger
    // ones (up to the limit) are read in several chunks.
    up.read_buffer_size(READ_BUFFER)
        .max_message_size(limit * 2)
        .max_frame_size(limit * 2)
        .on_upgrade(move |socket| serve(g, socket, did, operator, cbor, deflate))
}

/// `bytes` compressed as raw DEFLATE (fast level: these are live messages).
fn deflated(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z =
        flate2::write::DeflateEncoder::new(Vec::with_capacity(bytes.len() / 3 + 64), flate2::Compression::fast());
    z.write_all(bytes).expect("writing to memory");
    z.finish().expect("writing to memory")
}

fn close(code: u16, reason: impl Into<String>) -> Message {
    let mut reason: String = reason.into();
    reason.truncate(120);
    Message::Close(Some(CloseFrame { code, reason: reason.into() }))
}

fn text(v: Value) -> Message {
    Message::Text(v.to_string().into())
}

/// One subscription.
#[derive(Debug, Clone)]
enum Sub {
    Repo {
        did: String,
        collection: Option<String>,
        echo: bool,
        /// Several events per message (`events`) when several are ready at once.
        batch: bool,
    },
    Account {
        did: String,
    },
    /// `peers` or `sync`: the node's peer-to-peer events.
    Node {
        topic: &'static str,
    },
    /// An application's topic (its events arrive through a forwarding task).
    App,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum ClientMessage {
    Auth {
        token: String,
    },
    Subscribe {
        id: String,
        topic: String,
        did: Option<String>,
        collection: Option<String>,
        #[serde(default)]
        snapshot: bool,
        since: Option<i64>,
        /// Also deliver this session's own writes.
        #[serde(default)]
        echo: bool,
        /// Deliver events that are ready together in one `events` message.
        #[serde(default)]
        batch: bool,
    },
    Unsubscribe {
        id: String,
    },
    Ping {
        id: Option<String>,
    },
    Join {
        topic: String,
    },
    Leave {
        topic: String,
    },
}

/// Per-socket state.
struct Conn {
    g: Arc<Gateway>,
    /// This connection's number (presence).
    id: u64,
    /// The secret session number writes name to avoid their echo (random: others cannot
    /// guess it to hide events from this socket).
    session: u64,
    /// Presence topics joined.
    joined: std::collections::HashSet<String>,
    did: Option<String>,
    /// Opened with the operator's credentials: the node's peer and sync events are shown.
    operator: bool,
    subs: HashMap<String, Sub>,
    /// The last sequence number delivered to this socket's subscriptions.
    seen: i64,
    /// Answer in DAG-CBOR binary frames.
    cbor: bool,
    /// Compress every message sent (raw DEFLATE, each on its own).
    deflate: bool,
    /// Applications' events for this socket, from one forwarding task per subscription.
    app_tx: mpsc::Sender<Value>,
    app_tasks: HashMap<String, tokio::task::JoinHandle<()>>,
    /// The node's peer and sync events, once a subscription wants them.
    node_events: Option<tokio::sync::broadcast::Receiver<Value>>,
    /// The latest sequence number when the socket opened.
    first_seen: i64,
    out: mpsc::Sender<(Message, i64)>,
    stop: Option<oneshot::Sender<Message>>,
    /// The sequence number of the last event message written to the socket.
    sent: Arc<std::sync::atomic::AtomicI64>,
    /// The last `events` message `emit` sent.
    last_batch: Option<Utf8Bytes>,
}

enum Flow {
    Go,
    Stop,
}

impl Conn {
    /// Queues a message; a full queue closes the socket as a slow consumer (with where to resume).
    fn send(&mut self, m: Message) -> Flow {
        self.send_event(m, 0)
    }

    /// Queues a message that carries event `seq` (0: none).
    fn send_event(&mut self, m: Message, seq: i64) -> Flow {
        let m = match (self.cbor, m) {
            (true, Message::Text(t)) => {
                match serde_json::from_str::<Value>(t.as_str()).map(|v| atjson::from_json(&v)) {
                    Ok(Ok(ipld)) => Message::Binary(dagcbor::encode(&ipld).into()),
                    _ => Message::Text(t),
                }
            }
            (_, m) => m,
        };
        let m = match m {
            Message::Text(t) if self.deflate => Message::Binary(self.g.deflated(&t)),
            Message::Binary(b) if self.deflate => Message::Binary(deflated(&b).into()),
            m => m,
        };
        match self.out.try_send((m, seq)) {
            Ok(()) => {
                let metrics = &self.g.st.metrics;
                metrics.ws_queued.fetch_add(1, Ordering::Relaxed);
                if seq > 0 {
                    metrics.ws_events.fetch_add(1, Ordering::Relaxed);
                }
                Flow::Go
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.g.st.metrics.ws_slow_closed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(queue = self.g.cfg.queue, seen = self.seen, "websocket client too slow: closed");
                self.close(close(
                    4008,
                    format!(
                        "slow consumer: queue of {} full; resume with since={}",
                        self.g.cfg.queue,
                        self.resume_point()
                    ),
                ));
                Flow::Stop
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Flow::Stop,
        }
    }

    /// Where a client that lost this socket should resume: before the last event written to
    /// the socket (its messages may have been cut short), or from the socket's first event.
    fn resume_point(&self) -> i64 {
        let sent = self.sent.load(Ordering::Relaxed);
        if sent > 0 { sent - 1 } else { self.first_seen }
    }

    fn close(&mut self, frame: Message) {
        if let Message::Close(Some(f)) = &frame
            && matches!(f.code, 1003 | 1007 | 1008 | 1009)
        {
            self.g.st.metrics.ws_refused.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(frame);
        }
    }

    fn error(&mut self, id: Option<&str>, error: &str, message: impl Into<String>) -> Flow {
        self.send(text(json!({"type": "error", "id": id, "error": error, "message": message.into()})))
    }

    async fn on_text(&mut self, raw: &str) -> Flow {
        let msg: ClientMessage = match serde_json::from_str(raw) {
            Ok(m) => m,
            Err(e) => {
                // Not JSON, or not a message this server knows: the frame is malformed.
                if serde_json::from_str::<Value>(raw).is_ok_and(|v| v.get("type").is_some()) {
                    return self.error(None, "InvalidMessage", e.to_string());
                }
                tracing::info!(error = %e, "websocket client sent a malformed frame: closed");
                self.close(close(1007, format!("malformed message: {e}")));
                return Flow::Stop;
            }
        };
        match msg {
            ClientMessage::Join { topic } => self.join(topic),
            ClientMessage::Leave { topic } => {
                self.leave(&topic);
                self.send(text(json!({"type": "left", "topic": topic})))
            }
            ClientMessage::Ping { id } => self.send(text(json!({"type": "pong", "id": id, "seq": self.seen}))),
            ClientMessage::Auth { token } => {
                let mut h = HeaderMap::new();
                if let Ok(v) = format!("Bearer {token}").parse() {
                    h.insert(axum::http::header::AUTHORIZATION, v);
                }
                match self.g.st.access(&h) {
                    Ok(c) => {
                        self.did = Some(c.sub.clone());
                        self.send(text(json!({"type": "authed", "did": c.sub})))
                    }
                    Err(e) => self.error(None, &e.error, e.message),
                }
            }
            ClientMessage::Unsubscribe { id } => {
                if let Some(task) = self.app_tasks.remove(&id) {
                    task.abort();
                }
                if self.subs.remove(&id).is_some() {
                    self.g.st.metrics.ws_subscriptions.fetch_sub(1, Ordering::Relaxed);
                }
                self.send(text(json!({"type": "unsubscribed", "id": id})))
            }
            ClientMessage::Subscribe { id, topic, did, collection, snapshot, since, echo, batch } => {
                if self.subs.len() >= self.g.cfg.max_subscriptions && !self.subs.contains_key(&id) {
                    let max = self.g.cfg.max_subscriptions;
                    return self.error(Some(&id), "TooManySubscriptions", format!("at most {max} per socket"));
                }
                // Subscribing again under an id replaces what it was (an application topic's
                // forwarding task included).
                if let Some(task) = self.app_tasks.remove(&id) {
                    task.abort();
                }
                let sub = match topic.as_str() {
                    "repo" => {
                        let Some(Ok(d)) = did.as_deref().map(Did::new) else {
                            return self.error(Some(&id), "InvalidRequest", "repo subscriptions need a valid did");
                        };
                        if let Some(c) = &collection
                            && Nsid::new(c.as_str()).is_err()
                        {
                            return self.error(Some(&id), "InvalidRequest", format!("invalid collection {c:?}"));
                        }
                        Sub::Repo { did: d.to_string(), collection, echo, batch }
                    }
                    "account" => match &self.did {
                        Some(me) => Sub::Account { did: me.clone() },
                        None => {
                            return self.error(Some(&id), "AuthRequired", "the account topic needs a session token");
                        }
                    },
                    "peers" | "sync" => {
                        let Some(rep) = self.g.st.replication.get() else {
                            return self.error(Some(&id), "Unavailable", "the peer-to-peer service is off");
                        };
                        // Peers' addresses and what they sync are the operator's to see.
                        if !self.operator {
                            return self.error(
                                Some(&id),
                                "AuthRequired",
                                "peer and sync events need the operator's credentials",
                            );
                        }
                        if self.node_events.is_none() {
                            self.node_events = Some(rep.events());
                        }
                        Sub::Node { topic: if topic == "peers" { "peers" } else { "sync" } }
                    }
                    other => {
                        let Some(t) = self.g.topics.get(other).cloned() else {
                            return self.error(Some(&id), "UnknownTopic", format!("no topic {other:?}"));
                        };
                        let params: Value = serde_json::from_str(raw).unwrap_or(Value::Null);
                        let mut rx = match t.subscribe(&params, self.did.as_deref()) {
                            Ok(rx) => rx,
                            Err((error, message)) => return self.error(Some(&id), &error, message),
                        };
                        let (tx, name, sub_id) = (self.app_tx.clone(), other.to_string(), id.clone());
                        let task = tokio::spawn(async move {
                            use tokio::sync::broadcast::error::RecvError;
                            loop {
                                let m = match rx.recv().await {
                                    Ok(event) => json!({"type": "app", "topic": name, "sub": sub_id, "event": event}),
                                    Err(RecvError::Lagged(n)) => {
                                        json!({"type": "gap", "topic": name, "sub": sub_id, "missed": n})
                                    }
                                    Err(RecvError::Closed) => break,
                                };
                                if tx.send(m).await.is_err() {
                                    break;
                                }
                            }
                        });
                        self.app_tasks.insert(id.clone(), task);
                        Sub::App
                    }
                };
                if let Flow::Stop = self.send(text(json!({"type": "subscribed", "id": id, "seq": self.seen}))) {
                    return Flow::Stop;
                }
                if snapshot && let Flow::Stop = self.snapshot(&id, &sub).await {
                    return Flow::Stop;
                }
                if let Some(since) = since
                    && let Flow::Stop = self.replay(&id, &sub, since).await
                {
                    return Flow::Stop;
                }
                if self.subs.insert(id, sub).is_none() {
                    self.g.st.metrics.ws_subscriptions.fetch_add(1, Ordering::Relaxed);
                }
                Flow::Go
            }
        }
    }

    /// A peer or sync event for the subscriptions that want it (a lagging socket is told how
    /// many it missed: these events are ephemeral, not replayable).
    fn on_node_event(&mut self, ev: Result<Value, tokio::sync::broadcast::error::RecvError>) -> Flow {
        use tokio::sync::broadcast::error::RecvError;
        let subs: Vec<(String, &'static str)> = self
            .subs
            .iter()
            .filter_map(|(id, s)| match s {
                Sub::Node { topic } => Some((id.clone(), *topic)),
                _ => None,
            })
            .collect();
        if subs.is_empty() {
            self.node_events = None;
            return Flow::Go;
        }
        match ev {
            Ok(v) => {
                for (id, topic) in subs {
                    if v["topic"] == topic {
                        let mut m = v.clone();
                        m["type"] = json!(topic.trim_end_matches('s'));
                        m["sub"] = json!(id);
                        if let Flow::Stop = self.send(text(m)) {
                            return Flow::Stop;
                        }
                    }
                }
                Flow::Go
            }
            Err(RecvError::Lagged(n)) => {
                for (id, topic) in subs {
                    if let Flow::Stop = self.send(text(json!({"type": "gap", "sub": id, "topic": topic, "missed": n})))
                    {
                        return Flow::Stop;
                    }
                }
                Flow::Go
            }
            Err(RecvError::Closed) => {
                self.node_events = None;
                Flow::Go
            }
        }
    }

    /// Per operation of the event: whether this socket's session wrote it (`X-Ues-Ws-Session`).
    fn own(&self, p: &Parsed) -> Vec<bool> {
        match p.commit {
            Some(c) if self.g.st.wrote(self.session) => {
                p.ops.iter().map(|(_, path, _)| self.g.st.origin(&c, path) == Some(self.session)).collect()
            }
            _ => vec![false; p.ops.len()],
        }
    }

    fn who(&self) -> String {
        self.did.clone().unwrap_or_else(|| format!("anon:{}", self.id))
    }

    /// Joins a presence topic: every member (this one too) hears who joined, with the list.
    fn join(&mut self, topic: String) -> Flow {
        if topic.is_empty() || topic.len() > 256 {
            return self.error(None, "InvalidRequest", "a presence topic is 1-256 bytes");
        }
        if self.joined.len() >= self.g.cfg.max_subscriptions && !self.joined.contains(&topic) {
            return self.error(None, "TooManySubscriptions", "too many presence topics on this socket");
        }
        let who = self.who();
        {
            let mut p = self.g.presence.lock();
            if !p.topics.contains_key(&topic) && p.topics.len() >= MAX_TOPICS {
                drop(p);
                return self.error(None, "Busy", "too many presence topics on this node");
            }
            let members = p.topics.entry(topic.clone()).or_default();
            if members.len() >= MAX_MEMBERS && !members.contains_key(&self.id) {
                drop(p);
                return self.error(None, "Busy", format!("presence topic {topic:?} is full"));
            }
            members.insert(self.id, who.clone());
            p.queues.insert(self.id, self.out.clone());
            p.announce(&topic, "join", &who);
        }
        self.joined.insert(topic);
        Flow::Go
    }

    fn leave(&mut self, topic: &str) {
        if !self.joined.remove(topic) {
            return;
        }
        let who = self.who();
        let mut p = self.g.presence.lock();
        if let Some(members) = p.topics.get_mut(topic) {
            members.remove(&self.id);
            if members.is_empty() {
                p.topics.remove(topic);
            } else {
                p.announce(topic, "leave", &who);
            }
        }
        if self.joined.is_empty() {
            p.queues.remove(&self.id);
        }
    }

    /// The records a repo subscription matches now.
    async fn snapshot(&mut self, id: &str, sub: &Sub) -> Flow {
        let Sub::Repo { did, collection: Some(collection), .. } = sub else {
            return self.error(Some(id), "InvalidRequest", "a snapshot needs a did and a collection");
        };
        let (st, max) = (self.g.st.clone(), self.g.cfg.max_snapshot);
        let (did, collection) = (did.clone(), collection.clone());
        let records = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, String> {
            let d = Did::new(did.as_str()).map_err(|e| e.to_string())?;
            let c = Nsid::new(collection.as_str()).map_err(|e| e.to_string())?;
            // A taken-down or suspended account's records are not served here either.
            let status = st.accounts.get(&d).map_err(|e| e.to_string())?.map(|a| a.status);
            if matches!(status.as_deref(), Some("takendown" | "suspended")) {
                return Err(format!("{did} is not served: its account is {}", status.unwrap_or_default()));
            }
            let mut out = Vec::new();
            let mut cursor: Option<RecordKey> = None;
            while out.len() < max {
                let page = st.accounts.list_records(&d, &c, cursor.as_ref(), 500, false).map_err(|e| e.to_string())?;
                let Some(last) = page.last() else { break };
                cursor = RecordKey::new(last.rkey.as_str()).ok();
                for r in &page {
                    let cid: cid::Cid = r.cid.parse().map_err(|e: cid::Error| e.to_string())?;
                    let value = st
                        .accounts
                        .blocks()
                        .get(&cid)
                        .ok()
                        .flatten()
                        .and_then(|b| dagcbor::decode_atproto(&b).ok())
                        .map(|v| atjson::to_json(&v));
                    out.push(json!({"uri": format!("at://{}/{}/{}", r.did, r.collection, r.rkey), "cid": r.cid, "record": value}));
                }
                if page.len() < 500 {
                    break;
                }
            }
            out.truncate(max);
            Ok(out)
        })
        .await;
        let records = match records {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return self.error(Some(id), "InvalidRequest", e),
            Err(e) => return self.error(Some(id), "InternalServerError", e.to_string()),
        };
        let n = records.len();
        for mut r in records {
            r["type"] = json!("record");
            r["sub"] = json!(id);
            if let Flow::Stop = self.send(text(r)) {
                return Flow::Stop;
            }
        }
        self.send(text(json!({"type": "snapshot_end", "sub": id, "seq": self.seen, "records": n})))
    }

    /// Events after `since` up to what this socket has seen, for one new subscription.
    async fn replay(&mut self, id: &str, sub: &Sub, since: i64) -> Flow {
        let db = self.g.st.firehose.db().clone();
        let oldest = tokio::task::spawn_blocking({
            let db = db.clone();
            move || oldest_seq(&db)
        })
        .await;
        let oldest = matches!(oldest, Ok(Ok(_))).then(|| oldest.ok().and_then(|r| r.ok()).flatten()).flatten();
        if since < self.seen
            && (oldest.is_none_or(|o| since + 1 < o) || self.seen - since > self.g.cfg.max_replay as i64)
        {
            return self.send(text(json!({"type": "resync", "sub": id, "seq": self.seen,
                "reason": "the events after this sequence number are no longer kept: reload the current state (snapshot) and go on from seq"})));
        }
        let mut after = since;
        while after < self.seen {
            let batch = tokio::task::spawn_blocking({
                let db = db.clone();
                move || events_after(&db, after)
            })
            .await;
            let Ok(Ok(batch)) = batch else { break };
            if batch.is_empty() {
                break;
            }
            let mut run = Vec::with_capacity(batch.len());
            let mut done = false;
            for (seq, frame) in batch {
                if seq > self.seen {
                    done = true;
                    break;
                }
                after = seq;
                if let Some(p) = self.g.parsed(seq, &frame) {
                    run.push((seq, p));
                }
            }
            if let Flow::Stop = self.emit(&run, &[(id.to_string(), sub.clone())]) {
                return Flow::Stop;
            }
            if done {
                break;
            }
        }
        Flow::Go
    }

    /// Sends what a run of consecutive events gives each subscription: a message per event, or
    /// for batch subscriptions one `events` message with all of theirs.
    fn emit(&mut self, run: &[(i64, Arc<Parsed>)], subs: &[(String, Sub)]) -> Flow {
        let (Some(first), Some(last)) = (run.first().map(|(seq, _)| *seq), run.last().map(|(seq, _)| *seq)) else {
            return Flow::Go;
        };
        let mut any_own = false;
        let mut batched: Vec<(&str, Vec<&str>)> = Vec::new();
        let owns: Vec<Vec<bool>> = run.iter().map(|(_, p)| self.own(p)).collect();
        for ((seq, p), own) in run.iter().zip(&owns) {
            any_own |= own.iter().any(|o| *o);
            for (id, sub) in subs {
                if let Sub::Repo { batch: true, .. } = sub {
                    let tails = repo_events(p, sub, own);
                    match batched.iter_mut().find(|(i, _)| *i == id.as_str()) {
                        Some((_, all)) => all.extend(tails),
                        None => batched.push((id.as_str(), tails.collect())),
                    }
                    continue;
                }
                for m in messages(*seq, p, id, sub, own) {
                    if let Flow::Stop = self.send_event(m, *seq) {
                        return Flow::Stop;
                    }
                }
            }
        }
        for (id, tails) in batched {
            if tails.is_empty() {
                continue;
            }
            let key = match subs.iter().find(|(i, _)| i == id) {
                Some((_, Sub::Repo { did, collection, .. })) if !any_own => {
                    Some((id.to_string(), did.clone(), collection.clone(), first, last))
                }
                _ => None,
            };
            // Built already by another socket for the same events and subscription? (Only
            // runs holding none of the socket's own writes are shared, either way.)
            let shared = key.as_ref().and_then(|k| self.g.batches.find(|b| b == k));
            let m = match shared {
                Some(m) => m,
                None => {
                    let mut m = format!("{{\"type\":\"events\",\"sub\":{},\"events\":[", Value::String(id.to_string()));
                    for (i, tail) in tails.iter().enumerate() {
                        m.push_str(if i == 0 { "{" } else { ",{" });
                        m.push_str(tail);
                    }
                    m.push_str("]}");
                    let m = Utf8Bytes::from(m);
                    if let Some(k) = key {
                        self.g.batches.keep(k, m.clone());
                    }
                    m
                }
            };
            self.last_batch = Some(m.clone());
            if let Flow::Stop = self.send_event(Message::Text(m), last) {
                return Flow::Stop;
            }
        }
        Flow::Go
    }

    /// The socket's one subscription at `after`, when it is a batch subscription and none of
    /// the events can be the socket's own (its session never wrote): what it is sent then
    /// depends on nothing else (see [`Gateway::ranges`]).
    fn range_key(&self, after: i64) -> Option<RangeKey> {
        if self.subs.len() != 1 || self.g.st.wrote(self.session) {
            return None;
        }
        match self.subs.iter().next() {
            Some((id, Sub::Repo { did, collection, batch: true, .. })) => {
                Some((id.clone(), did.clone(), collection.clone(), after))
            }
            _ => None,
        }
    }

    /// Delivers the events after `seen` to the subscriptions.
    async fn deliver(&mut self, latest: i64) -> Flow {
        let db = self.g.st.firehose.db().clone();
        // Bounded: a few batches per wake-up; the next wake-up (or heartbeat) continues.
        for _ in 0..16 {
            if self.seen >= latest {
                break;
            }
            let after = self.seen;
            // Sent already to another socket standing where this one stands?
            let range = self.range_key(after);
            if let Some((m, end)) = range.as_ref().and_then(|k| self.g.ranges.find(|r| r == k)) {
                self.seen = end;
                if let Some(m) = m
                    && let Flow::Stop = self.send_event(Message::Text(m), end)
                {
                    return Flow::Stop;
                }
                continue;
            }
            // The firehose's ring holds the newest frames for every live reader; older ones
            // come from SQLite.
            let batch: Vec<(i64, Arc<[u8]>)> = match self.g.st.firehose.ring_after(after) {
                Some(b) => b,
                None => {
                    let rows = tokio::task::spawn_blocking({
                        let db = db.clone();
                        move || events_after(&db, after)
                    })
                    .await;
                    let Ok(Ok(rows)) = rows else { break };
                    rows.into_iter().map(|(s, f)| (s, Arc::from(f))).collect()
                }
            };
            if batch.is_empty() {
                break;
            }
            // The subscriptions do not change while a batch is delivered: copied once.
            let subs: Vec<(String, Sub)> = self.subs.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
            let mut run = Vec::with_capacity(batch.len());
            for (seq, frame) in batch {
                self.seen = seq;
                if let Some(p) = self.g.parsed(seq, &frame) {
                    run.push((seq, p));
                }
            }
            self.last_batch = None;
            if let Flow::Stop = self.emit(&run, &subs) {
                return Flow::Stop;
            }
            // Still none of its own (its session may have written meanwhile): for the others.
            if let Some(k) = range
                && !self.g.st.wrote(self.session)
            {
                self.g.ranges.keep(k, (self.last_batch.take(), self.seen));
            }
        }
        Flow::Go
    }
}

/// One sequenced event, decoded once for every socket (see [`Gateway::parsed`]).
struct Parsed {
    /// `#commit`, `#account`, `#identity`, ...
    kind: String,
    /// The account it concerns.
    did: Option<String>,
    /// The commit, for `#commit`.
    commit: Option<cid::Cid>,
    /// For `#commit`: per op, its collection, its path and the JSON of the event message after
    /// `{"type":"event","sub":..,` (everything but the subscription id, which differs per socket).
    ops: Vec<(String, String, String)>,
    /// For `#account` / `#identity`: the event body as JSON.
    body: Option<Value>,
}

/// Events decoded at once and kept for the sockets that follow (the newest).
const PARSED_CACHE: usize = 8_192;

/// Decoded events by sequence number, and their order (oldest first).
type ParsedCache = (HashMap<i64, Arc<Parsed>>, std::collections::VecDeque<i64>);

fn parse(seq: i64, frame: &[u8]) -> Option<Parsed> {
    let mut r = dagcbor::Reader::new(frame);
    let header = r.value(&dagcbor::DecodeOptions::default(), 0).ok()?;
    let body = dagcbor::decode_atproto(&frame[r.offset()..]).ok()?;
    let (Ipld::Map(h), Ipld::Map(b)) = (header, body) else { return None };
    let kind = match h.get("t") {
        Some(Ipld::String(t)) => t.clone(),
        _ => return None,
    };
    let s = |k: &str| match b.get(k) {
        Some(Ipld::String(v)) => Some(v.clone()),
        _ => None,
    };
    let did = s("repo").or_else(|| s("did"));
    let commit = match b.get("commit") {
        Some(Ipld::Link(c)) => Some(*c),
        _ => None,
    };
    let mut ops = Vec::new();
    let mut body_json = None;
    if kind == "#commit" {
        let repo = did.clone().unwrap_or_default();
        let blocks: HashMap<cid::Cid, Vec<u8>> = match b.get("blocks") {
            Some(Ipld::Bytes(car)) => {
                CarReader::new(&car[..]).map(|rd| rd.filter_map(Result::ok).collect()).unwrap_or_default()
            }
            _ => HashMap::new(),
        };
        if let Some(Ipld::List(list)) = b.get("ops") {
            for op in list {
                let Ipld::Map(op) = op else { continue };
                let (Some(Ipld::String(action)), Some(Ipld::String(path))) = (op.get("action"), op.get("path")) else {
                    continue;
                };
                let Some((c, rkey)) = path.split_once('/') else { continue };
                let cid = match op.get("cid") {
                    Some(Ipld::Link(cid)) => Some(*cid),
                    _ => None,
                };
                let record = cid
                    .and_then(|c| blocks.get(&c))
                    .and_then(|bytes| dagcbor::decode_atproto(bytes).ok())
                    .map(|v| atjson::to_json(&v));
                let full = json!({
                    "seq": seq, "did": repo, "action": action,
                    "collection": c, "rkey": rkey, "uri": format!("at://{repo}/{path}"),
                    "cid": cid.map(|c| c.to_string()), "record": record, "rev": s("rev"),
                })
                .to_string();
                // `{"seq":...}` → `"seq":...}`: the per-socket prefix goes in front.
                ops.push((c.to_string(), path.clone(), full[1..].to_string()));
            }
        }
    } else {
        body_json = Some(atjson::to_json(&Ipld::Map(b)));
    }
    Some(Parsed { kind, did, commit, ops, body: body_json })
}

/// The messages one sequenced event gives a subscription (`own`: per operation, whether this
/// socket's session wrote it).
fn messages(seq: i64, p: &Parsed, id: &str, sub: &Sub, own: &[bool]) -> Vec<Message> {
    match sub {
        Sub::Account { did } => {
            if p.did.as_deref() != Some(did) || !matches!(p.kind.as_str(), "#account" | "#identity") {
                return Vec::new();
            }
            let mut v = p.body.clone().unwrap_or(Value::Null);
            v["type"] = json!("account");
            v["kind"] = json!(p.kind.trim_start_matches('#'));
            v["sub"] = json!(id);
            v["seq"] = json!(seq);
            vec![text(v)]
        }
        Sub::Node { .. } | Sub::App => Vec::new(),
        Sub::Repo { .. } => {
            let prefix = format!("{{\"type\":\"event\",\"sub\":{},", Value::String(id.to_string()));
            repo_events(p, sub, own).map(|tail| Message::Text(format!("{prefix}{tail}").into())).collect()
        }
    }
}

/// The event objects (each without its opening brace: `"seq":..}`) a repo subscription gets
/// from one sequenced event.
fn repo_events<'a, 'b>(p: &'a Parsed, sub: &Sub, own: &'b [bool]) -> impl Iterator<Item = &'a str> + use<'a, 'b> {
    let (wanted, collection, echo) = match sub {
        Sub::Repo { did, collection, echo, .. } => {
            (p.kind == "#commit" && p.did.as_deref() == Some(did.as_str()), collection.clone(), *echo)
        }
        _ => (false, None, false),
    };
    p.ops
        .iter()
        .zip(own.iter().chain(std::iter::repeat(&false)))
        .filter(move |((c, _, _), mine)| {
            wanted && (echo || !**mine) && collection.as_deref().is_none_or(|want| want == c)
        })
        .map(|((_, _, tail), _)| tail.as_str())
}

/// A `/proc/self/status` field in KiB (Linux), e.g. `VmRSS:`.
fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..].trim().trim_end_matches("kB").trim().parse().ok()
}

/// Counts a client for as long as it is connected.
struct ClientSlot<'a>(&'a AtomicUsize);

impl Drop for ClientSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve(g: Arc<Gateway>, socket: WebSocket, did: Option<String>, operator: bool, cbor: bool, deflate: bool) {
    let (mut sink, mut stream) = socket.split();
    let n = g.clients.fetch_add(1, Ordering::Relaxed);
    let _slot = ClientSlot(&g.clients);
    if n >= g.cfg.max_clients {
        tracing::warn!(clients = n, "websocket client refused: server full");
        g.st.metrics.ws_refused.fetch_add(1, Ordering::Relaxed);
        let _ = sink
            .send(close(1013, format!("server full: {} clients connected; try again later", g.cfg.max_clients)))
            .await;
        return;
    }
    let metrics = &g.st.metrics;
    metrics.ws_clients.fetch_add(1, Ordering::Relaxed);
    let (out, mut rx) = mpsc::channel::<(Message, i64)>(g.cfg.queue);
    let (stop, mut stopped) = oneshot::channel::<Message>();
    let sent = Arc::new(std::sync::atomic::AtomicI64::new(0));
    let sent_w = sent.clone();
    let st_w = g.st.clone();
    let writer = tokio::spawn(async move {
        loop {
            tokio::select! {
                biased;
                frame = &mut stopped => {
                    if let Ok(frame) = frame {
                        let _ = sink.send(frame).await;
                    }
                    break;
                }
                m = rx.recv() => match m {
                    Some((m, seq)) => {
                        // Everything already queued goes out in one write (frames are fed,
                        // then flushed once): far fewer system calls under load.
                        let mut last = seq;
                        let mut n = 1;
                        let mut ok = sink.feed(m).await.is_ok();
                        while ok && n < 256 {
                            let Ok((m, seq)) = rx.try_recv() else { break };
                            n += 1;
                            ok = sink.feed(m).await.is_ok();
                            last = last.max(seq);
                        }
                        st_w.metrics.ws_queued.fetch_sub(n, Ordering::Relaxed);
                        if !ok || sink.flush().await.is_err() {
                            break;
                        }
                        if last > 0 {
                            sent_w.store(last, Ordering::Relaxed);
                        }
                    }
                    None => break,
                },
            }
        }
        // What never left the queue no longer waits.
        let left = rx.len() as i64;
        st_w.metrics.ws_queued.fetch_sub(left, Ordering::Relaxed);
        let _ = sink.close().await;
    });
    // Bounded: a forwarding task waits when the socket's application events back up.
    let (app_tx, mut app_rx) = mpsc::channel::<Value>(256);
    let mut latest_rx = g.st.firehose.watch_latest();
    let mut closing = g.st.firehose.watch_closing();
    let seen = *latest_rx.borrow_and_update();
    let mut conn = Conn {
        g: g.clone(),
        id: g.next_conn.fetch_add(1, Ordering::Relaxed),
        session: rand::random(),
        joined: std::collections::HashSet::new(),
        node_events: None,
        cbor,
        deflate,
        app_tx,
        app_tasks: HashMap::new(),
        did,
        operator,
        subs: HashMap::new(),
        seen,
        first_seen: seen,
        out,
        stop: Some(stop),
        sent,
        last_batch: None,
    };
    let cfg = g.cfg.clone();
    let _ = conn.send(text(json!({
        "type": "welcome", "protocol": PROTOCOL, "node": g.st.cfg.service_did, "session": conn.session.to_string(),
        "peerId": g.st.peer_id.get().map(|p| p.to_string()),
        "time": crate::node::firehose_time(), "seq": seen, "did": conn.did,
        "compression": if deflate { "deflate" } else { "none" },
        "limits": {"maxMessageBytes": cfg.max_message_bytes, "maxSubscriptions": cfg.max_subscriptions,
            "queue": cfg.queue, "maxMessagesPerSecond": cfg.max_messages_per_sec,
            "heartbeatSeconds": cfg.heartbeat.as_secs(), "timeoutSeconds": cfg.timeout.as_secs()},
    })));
    let mut heartbeat = tokio::time::interval(cfg.heartbeat);
    heartbeat.tick().await;
    let mut last_heard = Instant::now();
    let mut tick_rx = g.tick.subscribe();
    let mut window = (Instant::now(), 0u32);
    loop {
        let batch_only =
            !conn.subs.is_empty() && conn.subs.values().all(|s| matches!(s, Sub::Repo { batch: true, .. }));
        let flow = tokio::select! {
            m = stream.next() => match m {
                Some(Ok(m)) => {
                    last_heard = Instant::now();
                    if window.0.elapsed() >= Duration::from_secs(1) {
                        window = (Instant::now(), 0);
                    }
                    window.1 += 1;
                    if window.1 > cfg.max_messages_per_sec {
                        tracing::info!("websocket client flooded: closed");
                        conn.close(close(1008, format!("rate limit: at most {} messages per second", cfg.max_messages_per_sec)));
                        Flow::Stop
                    } else {
                        match m {
                            Message::Text(t) if t.len() > cfg.max_message_bytes => {
                                conn.close(close(1009, format!("message of {} bytes exceeds {}", t.len(), cfg.max_message_bytes)));
                                Flow::Stop
                            }
                            Message::Text(t) => conn.on_text(t.as_str()).await,
                            Message::Binary(b) if b.len() > cfg.max_message_bytes => {
                                conn.close(close(1009, format!("message of {} bytes exceeds {}", b.len(), cfg.max_message_bytes)));
                                Flow::Stop
                            }
                            // A DAG-CBOR message is the same message as its JSON form.
                            Message::Binary(b) => match dagcbor::decode_atproto(&b) {
                                Ok(v) => conn.on_text(&atjson::to_json(&v).to_string()).await,
                                Err(e) => {
                                    conn.close(close(1007, format!("malformed CBOR message: {e}")));
                                    Flow::Stop
                                }
                            },
                            Message::Close(_) => Flow::Stop,
                            Message::Ping(_) | Message::Pong(_) => Flow::Go,
                        }
                    }
                }
                Some(Err(e)) => {
                    // Oversized frames end here (refused by the WebSocket layer).
                    let msg = e.to_string();
                    let code = if msg.contains("too long") || msg.contains("Space limit") || msg.contains("size") { 1009 } else { 1002 };
                    conn.close(close(code, msg));
                    Flow::Stop
                }
                None => Flow::Stop,
            },
            changed = latest_rx.changed(), if !batch_only => match changed {
                Ok(()) => {
                    if conn.subs.is_empty() {
                        conn.seen = *latest_rx.borrow_and_update();
                        Flow::Go
                    } else {
                        let latest = *latest_rx.borrow_and_update();
                        conn.deliver(latest).await
                    }
                }
                Err(_) => Flow::Stop,
            },
            // Batch subscriptions trade a little latency for far fewer wake-ups and frames:
            // such sockets wake only on the gateway's tick (every BATCH_INTERVAL when events
            // arrived), together, over the same events.
            ticked = tick_rx.changed(), if batch_only => match ticked {
                Ok(()) => {
                    tick_rx.borrow_and_update();
                    let latest = *latest_rx.borrow_and_update();
                    conn.deliver(latest).await
                }
                Err(_) => Flow::Stop,
            },
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > cfg.timeout {
                    conn.close(close(1001, "heartbeat timeout: no message or pong received"));
                    Flow::Stop
                } else {
                    // Catch up on anything a burst left behind, then ping.
                    let latest = *latest_rx.borrow();
                    match conn.deliver(latest).await {
                        Flow::Go => conn.send(Message::Ping(Vec::new().into())),
                        stop => stop,
                    }
                }
            },
            ev = async {
                match conn.node_events.as_mut() {
                    Some(r) => r.recv().await,
                    None => std::future::pending().await,
                }
            } => conn.on_node_event(ev),
            Some(m) = app_rx.recv() => conn.send(text(m)),
            _ = closing.changed() => {
                conn.close(close(1001, "server shutting down"));
                Flow::Stop
            }
        };
        if let Flow::Stop = flow {
            break;
        }
    }
    for (_, task) in conn.app_tasks.drain() {
        task.abort();
    }
    // Presence expires with the connection.
    for topic in conn.joined.clone() {
        conn.leave(&topic);
    }
    conn.close(close(1000, "bye"));
    metrics.ws_subscriptions.fetch_sub(conn.subs.len() as i64, Ordering::Relaxed);
    metrics.ws_clients.fetch_sub(1, Ordering::Relaxed);
    drop(conn);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer).await;
}
