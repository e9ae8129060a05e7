//! `dev.ues.chat`: end-to-end encrypted messages between people's devices, in Matrix's wire
//! formats (Olm for pairs of devices, Megolm for groups) with vodozemac's implementation, so
//! that Matrix's own libraries (libolm, vodozemac) talk to it unchanged.
//!
//! Every account held here has devices: client devices (an app holding its own Olm account,
//! which publishes its keys with `uploadKeys`) and the node's built-in device (the node's Olm
//! account for the account, for apps that talk plain XRPC or REST to their own node). The node
//! keeps devices' published keys and hands them out (`queryKeys`, `claimKeys`), and carries
//! envelopes to devices' inboxes (`sendToDevice`, `getInbox`, `ackInbox`, the `/ws` topic
//! `chat`) without being able to read what a client device encrypted.
//!
//! Everything the chat keeps is sealed at rest (XChaCha20-Poly1305 under a key derived from the
//! node key) and none of it is derived from the event log: a rebuild leaves it alone.

mod canonical;
mod convo;
mod device;
mod inbox;
mod keys;
mod receive;
mod remote;
mod rest;
mod schema;

use std::collections::{HashMap, HashSet};
use std::num::NonZeroU32;
use std::sync::{Arc, OnceLock};

use axum::extract::Query;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use ues_protocol::gateway::Topic;
use ues_protocol::node::extract::XJson;
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, Transaction};
use ues_protocol::sync::repo::ipld::storage::{Error as StoreError, Migration};
use ues_protocol::sync::repo::seal::{SealError, SealKey};
use ues_protocol::sync::repo::syntax::Did;
use zeroize::Zeroizing;

use crate::App;
use device::Device;
pub use device::built_in_id;

/// The application's name.
pub const NAME: &str = "dev.ues.chat";

/// Devices watched on `/ws` at once at most (one channel per device, shared by its sockets).
const MAX_WATCHED: usize = 10_000;
/// Items queued per watched device (a socket that lags is told how many it missed).
const UPDATES: usize = 256;
/// Messages in one `sendToDevice` call at most (the lexicon says so too).
const MAX_MESSAGES: usize = 500;
/// Envelopes one account may have waiting for other nodes.
const MAX_OUTBOX: i64 = 10_000;

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Why a chat call failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChatError {
    /// Refused, with the status and error name the caller gets.
    #[error("{message}")]
    Refused { status: u16, name: &'static str, message: String },
    /// No session with a device, and no one-time key given to make one.
    #[error("no Olm session with {0}, and no one-time key to start one")]
    NoSession(String),
    /// The database failed.
    #[error("chat storage: {0}")]
    Store(#[from] StoreError),
    /// A sealed row did not open (another node key, or altered bytes).
    #[error("sealed chat state does not open: {0}")]
    Seal(#[from] SealError),
    /// A stored row is not what the chat wrote.
    #[error("chat state is corrupt: {0}")]
    Corrupt(String),
    /// Refused by the node's own checks (a caller, another node).
    #[error("{}", .0.message)]
    Node(NodeError),
    /// An object could not be made canonical to sign.
    #[error("{0}")]
    Json(#[from] canonical::SignedJsonError),
}

impl From<rusqlite::Error> for ChatError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Store(StoreError::from(e))
    }
}

impl ChatError {
    fn refused(status: u16, name: &'static str, message: String) -> Self {
        Self::Refused { status, name, message }
    }

    fn invalid(message: String) -> Self {
        Self::refused(400, "InvalidRequest", message)
    }

    /// A message that does not decrypt or a session that cannot be made.
    fn refused_crypto(message: String) -> Self {
        Self::refused(400, "DecryptionFailed", message)
    }
}

impl From<NodeError> for ChatError {
    fn from(e: NodeError) -> Self {
        Self::Node(e)
    }
}

impl From<ChatError> for NodeError {
    fn from(e: ChatError) -> Self {
        match e {
            ChatError::Refused { status, name, message } => {
                NodeError::new(StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST), name, message)
            }
            ChatError::Node(e) => e,
            ChatError::NoSession(_) => NodeError::bad("NoSession", e.to_string()),
            other => NodeError::internal(other),
        }
    }
}

/// Seals the chat's rows at rest (XChaCha20-Poly1305 under a key derived from the node key),
/// each bound to its table and row.
pub(crate) struct Sealer(SealKey);

impl Sealer {
    fn context(table: &str, parts: &[&str]) -> Vec<u8> {
        let mut c = format!("{NAME}/{table}").into_bytes();
        for p in parts {
            c.push(0);
            c.extend_from_slice(p.as_bytes());
        }
        c
    }

    fn seal(&self, table: &str, parts: &[&str], bytes: &[u8]) -> Vec<u8> {
        self.0.seal_many(&Self::context(table, parts), bytes)
    }

    fn open(&self, table: &str, parts: &[&str], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, ChatError> {
        Ok(self.0.open_many(&Self::context(table, parts), sealed)?)
    }
}

/// How the chat is set up (`[chat]` in `node.toml`).
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// Envelopes waiting for one device at most.
    pub max_inbox_items: i64,
    /// Their bytes at most.
    pub max_inbox_bytes: i64,
    /// Envelopes one account sends a minute.
    pub sends_per_minute: u32,
    /// Keys one account claims a minute.
    pub claims_per_minute: u32,
    /// Messages a group's outbound Megolm session encrypts before a new one replaces it.
    pub rotation_msgs: i64,
    /// How long a group's outbound session lives at most.
    pub rotation_period: std::time::Duration,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            max_inbox_items: 10_000,
            max_inbox_bytes: 64 << 20,
            sends_per_minute: 600,
            claims_per_minute: 60,
            rotation_msgs: 100,
            rotation_period: std::time::Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// The application.
pub struct Chat {
    cfg: ChatConfig,
    node: OnceLock<Arc<Node>>,
    sealer: OnceLock<Sealer>,
    /// The live inbox items of each watched device, by (DID, device id).
    live: parking_lot::Mutex<HashMap<(String, String), broadcast::Sender<Value>>>,
    claims: DefaultKeyedRateLimiter<String>,
    sends: DefaultKeyedRateLimiter<String>,
    /// Wakes the built-in devices' reader (envelopes arrived).
    poke: Arc<tokio::sync::Notify>,
    /// Wakes the outbox (envelopes queued for other nodes).
    outbox_poke: Arc<tokio::sync::Notify>,
}

impl Chat {
    /// The application, set up by `cfg`.
    pub fn new(cfg: ChatConfig) -> Self {
        let per_minute = |n: u32| Quota::per_minute(NonZeroU32::new(n.max(1)).expect("at least one"));
        Self {
            claims: RateLimiter::keyed(per_minute(cfg.claims_per_minute)),
            sends: RateLimiter::keyed(per_minute(cfg.sends_per_minute)),
            cfg,
            node: OnceLock::new(),
            sealer: OnceLock::new(),
            live: parking_lot::Mutex::default(),
            poke: Arc::default(),
            outbox_poke: Arc::default(),
        }
    }
}

/// The `/ws` topic `chat`: a signed-in socket's device's new inbox items.
struct ChatTopic {
    app: Arc<Chat>,
}

impl Topic for ChatTopic {
    fn subscribe(&self, params: &Value, did: Option<&str>) -> Result<broadcast::Receiver<Value>, (String, String)> {
        let did =
            did.ok_or_else(|| ("AuthRequired".to_string(), "the chat topic needs a signed-in socket".to_string()))?;
        let device = params.get("deviceId").and_then(Value::as_str).unwrap_or_default().to_string();
        let app = &self.app;
        let known = app.node().accounts.db().read(|c| inbox::has_device(c, did, &device));
        match known {
            Ok(true) => {}
            Ok(false) => return Err(("DeviceNotFound".into(), format!("you have no device {device:?}"))),
            Err(e) => return Err(("InternalServerError".into(), e.to_string())),
        }
        let mut live = app.live.lock();
        live.retain(|_, tx| tx.receiver_count() > 0);
        let key = (did.to_string(), device);
        if live.len() >= MAX_WATCHED && !live.contains_key(&key) {
            return Err(("TooManySubscriptions".into(), "too many devices watch their inbox on this node".into()));
        }
        Ok(live.entry(key).or_insert_with(|| broadcast::channel(UPDATES).0).subscribe())
    }
}

impl Chat {
    fn node(&self) -> &Arc<Node> {
        self.node.get().expect("the host attaches the node before any call")
    }

    fn sealer(&self) -> &Sealer {
        self.sealer.get().expect("the host attaches the node before any call")
    }

    /// This node's built-in device id.
    fn built_in(&self) -> String {
        built_in_id(&self.node().cfg.service_did)
    }

    /// Whether `did` is an account held here (and not deleted).
    fn hosted(&self, did: &str) -> Result<bool, NodeError> {
        crate::peer::hosted(self.node(), did)
    }

    /// Runs `f` in a write transaction after making sure `did`'s built-in device exists.
    fn write<T>(
        &self,
        did: &str,
        f: impl FnOnce(&Transaction<'_>, &Sealer) -> Result<T, ChatError>,
    ) -> Result<T, NodeError> {
        let sealer = self.sealer();
        let built_in = self.built_in();
        Ok(self.node().accounts.db().write(|tx| {
            Device::ensure(tx, sealer, did, &built_in)?;
            f(tx, sealer)
        })?)
    }

    /// Refuses (429 `OutboxFull`) when `did` has as many envelopes waiting for other nodes as
    /// it may, or would have with `more`.
    fn outbox_room(&self, did: &str, more: usize) -> Result<(), NodeError> {
        let held = self.node().accounts.db().read(|c| remote::queued(c, did))?;
        if held + more as i64 > MAX_OUTBOX || (more == 0 && held >= MAX_OUTBOX) {
            tracing::info!(app = NAME, %did, held, "an outbox is full: sending refused");
            return Err(NodeError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "OutboxFull",
                format!("{held} envelopes are waiting for other nodes; try again once they are delivered"),
            ));
        }
        Ok(())
    }

    /// For `members` held elsewhere: their devices fetched (at most a minute old) and a key
    /// claimed for each device `did`'s built-in device has no session with, by identity key.
    fn claim_elsewhere(
        &self,
        did: &str,
        members: &[String],
    ) -> Result<(HashSet<String>, HashMap<String, String>), ChatError> {
        let mut claimed = HashMap::new();
        let mut elsewhere = HashSet::new();
        for m in members {
            if self.hosted(m).map_err(|e| ChatError::Corrupt(e.message))? {
                continue;
            }
            elsewhere.insert(m.clone());
            if let Err(e) = remote::devices(self, did, m) {
                tracing::info!(app = NAME, member = %m, error = %e, "a member's devices could not be fetched");
                continue;
            }
            let devices: Vec<(String, String)> = self.node().accounts.db().read(|c| {
                c.prepare_cached("SELECT device_id, curve25519 FROM chat_remote_device WHERE did = ?1")?
                    .query_map([m], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<Vec<_>, _>>()
            })?;
            for (device, curve) in devices {
                if self.node().accounts.db().read(|c| Device::has_session(c, did, &curve))? {
                    continue;
                }
                match remote::claim(self, did, m, &device) {
                    Ok(k) => {
                        if let Some(key) = k["key"]["key"].as_str() {
                            claimed.insert(curve, key.to_string());
                        }
                    }
                    Err(e) => tracing::info!(app = NAME, member = %m, device = %device, error = %e, "no key claimed"),
                }
            }
        }
        Ok((elsewhere, claimed))
    }

    /// Tells the sockets watching these devices about their new items, and wakes the
    /// built-in devices' reader.
    fn push(&self, items: inbox::NewItems) {
        if items.is_empty() {
            return;
        }
        self.poke.notify_one();
        let live = self.live.lock();
        for (did, device, item) in items {
            if let Some(tx) = live.get(&(did, device)) {
                let _ = tx.send(json!({ "type": "inbox", "item": item }));
            }
        }
    }
}

/// The signed-in caller of a chat method: the account password's session, a privileged app
/// password, or an OAuth grant that names the method.
fn caller(node: &Node, headers: &HeaderMap, nsid: &str) -> Result<String, NodeError> {
    crate::peer::caller(node, headers, nsid)
}

/// The caller of a method other nodes call too: an account's session here, or a service-auth
/// token an account elsewhere signed for an account here (its audience, returned too). Checking
/// the token may resolve the issuer's DID: call it off the async workers.
fn caller_or_service(app: &Chat, headers: &HeaderMap, nsid: &str) -> Result<(String, Option<String>), NodeError> {
    crate::peer::caller_or_service(app.node(), headers, nsid, |aud| app.hosted(aud).unwrap_or(false))
}

fn param<'a>(p: &'a [(String, String)], name: &str) -> Option<&'a str> {
    p.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn field<'a>(body: &'a Value, name: &str) -> Result<&'a str, NodeError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| NodeError::invalid(format!("{name} is required")))
}

/// An item id (`cursor`, `upTo`).
fn item_id(s: &str, name: &str) -> Result<i64, NodeError> {
    s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| NodeError::invalid(format!("{name} is not an item id")))
}

type Answer = Result<Json<Value>, NodeError>;

async fn upload_keys(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let did = caller(app.node(), &headers, "dev.ues.chat.uploadKeys")?;
    blocking(move || {
        let built_in = app.built_in();
        app.write(&did, |tx, _| keys::upload(tx, &did, &built_in, &body)).map(Json)
    })
    .await
}

async fn query_keys(app: Arc<Chat>, headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let did = param(&p, "did").unwrap_or_default().to_string();
    blocking(move || {
        let (me, via) = caller_or_service(&app, &headers, "dev.ues.chat.queryKeys")?;
        if !app.hosted(&did)? {
            if via.is_some() {
                return Err(not_here(&did));
            }
            // An account elsewhere: its devices from its own node, checked here.
            return Ok(Json(remote::fetch_devices(&app, &me, &did)?));
        }
        if via.as_deref().is_some_and(|aud| aud != did) {
            return Err(NodeError::auth_required("the service token is for another account"));
        }
        app.write(&did, |_, _| Ok(()))?;
        Ok(Json(app.node().accounts.db().read(|c| keys::query(c, &did))?))
    })
    .await
}

fn not_here(did: &str) -> NodeError {
    NodeError::not_found("AccountNotFound", format!("{did} is not an account held here"))
}

async fn claim_keys(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let who = app.clone();
    let (me, via) = blocking(move || caller_or_service(&who, &headers, "dev.ues.chat.claimKeys")).await?;
    if app.claims.check_key(&me).is_err() {
        tracing::info!(app = NAME, did = %me, "claimKeys over its rate");
        return Err(NodeError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "RateLimitExceeded",
            format!("at most {} keys claimed a minute", app.cfg.claims_per_minute),
        ));
    }
    let did = field(&body, "did")?.to_string();
    let device_id = field(&body, "deviceId")?.to_string();
    blocking(move || {
        if !app.hosted(&did)? {
            if via.is_some() {
                return Err(not_here(&did));
            }
            return Ok(Json(remote::claim(&app, &me, &did, &device_id)?));
        }
        if via.as_deref().is_some_and(|aud| aud != did) {
            return Err(NodeError::auth_required("the service token is for another account"));
        }
        app.write(&did, |tx, sealer| keys::claim(tx, sealer, &did, &device_id)).map(Json)
    })
    .await
}

async fn send_to_device(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let messages =
        body.get("messages").and_then(Value::as_array).ok_or_else(|| NodeError::invalid("messages is required"))?;
    if messages.len() > MAX_MESSAGES {
        return Err(NodeError::invalid(format!("at most {MAX_MESSAGES} messages per call")));
    }
    let built_in = app.built_in();
    let mut envelopes = Vec::with_capacity(messages.len());
    for m in messages {
        let envelope = m.get("envelope").ok_or_else(|| NodeError::invalid("every message needs an envelope"))?;
        envelopes.push(inbox::Envelope {
            did: field(m, "did")?.to_string(),
            device_id: field(m, "deviceId")?.to_string(),
            sender_device: m.get("senderDevice").and_then(Value::as_str).unwrap_or(&built_in).to_string(),
            bytes: inbox::check_envelope(envelope)?,
        });
    }
    blocking(move || {
        let (me, via) = caller_or_service(&app, &headers, "dev.ues.chat.sendToDevice")?;
        let n = NonZeroU32::new(envelopes.len().max(1) as u32).expect("at least one");
        if !matches!(app.sends.check_key_n(&me, n), Ok(Ok(_))) {
            tracing::info!(app = NAME, did = %me, "sendToDevice over its rate");
            return Err(NodeError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RateLimitExceeded",
                format!("at most {} envelopes sent a minute", app.cfg.sends_per_minute),
            ));
        }
        let mut here = Vec::new();
        let mut elsewhere = Vec::new();
        for e in envelopes {
            if app.hosted(&e.did)? {
                if via.as_deref().is_some_and(|aud| aud != e.did) {
                    return Err(NodeError::auth_required("the service token is for another account"));
                }
                here.push(e);
            } else if via.is_some() {
                // Another node's account sends only to the account its token names.
                return Err(not_here(&e.did));
            } else {
                Did::new(&e.did).map_err(|_| NodeError::invalid(format!("{:?} is not a DID", e.did)))?;
                elsewhere.push(e);
            }
        }
        if via.is_some() {
            tracing::debug!(app = NAME, sender = %me, envelopes = here.len(), "envelopes from another node");
        }
        app.outbox_room(&me, elsewhere.len())?;
        let sealer = app.sealer();
        let (delivered, new) = app.node().accounts.db().write(|tx| {
            remote::queue(tx, sealer, &me, &elsewhere)?;
            if here.is_empty() {
                return Ok::<_, ChatError>((0, Vec::new()));
            }
            inbox::deliver(tx, sealer, &app.cfg, &me, &here)
        })?;
        app.push(new);
        if !elsewhere.is_empty() {
            app.outbox_poke.notify_one();
        }
        Ok(Json(json!({ "delivered": delivered, "queued": elsewhere.len() })))
    })
    .await
}

async fn get_inbox(app: Arc<Chat>, headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let did = caller(app.node(), &headers, "dev.ues.chat.getInbox")?;
    let device = param(&p, "deviceId").unwrap_or_default().to_string();
    let cursor = param(&p, "cursor").map(|c| item_id(c, "cursor")).transpose()?.unwrap_or(0);
    let limit = param(&p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(50).clamp(1, 100);
    blocking(move || {
        let sealer = app.sealer();
        Ok(Json(app.node().accounts.db().read(|c| inbox::list(c, sealer, &did, &device, cursor, limit))?))
    })
    .await
}

async fn ack_inbox(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let did = caller(app.node(), &headers, "dev.ues.chat.ackInbox")?;
    let device = field(&body, "deviceId")?.to_string();
    let up_to = item_id(field(&body, "upTo")?, "upTo")?;
    blocking(move || {
        let removed = app.node().accounts.db().write(|tx| inbox::ack(tx, &did, &device, up_to))?;
        Ok(Json(json!({ "removed": removed })))
    })
    .await
}

/// Runs `f` for the caller's built-in device, delivering what it sends in the same transaction.
/// `members` is who the call may send to (a conversation's members): the devices of those held
/// elsewhere are fetched (at most a minute old) and a key claimed for each device the built-in
/// device has no session with yet, before the transaction.
async fn as_built_in<T: Send + 'static>(
    app: Arc<Chat>,
    did: String,
    members: Vec<String>,
    f: impl FnOnce(&mut convo::Outgoing<'_>, &mut Device) -> Result<T, ChatError> + Send + 'static,
) -> Result<T, NodeError> {
    blocking(move || {
        app.outbox_room(&did, 0)?;
        let (elsewhere, claimed) = app.claim_elsewhere(&did, &members)?;
        let built_in = app.built_in();
        let (out, (items, queued)) = app.node().accounts.db().write(|tx| {
            let sealer = app.sealer();
            let mut me = Device::ensure(tx, sealer, &did, &built_in)?;
            let mut outgoing = convo::Outgoing::new(tx, sealer, &app.cfg).with_elsewhere(elsewhere, claimed);
            let out = f(&mut outgoing, &mut me)?;
            Ok::<_, ChatError>((out, outgoing.finish(&me)?))
        })?;
        app.push(items);
        if queued {
            app.outbox_poke.notify_one();
        }
        Ok(out)
    })
    .await
}

/// Checks every DID is an account held here or one whose node answers for its devices.
fn all_reachable(app: &Chat, me: &str, dids: &[String]) -> Result<(), NodeError> {
    for d in dids {
        if !app.hosted(d)? {
            remote::devices(app, me, d)?;
        }
    }
    Ok(())
}

/// The members of `did`'s conversation `convo_id` (none when it has no such conversation).
fn members_of(app: &Chat, did: &str, convo_id: &str) -> Result<Vec<String>, NodeError> {
    Ok(app.node().accounts.db().read(|c| convo::Convo::load(c, did, convo_id))?.map(|c| c.members).unwrap_or_default())
}

async fn create_convo(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let me = caller(app.node(), &headers, "dev.ues.chat.createConvo")?;
    let members: Vec<String> = body
        .get("members")
        .and_then(Value::as_array)
        .ok_or_else(|| NodeError::invalid("members is required"))?
        .iter()
        .map(|m| m.as_str().map(str::to_string).ok_or_else(|| NodeError::invalid("members are DIDs")))
        .collect::<Result<_, _>>()?;
    let name = body.get("name").and_then(Value::as_str).map(str::to_string);
    let check = app.clone();
    let asker = me.clone();
    let members = blocking(move || all_reachable(&check, &asker, &members).map(|()| members)).await?;
    let hint = members.clone();
    let c = as_built_in(app, me, hint, move |out, dev| convo::create(out, dev, &members, name)).await?;
    Ok(Json(json!({ "convoId": c.id })))
}

async fn list_convos(app: Arc<Chat>, headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let did = caller(app.node(), &headers, "dev.ues.chat.listConvos")?;
    let limit = param(&p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(50).clamp(1, 100);
    let skip = param(&p, "cursor").map(|c| item_id(c, "cursor")).transpose()?.unwrap_or(0);
    blocking(move || Ok(Json(app.node().accounts.db().read(|c| convo::list(c, &did, skip, limit))?))).await
}

async fn send_message(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let did = caller(app.node(), &headers, "dev.ues.chat.sendMessage")?;
    let convo_id = field(&body, "convoId")?.to_string();
    let text = field(&body, "text")?.to_string();
    let check = app.clone();
    let (who, convo) = (did.clone(), convo_id.clone());
    let members = blocking(move || members_of(&check, &who, &convo)).await?;
    let id = as_built_in(app, did, members, move |out, dev| convo::send(out, dev, &convo_id, &text)).await?;
    Ok(Json(json!({ "messageId": id.to_string() })))
}

async fn get_messages(app: Arc<Chat>, headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let did = caller(app.node(), &headers, "dev.ues.chat.getMessages")?;
    let convo_id = param(&p, "convoId").unwrap_or_default().to_string();
    let cursor = param(&p, "cursor").map(|c| item_id(c, "cursor")).transpose()?;
    let limit = param(&p, "limit").and_then(|l| l.parse::<i64>().ok()).unwrap_or(50).clamp(1, 100);
    blocking(move || {
        let sealer = app.sealer();
        Ok(Json(app.node().accounts.db().read(|c| convo::messages(c, sealer, &did, &convo_id, cursor, limit))?))
    })
    .await
}

async fn change_member(app: Arc<Chat>, headers: HeaderMap, body: Value, add: bool) -> Answer {
    let nsid = if add { "dev.ues.chat.addMember" } else { "dev.ues.chat.removeMember" };
    let me = caller(app.node(), &headers, nsid)?;
    let convo_id = field(&body, "convoId")?.to_string();
    let who = field(&body, "did")?.to_string();
    let check = app.clone();
    let (asker, convo, added) = (me.clone(), convo_id.clone(), who.clone());
    let members = blocking(move || {
        if add {
            all_reachable(&check, &asker, std::slice::from_ref(&added))?;
        }
        let mut m = members_of(&check, &asker, &convo)?;
        m.push(added);
        Ok(m)
    })
    .await?;
    let c =
        as_built_in(app, me, members, move |out, dev| convo::change_members(out, dev, &convo_id, &who, add)).await?;
    Ok(Json(json!({ "convoId": c.id, "members": c.members })))
}

async fn add_member(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    change_member(app, headers, body, true).await
}

async fn remove_member(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    change_member(app, headers, body, false).await
}

async fn leave_convo(app: Arc<Chat>, headers: HeaderMap, body: Value) -> Answer {
    let me = caller(app.node(), &headers, "dev.ues.chat.leaveConvo")?;
    let convo_id = field(&body, "convoId")?.to_string();
    let id = convo_id.clone();
    let check = app.clone();
    let (who, convo) = (me.clone(), convo_id.clone());
    let members = blocking(move || members_of(&check, &who, &convo)).await?;
    as_built_in(app, me, members, move |out, dev| convo::leave(out, dev, &id)).await?;
    Ok(Json(json!({ "convoId": convo_id })))
}

/// The built-in devices' reader: reads their inboxes whenever envelopes arrive (and every few
/// seconds), one envelope per transaction.
async fn read_inboxes(app: Arc<Chat>) {
    loop {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), app.poke.notified()).await;
        let worker = app.clone();
        let done = tokio::task::spawn_blocking(move || -> Result<(), ChatError> {
            let db = worker.node().accounts.db();
            let sealer = worker.sealer();
            // Bounded per round: at most 100 devices, 1,000 envelopes each.
            for (did, device) in db.read(|c| receive::pending(c, 100))? {
                for _ in 0..1000 {
                    // A sender elsewhere whose sending key is not known yet: its devices first.
                    if let Some((sender, key)) = db.read(|c| receive::peek(c, sealer, &did, &device))?
                        && !worker.hosted(&sender).unwrap_or(true)
                        && db.read(|c| receive::sender_ed25519(c, &sender, &key))?.is_none()
                        && let Err(e) = remote::fetch_devices(&worker, &did, &sender)
                    {
                        tracing::info!(app = NAME, %sender, error = %e, "a sender's devices could not be fetched");
                    }
                    if db.write(|tx| receive::next(tx, sealer, &did, &device))?.is_none() {
                        break;
                    }
                }
            }
            Ok(())
        })
        .await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(app = NAME, error = %e, "built-in devices' inboxes could not be read"),
            Err(e) => tracing::warn!(app = NAME, error = %e, "the inbox reader stopped"),
        }
    }
}

impl App for Chat {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&self, node: &Arc<Node>) {
        let _ = self.sealer.set(Sealer(node.accounts.derive_seal(format!("{NAME}/seal/v1").as_bytes())));
        let _ = self.node.set(node.clone());
    }

    fn migrations(&self) -> &'static [Migration] {
        schema::MIGRATIONS
    }

    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        macro_rules! procedure {
            ($f:ident) => {{
                let app = self.clone();
                post(move |headers: HeaderMap, XJson(body): XJson<Value>| $f(app, headers, body))
            }};
        }
        macro_rules! query {
            ($f:ident) => {{
                let app = self.clone();
                get(move |headers: HeaderMap, Query(p): Query<Vec<(String, String)>>| $f(app, headers, p))
            }};
        }
        Router::new()
            .route("/xrpc/dev.ues.chat.uploadKeys", procedure!(upload_keys))
            .route("/xrpc/dev.ues.chat.queryKeys", query!(query_keys))
            .route("/xrpc/dev.ues.chat.claimKeys", procedure!(claim_keys))
            .route("/xrpc/dev.ues.chat.sendToDevice", procedure!(send_to_device))
            .route("/xrpc/dev.ues.chat.getInbox", query!(get_inbox))
            .route("/xrpc/dev.ues.chat.ackInbox", procedure!(ack_inbox))
            .route("/xrpc/dev.ues.chat.createConvo", procedure!(create_convo))
            .route("/xrpc/dev.ues.chat.listConvos", query!(list_convos))
            .route("/xrpc/dev.ues.chat.sendMessage", procedure!(send_message))
            .route("/xrpc/dev.ues.chat.getMessages", query!(get_messages))
            .route("/xrpc/dev.ues.chat.addMember", procedure!(add_member))
            .route("/xrpc/dev.ues.chat.removeMember", procedure!(remove_member))
            .route("/xrpc/dev.ues.chat.leaveConvo", procedure!(leave_convo))
    }

    fn api(self: Arc<Self>, node: Arc<Node>) -> Router {
        rest::routes(self, node)
    }

    fn openapi(&self) -> Value {
        rest::openapi()
    }

    fn tasks(self: Arc<Self>, _node: Arc<Node>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![tokio::spawn(read_inboxes(self.clone())), tokio::spawn(remote::run(self))]
    }

    fn topics(self: Arc<Self>, _node: Arc<Node>) -> Vec<(String, Arc<dyn Topic>)> {
        vec![("chat".to_string(), Arc::new(ChatTopic { app: self }) as Arc<dyn Topic>)]
    }

    fn apply(&self, tx: &Transaction<'_>, events: &[ues_protocol::node::sequencer::LogEvent]) -> rusqlite::Result<()> {
        use ues_protocol::node::sequencer::Happened;
        for e in events {
            if let Happened::Account { status } = &e.what
                && status == "deleted"
            {
                for table in [
                    "chat_device",
                    "chat_otk",
                    "chat_olm_account",
                    "chat_olm_session",
                    "chat_inbox",
                    "chat_convo",
                    "chat_message",
                    "chat_megolm_out",
                    "chat_megolm_in",
                    "chat_megolm_seen",
                ] {
                    tx.execute(&format!("DELETE FROM {table} WHERE did = ?1"), [&e.did])?;
                }
                tx.execute("DELETE FROM chat_outbox WHERE sender = ?1", [&e.did])?;
            }
        }
        Ok(())
    }

    fn rebuild(&self, _tx: &Transaction<'_>) -> rusqlite::Result<()> {
        // Nothing here comes from the log: keys, sessions and inboxes stay as they are.
        Ok(())
    }
}

/// The chat's sending and reading paths on an in-memory database, for benchmarks: accounts
/// with built-in devices, conversations between them, messages sent and read as the node does
/// (sealing and SQLite included), without HTTP.
#[doc(hidden)]
pub mod lab {
    use ues_protocol::sync::repo::ipld::storage::rusqlite::Connection;
    use ues_protocol::sync::repo::seal::SealKey;

    use super::{ChatConfig, ChatError, Device, Sealer, convo, receive, schema};

    /// Accounts `did:plc:lab<i>` on one in-memory database.
    pub struct Lab {
        conn: Connection,
        sealer: Sealer,
        cfg: ChatConfig,
    }

    /// The lab's built-in device id.
    const DEVICE: &str = "UESLAB";

    fn did(i: usize) -> String {
        format!("did:plc:lab{i}")
    }

    impl Lab {
        /// `accounts` accounts, each with its built-in device.
        pub fn new(accounts: usize) -> Result<Self, String> {
            Self::make(accounts).map_err(|e| e.to_string())
        }

        fn make(accounts: usize) -> Result<Self, ChatError> {
            let mut conn = Connection::open_in_memory()?;
            for m in schema::MIGRATIONS {
                conn.execute_batch(m.sql)?;
            }
            let sealer = Sealer(SealKey::generate().derive(b"lab"));
            let tx = conn.transaction()?;
            for i in 0..accounts {
                Device::ensure(&tx, &sealer, &did(i), DEVICE)?;
            }
            tx.commit()?;
            let cfg = ChatConfig { max_inbox_items: i64::MAX, max_inbox_bytes: i64::MAX, ..ChatConfig::default() };
            Ok(Self { conn, sealer, cfg })
        }

        fn as_device<T>(
            &mut self,
            i: usize,
            f: impl FnOnce(&mut convo::Outgoing<'_>, &mut Device) -> Result<T, ChatError>,
        ) -> Result<T, String> {
            let run = || -> Result<T, ChatError> {
                let tx = self.conn.transaction()?;
                let out = {
                    let mut me =
                        Device::load(&tx, &did(i))?.ok_or_else(|| ChatError::Corrupt(format!("no account {i}")))?;
                    let mut outgoing = convo::Outgoing::new(&tx, &self.sealer, &self.cfg);
                    let out = f(&mut outgoing, &mut me)?;
                    outgoing.finish(&me)?;
                    out
                };
                tx.commit()?;
                Ok(out)
            };
            run().map_err(|e| e.to_string())
        }

        /// A conversation account `creator` makes with `members`.
        pub fn create(&mut self, creator: usize, members: &[usize]) -> Result<String, String> {
            let members: Vec<String> = members.iter().map(|m| did(*m)).collect();
            self.as_device(creator, |out, me| convo::create(out, me, &members, None)).map(|c| c.id)
        }

        /// Account `from`'s built-in device sends `text` to the conversation.
        pub fn send(&mut self, from: usize, convo_id: &str, text: &str) -> Result<(), String> {
            self.as_device(from, |out, me| convo::send(out, me, convo_id, text)).map(|_| ())
        }

        /// Every built-in device reads its inbox; how many envelopes were read.
        pub fn read_all(&mut self) -> Result<usize, String> {
            self.read().map_err(|e| e.to_string())
        }

        fn read(&mut self) -> Result<usize, ChatError> {
            let mut n = 0;
            loop {
                let pending = receive::pending(&self.conn, 1000)?;
                if pending.is_empty() {
                    return Ok(n);
                }
                for (did, device) in pending {
                    loop {
                        let tx = self.conn.transaction()?;
                        let read = receive::next(&tx, &self.sealer, &did, &device)?;
                        tx.commit()?;
                        if read.is_none() {
                            break;
                        }
                        n += 1;
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn texts(lab: &Lab, i: usize, convo: &str) -> Vec<String> {
            let mut stmt = lab
                .conn
                .prepare("SELECT id, body FROM chat_message WHERE did = ?1 AND convo_id = ?2 ORDER BY id")
                .unwrap();
            let rows: Vec<(i64, Vec<u8>)> = stmt
                .query_map([did(i), convo.to_string()], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            rows.into_iter()
                .map(|(id, sealed)| {
                    let b = lab.sealer.open("message", &[&did(i), convo, &id.to_string()], &sealed).unwrap();
                    String::from_utf8(b.to_vec()).unwrap()
                })
                .collect()
        }

        /// Moves the inbox envelopes of account `i` around: the one at `last` (0-based, as they
        /// wait) after all the others, and the one at `drop` gone, as if lost.
        fn reorder(lab: &Lab, i: usize, last: usize, drop: usize) {
            let ids: Vec<i64> = lab
                .conn
                .prepare("SELECT id FROM chat_inbox WHERE did = ?1 AND acked_at IS NULL ORDER BY id")
                .unwrap()
                .query_map([did(i)], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            lab.conn.execute("DELETE FROM chat_inbox WHERE id = ?1", [ids[drop]]).unwrap();
            lab.conn.execute("UPDATE chat_inbox SET id = id + 100000 WHERE id = ?1", [ids[last]]).unwrap();
        }

        #[test]
        fn messages_out_of_order_and_with_gaps_decrypt_in_pairs_and_groups() {
            // A pair: Olm. Three messages; the second is lost, the third read before the first.
            let mut lab = Lab::new(2).unwrap();
            let dm = lab.create(0, &[1]).unwrap();
            lab.read_all().unwrap();
            for t in ["one", "two", "three"] {
                lab.send(0, &dm, t).unwrap();
            }
            reorder(&lab, 1, 0, 1);
            assert_eq!(lab.read_all().unwrap(), 2);
            assert_eq!(texts(&lab, 1, &dm), ["three", "one"]);

            // A group of three: Megolm. The first message (with the room key before it) read
            // last, one in the middle lost.
            let mut lab = Lab::new(3).unwrap();
            let group = lab.create(0, &[1, 2]).unwrap();
            lab.read_all().unwrap();
            for t in ["g1", "g2", "g3", "g4"] {
                lab.send(0, &group, t).unwrap();
            }
            // Account 1's inbox: the room key, g1, g2, g3, g4.
            reorder(&lab, 1, 1, 3);
            lab.read_all().unwrap();
            assert_eq!(texts(&lab, 1, &group), ["g2", "g4", "g1"]);
            assert_eq!(texts(&lab, 2, &group), ["g1", "g2", "g3", "g4"]);
        }
    }
}
