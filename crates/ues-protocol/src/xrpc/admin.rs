//! Administration over XRPC: `com.atproto.admin.*` (account info, handle, password and email
//! changes, takedowns, deletion) and `dev.ues.admin.listReports`, behind HTTP Basic auth with
//! the user `admin` and the node's admin password, as the reference PDS does. With no admin
//! password configured every admin call is refused.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::accounts::Account;
use ues_sync::repo::ipld::storage::Error as StoreError;
use ues_sync::repo::ipld::storage::rusqlite::params;
use ues_sync::repo::syntax::{Did, Handle};

use crate::node::extract::{XJson, XQuery};
use crate::node::peers::{Command, PeerService};
use crate::node::{Node, NodeError, blocking};

type Res = Result<Json<Value>, NodeError>;

/// Checks the operator's credentials (HTTP Basic, user `admin`).
fn admin(st: &Node, headers: &HeaderMap) -> Result<(), NodeError> {
    st.operator(headers)
}

fn did(s: &str) -> Result<Did, NodeError> {
    Did::new(s).map_err(|e| NodeError::invalid(e.to_string()))
}

fn account(st: &Node, d: &Did) -> Result<Account, NodeError> {
    st.accounts.get(d)?.ok_or_else(|| NodeError::bad("AccountNotFound", "Account not found"))
}

/// `com.atproto.admin.defs#accountView`.
fn account_view(st: &Node, a: &Account) -> Result<Value, NodeError> {
    let created_ms = st.accounts.created_at(&a.did)?.unwrap_or_default();
    let email = crate::node::credentials::email(st.accounts.db(), &a.did).map_err(NodeError::internal)?;
    let mut v = json!({ "did": a.did.as_str(), "handle": a.handle.as_str(), "indexedAt": iso(created_ms) });
    if let Some(e) = email {
        v["email"] = Value::String(e);
    }
    if let Some(at) = crate::node::tokens::email_confirmed_at(st.accounts.db(), &a.did)? {
        v["emailConfirmedAt"] = Value::String(at);
    }
    Ok(v)
}

fn iso(ms: i64) -> String {
    crate::node::sequencer::iso_from_millis(ms)
}

#[derive(Deserialize)]
pub(crate) struct DidParam {
    did: String,
}

pub(crate) async fn get_account_info(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<DidParam>,
) -> Res {
    admin(&st, &headers)?;
    blocking(move || Ok(Json(account_view(&st, &account(&st, &did(&q.did)?)?)?))).await
}

pub(crate) async fn get_account_infos(State(st): State<Arc<Node>>, headers: HeaderMap, uri: axum::http::Uri) -> Res {
    admin(&st, &headers)?;
    blocking(move || {
        let mut infos = Vec::new();
        for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()).take(500) {
            if k == "dids"
                && let Some(a) = st.accounts.get(&did(&v)?)?
            {
                infos.push(account_view(&st, &a)?);
            }
        }
        Ok(Json(json!({ "infos": infos })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct UpdateHandle {
    did: String,
    handle: String,
}

pub(crate) async fn update_account_handle(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdateHandle>,
) -> Result<StatusCode, NodeError> {
    admin(&st, &headers)?;
    blocking(move || {
        let d = did(&b.did)?;
        account(&st, &d)?;
        let handle = Handle::new(&b.handle).map_err(|e| NodeError::bad("InvalidHandle", e.to_string()))?.normalized();
        super::server::change_handle(&st, &d, &handle)?;
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct UpdatePassword {
    did: String,
    password: String,
}

/// Sets the password and ends every session (refresh tokens) of the account.
pub(crate) async fn update_account_password(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdatePassword>,
) -> Result<StatusCode, NodeError> {
    admin(&st, &headers)?;
    blocking(move || {
        let d = did(&b.did)?;
        account(&st, &d)?;
        let hash = crate::node::hash_password(&b.password);
        crate::node::credentials::set_password_hash(st.accounts.db(), &d, &hash).map_err(NodeError::internal)?;
        crate::node::auth::revoke_sessions(&st, &d)?;
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct UpdateEmail {
    account: String,
    email: String,
}

pub(crate) async fn update_account_email(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdateEmail>,
) -> Result<StatusCode, NodeError> {
    admin(&st, &headers)?;
    blocking(move || {
        let a = st.find_repo(&b.account)?;
        let email = super::email::valid_email(&b.email)?;
        let set = crate::node::credentials::set_email(st.accounts.db(), &a.did, &email).map_err(NodeError::internal)?;
        if !set {
            return Err(NodeError::conflict("InvalidRequest", "Email already taken"));
        }
        Ok(StatusCode::OK)
    })
    .await
}

/// `{"$type": "com.atproto.admin.defs#repoRef", "did"}`: the only subject this node takes
/// down (record and blob takedowns are refused with a clear error).
fn repo_subject(subject: &Value) -> Result<Did, NodeError> {
    match subject.get("$type").and_then(Value::as_str) {
        Some("com.atproto.admin.defs#repoRef") | None if subject.get("did").is_some() => {
            did(subject["did"].as_str().unwrap_or_default())
        }
        _ => Err(NodeError::invalid("Only account subjects (com.atproto.admin.defs#repoRef) are supported")),
    }
}

fn subject_status(a: &Account) -> Value {
    json!({
        "subject": { "$type": "com.atproto.admin.defs#repoRef", "did": a.did.as_str() },
        "takedown": { "applied": a.status == "takendown" },
        "deactivated": { "applied": a.status == "deactivated" },
    })
}

#[derive(Deserialize)]
pub(crate) struct SubjectStatus {
    did: Option<String>,
}

pub(crate) async fn get_subject_status(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<SubjectStatus>,
) -> Res {
    admin(&st, &headers)?;
    blocking(move || {
        let d = q.did.as_deref().ok_or_else(|| NodeError::invalid("Only account subjects (did) are supported"))?;
        Ok(Json(subject_status(&account(&st, &did(d)?)?)))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct UpdateSubject {
    subject: Value,
    takedown: Option<Value>,
}

/// Takes an account down (its repository stops being served, its sessions end, `#account`
/// with status `takendown` is emitted) or restores it.
pub(crate) async fn update_subject_status(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdateSubject>,
) -> Res {
    admin(&st, &headers)?;
    blocking(move || {
        let d = repo_subject(&b.subject)?;
        let a = account(&st, &d)?;
        if let Some(applied) = b.takedown.as_ref().and_then(|t| t.get("applied")).and_then(Value::as_bool) {
            let status = if applied { "takendown" } else { "active" };
            if a.status != status && (applied || a.status == "takendown") {
                st.accounts.set_status(&d, status)?;
                st.firehose.notify();
                if applied {
                    crate::node::auth::revoke_sessions(&st, &d)?;
                }
            }
        }
        let out = subject_status(&account(&st, &d)?);
        Ok(Json(json!({ "subject": out["subject"], "takedown": out["takedown"] })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct DeleteAccount {
    did: String,
}

pub(crate) async fn delete_account(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<DeleteAccount>,
) -> Result<StatusCode, NodeError> {
    admin(&st, &headers)?;
    blocking(move || {
        let d = did(&b.did)?;
        account(&st, &d)?;
        remove_account(&st, &d)?;
        tracing::info!(did = %d, "account deleted by the administrator");
        Ok(StatusCode::OK)
    })
    .await
}

/// Deletes an account for good: sessions, repository and blobs, credentials, emailed tokens,
/// preferences; the `#account` event tells the network.
pub(crate) fn remove_account(st: &Node, d: &Did) -> Result<(), NodeError> {
    crate::node::auth::revoke_sessions(st, d)?;
    st.accounts.delete(d)?;
    crate::node::credentials::forget(st.accounts.db(), d).map_err(NodeError::internal)?;
    crate::node::tokens::forget(st.accounts.db(), d)?;
    st.accounts
        .db()
        .write(|tx| {
            tx.execute("DELETE FROM preferences WHERE did = ?1", [d.as_str()])?;
            Ok::<_, StoreError>(())
        })
        .map_err(NodeError::internal)?;
    st.firehose.notify();
    Ok(())
}

#[derive(Deserialize)]
pub(crate) struct SearchAccounts {
    email: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

/// `admin.searchAccounts`: accounts by email prefix, or every account, by DID.
pub(crate) async fn search_accounts(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<SearchAccounts>,
) -> Res {
    admin(&st, &headers)?;
    let limit = q.limit.unwrap_or(50).clamp(1, 100);
    blocking(move || {
        let accounts: Vec<Account> = match q.email.as_deref().filter(|e| !e.is_empty()) {
            Some(prefix) => {
                let dids = crate::node::credentials::dids_by_email_prefix(
                    st.accounts.db(),
                    &prefix.to_ascii_lowercase(),
                    q.cursor.as_deref(),
                    limit,
                )
                .map_err(NodeError::internal)?;
                let mut found = Vec::with_capacity(dids.len());
                for d in dids {
                    if let Some(a) = st.accounts.get(&did(&d)?)? {
                        found.push(a);
                    }
                }
                found
            }
            None => st.accounts.list(q.cursor.as_deref(), limit)?,
        };
        let mut out = json!({
            "accounts": accounts.iter().map(|a| account_view(&st, a)).collect::<Result<Vec<_>, _>>()?,
        });
        if accounts.len() == limit
            && let Some(last) = accounts.last()
        {
            out["cursor"] = json!(last.did.as_str());
        }
        Ok(Json(out))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestCrawl {
    relay: String,
}

/// `dev.ues.admin.requestCrawl`: asks one relay to crawl this node now.
pub(crate) async fn request_crawl(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<RequestCrawl>,
) -> Res {
    admin(&st, &headers)?;
    if !(b.relay.starts_with("https://") || b.relay.starts_with("http://")) || b.relay.len() > 2048 {
        return Err(NodeError::invalid("relay must be an http(s) URL"));
    }
    blocking(move || {
        let status = crate::node::tasks::request_crawl_one(&st, &b.relay)
            .map_err(|e| NodeError::new(StatusCode::BAD_GATEWAY, "UpstreamFailure", e))?;
        Ok(Json(json!({ "relay": b.relay, "status": status, "accepted": (200..300).contains(&status) })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ImportRepo {
    did: String,
}

/// `dev.ues.admin.importRepo`: replaces a hosted account's repository with a CAR signed by its
/// key here (restoring an export), verified end to end before anything is stored.
pub(crate) async fn import_repo(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<ImportRepo>,
    body: axum::body::Bytes,
) -> Res {
    admin(&st, &headers)?;
    blocking(move || {
        let d = did(&q.did)?;
        account(&st, &d)?;
        let head = st.accounts.import_repo(&d, &body[..]).map_err(|e| match e {
            ues_sync::repo::accounts::AccountError::Repo(e) => {
                NodeError::invalid(format!("Could not import repository: {e}"))
            }
            e => e.into(),
        })?;
        st.firehose.notify();
        tracing::info!(did = %d, bytes = body.len(), "repository imported by the operator");
        Ok(Json(json!({ "did": d.as_str(), "head": head.to_string(), "bytes": body.len() })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Backup {
    dir: String,
}

/// `dev.ues.admin.backup`: a consistent copy of the node's storage, keys and configuration in
/// `dir` (an absolute path on the node's machine that does not exist yet), taken while the node
/// serves writes.
pub(crate) async fn backup(State(st): State<Arc<Node>>, headers: HeaderMap, XJson(b): XJson<Backup>) -> Res {
    admin(&st, &headers)?;
    let dir = std::path::PathBuf::from(&b.dir);
    if !dir.is_absolute() {
        return Err(NodeError::invalid("dir must be an absolute path"));
    }
    if dir.exists() {
        return Err(NodeError::invalid(format!("{} exists: a backup goes into a new directory", dir.display())));
    }
    let Some(backup) = st.storage_ops.get().cloned() else {
        return Err(NodeError::new(StatusCode::NOT_IMPLEMENTED, "MethodNotImplemented", "backups are not available"));
    };
    blocking(move || {
        let started = std::time::Instant::now();
        let mut out = backup.backup(&dir).map_err(|e| {
            tracing::error!(dir = %dir.display(), error = %e, "backup failed");
            NodeError::new(StatusCode::INTERNAL_SERVER_ERROR, "BackupFailed", e)
        })?;
        out["ms"] = json!(started.elapsed().as_millis() as u64);
        tracing::info!(dir = %dir.display(), ms = started.elapsed().as_millis() as u64, "backup taken");
        Ok(Json(out))
    })
    .await
}

/// `dev.ues.admin.getStatus`: the running node at one look (`ues status`).
pub(crate) async fn get_status(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    admin(&st, &headers)?;
    blocking(move || {
        let mut storage = serde_json::Map::new();
        for g in st.storage_ops.get().map(|o| o.gauges()).unwrap_or_default() {
            let labels: Vec<String> = g.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let key =
                if labels.is_empty() { g.name.to_string() } else { format!("{}{{{}}}", g.name, labels.join(",")) };
            storage.insert(key, json!(g.value));
        }
        let peers = st.replication.get().map(|r| {
            let s = r.status();
            json!({
                "peerId": st.peer_id.get().map(|p| p.to_string()),
                "connected": s.connected.len(),
                "replicatedAccounts": r.tracked().len(),
                "blobsPending": s.blobs.pending.values().sum::<u64>(),
                "bans": s.bans,
            })
        });
        let now = std::time::SystemTime::now();
        let mut certificates: Vec<Value> = st
            .certificates
            .get()
            .map(|c| c())
            .unwrap_or_default()
            .into_iter()
            .map(|(name, expires)| {
                let secs = expires.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let left = match expires.duration_since(now) {
                    Ok(d) => (d.as_secs() / 86_400) as i64,
                    Err(e) => -((e.duration().as_secs() / 86_400) as i64) - 1,
                };
                json!({ "name": name, "expires": crate::node::sequencer::iso_from_millis(secs as i64 * 1000), "daysLeft": left })
            })
            .collect();
        certificates.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        let objects = st.blobs.objects().map(|o| o.describe());
        Ok(Json(json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptimeSecs": st.started.elapsed().as_secs(),
            "publicUrl": st.cfg.public_url,
            "accounts": st.accounts.count()?,
            "firehoseSeq": *st.firehose.latest(),
            "firehoseSubscribers": st.metrics.subscribers.load(std::sync::atomic::Ordering::Relaxed),
            "peers": peers,
            "storage": storage,
            "blobs": { "newBlobsTo": st.blobs.write_place().to_string(), "objectStore": objects },
            "certificates": certificates,
        })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct ListReports {
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `dev.ues.admin.listReports`: reports filed with `createReport`, newest first.
pub(crate) async fn list_reports(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<ListReports>,
) -> Res {
    admin(&st, &headers)?;
    blocking(move || {
        let limit = q.limit.unwrap_or(50);
        let before: i64 = match q.cursor.as_deref() {
            None => i64::MAX,
            Some(c) => c.parse().map_err(|_| NodeError::invalid("malformed cursor"))?,
        };
        let rows: Vec<Value> = st
            .accounts
            .db()
            .read(|c| {
                let mut s = c.prepare_cached(
                    "SELECT id, reason_type, reason, subject, reported_by, created_at FROM report
                     WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
                )?;
                let rows = s.query_map(params![before, limit], |r| {
                    let subject: String = r.get(3)?;
                    let mut v = json!({
                        "id": r.get::<_, i64>(0)?,
                        "reasonType": r.get::<_, String>(1)?,
                        "subject": serde_json::from_str::<Value>(&subject).unwrap_or(Value::Null),
                        "reportedBy": r.get::<_, String>(4)?,
                        "createdAt": r.get::<_, String>(5)?,
                    });
                    if let Some(reason) = r.get::<_, Option<String>>(2)? {
                        v["reason"] = Value::String(reason);
                    }
                    Ok(v)
                })?;
                rows.collect::<Result<Vec<_>, _>>()
            })
            .map_err(NodeError::internal)?;
        let cursor = (rows.len() as i64 == limit).then(|| rows.last().map(|r| r["id"].to_string())).flatten();
        let mut out = json!({ "reports": rows });
        if let Some(c) = cursor {
            out["cursor"] = Value::String(c);
        }
        Ok(Json(out))
    })
    .await
}

// Peer-to-peer administration (`dev.ues.admin.*`): peers, devices, replication.

fn replication(st: &Node) -> Result<&Arc<dyn PeerService>, NodeError> {
    st.replication.get().ok_or_else(|| {
        NodeError::new(
            StatusCode::NOT_IMPLEMENTED,
            "MethodNotImplemented",
            "the peer-to-peer service is off ([p2p] enabled = false)",
        )
    })
}

fn peer_id(s: &str) -> Result<libp2p::PeerId, NodeError> {
    s.parse().map_err(|e| NodeError::invalid(format!("invalid peer id {s:?}: {e}")))
}

fn multiaddr(s: &str) -> Result<libp2p::Multiaddr, NodeError> {
    s.parse().map_err(|e| NodeError::invalid(format!("invalid multiaddr {s:?}: {e}")))
}

/// Runs a swarm command and waits (at most 30 s) for its outcome.
async fn p2p_command(
    st: &Node,
    make: impl FnOnce(tokio::sync::oneshot::Sender<Result<(), String>>) -> Command,
) -> Result<(), NodeError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    replication(st)?
        .command(make(tx))
        .map_err(|e| NodeError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", e))?;
    match tokio::time::timeout(std::time::Duration::from_secs(30), rx).await {
        Ok(Ok(Ok(()))) => Ok(()),
        Ok(Ok(Err(e))) => Err(NodeError::new(StatusCode::BAD_GATEWAY, "PeerFailed", e)),
        Ok(Err(_)) => {
            Err(NodeError::new(StatusCode::SERVICE_UNAVAILABLE, "Unavailable", "the peer-to-peer service stopped"))
        }
        Err(_) => {
            Err(NodeError::new(StatusCode::GATEWAY_TIMEOUT, "PeerTimeout", "no answer from the peer within 30 s"))
        }
    }
}

/// `dev.ues.admin.listPeers`.
pub(crate) async fn list_peers(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    admin(&st, &headers)?;
    let r = replication(&st)?;
    let s = r.status();
    Ok(Json(json!({
        "peerId": st.peer_id.get().map(|p| p.to_string()),
        "listening": s.listening,
        "connected": s
            .connected
            .iter()
            .map(|(p, c)| json!({"peerId": p, "addr": c.addr, "agent": c.agent, "rttMs": c.rtt_ms}))
            .collect::<Vec<_>>(),
        "sessions": s.sessions,
        "liveReceived": s.live_received,
        "headsReceived": s.heads_received,
        "bans": s.bans,
        "remoteCommits": s.remote_commits,
        "nat": s.nat,
        "routingTable": s.routing_table,
        "mdnsDiscovered": s.mdns_discovered,
    })))
}

#[derive(Deserialize)]
pub(crate) struct ConnectPeer {
    addr: String,
}

/// `dev.ues.admin.connectPeer`.
pub(crate) async fn connect_peer(State(st): State<Arc<Node>>, headers: HeaderMap, XJson(b): XJson<ConnectPeer>) -> Res {
    admin(&st, &headers)?;
    let addr = multiaddr(&b.addr)?;
    p2p_command(&st, |tx| Command::Dial(addr, tx)).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct AuthorizeDevice {
    did: String,
    peer_id: String,
    #[serde(default)]
    revoke: bool,
}

/// `dev.ues.admin.authorizeDevice`.
pub(crate) async fn authorize_device(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<AuthorizeDevice>,
) -> Res {
    admin(&st, &headers)?;
    let d = did(&b.did)?;
    let peer = peer_id(&b.peer_id)?;
    blocking(move || {
        account(&st, &d)?;
        let rep = replication(&st)?;
        rep.authorize_peer(&st.accounts, &d, &peer, b.revoke).map_err(NodeError::invalid)?;
        tracing::info!(did = %d, %peer, revoke = b.revoke, "device authorization signed");
        let rotated = b.revoke && rotate_after_revocation(&st, rep.as_ref(), &d)?;
        let key = st.accounts.signing_key(&d)?.public().did_key();
        Ok(Json(json!({ "keyRotated": rotated, "signingKey": key })))
    })
    .await
}

/// After a revocation, moves the account to a new signing key, so that the key the revoked
/// device holds signs nothing anyone accepts: a PLC operation stating the new key, signed by
/// the node's rotation key (submitted to the directory first, when one is configured: if it
/// refuses, nothing changes), then the rotation to the devices that stay. Returns whether the
/// key rotated: not on a node that holds none of the DID's rotation keys (another device of
/// the account), which says so in its log.
fn rotate_after_revocation(st: &Node, rep: &dyn PeerService, did: &Did) -> Result<bool, NodeError> {
    use ues_sync::repo::crypto::{KeyType, Keypair};
    use ues_sync::repo::plc::{Genesis, PlcClient, operation_cid};
    let outgoing = st.accounts.signing_key(did)?;
    let new = Keypair::generate(KeyType::K256);
    let plc = match st.kv.get(format!("plc/{did}").as_bytes()).map_err(NodeError::internal)? {
        None => None,
        Some(last) => {
            let last: Value = serde_json::from_slice(&last).map_err(NodeError::internal)?;
            let prev = operation_cid(&last).map_err(NodeError::internal)?;
            let (rotation_keys, signer) = match super::server::next_rotation_keys(st, &last, &outgoing) {
                Ok(k) => k,
                Err(e) => {
                    tracing::warn!(%did, error = %e.message, "revoked without rotating the signing key");
                    return Ok(false);
                }
            };
            let state = Genesis {
                rotation_keys,
                signing_key: new.public().did_key(),
                handle: account(st, did)?.handle.to_string(),
                pds_endpoint: st.cfg.public_url.clone(),
            };
            let op = state.update(&prev.to_string(), &signer).map_err(NodeError::internal)?;
            if let Some(url) = &st.cfg.plc_url {
                PlcClient::new(url).submit(did.as_str(), &op).map_err(|e| {
                    NodeError::bad("UnresolvableDid", format!("the PLC directory refused the new key: {e}"))
                })?;
            }
            Some(op.to_string())
        }
    };
    rep.rotate(&st.accounts, did, &outgoing, &new, plc).map_err(NodeError::invalid)?;
    st.firehose.notify();
    tracing::info!(%did, key = %new.public().did_key(), "signing key rotated after a revocation");
    Ok(true)
}

#[derive(Deserialize)]
pub(crate) struct Replicate {
    did: String,
    from: String,
    addr: Option<String>,
}

/// `dev.ues.admin.replicate`.
pub(crate) async fn replicate(State(st): State<Arc<Node>>, headers: HeaderMap, XJson(b): XJson<Replicate>) -> Res {
    admin(&st, &headers)?;
    let d = did(&b.did)?;
    let from = peer_id(&b.from)?;
    let addr = b.addr.as_deref().map(multiaddr).transpose()?;
    p2p_command(&st, |reply| Command::Replicate { did: d, from, addr, reply }).await?;
    Ok(Json(json!({})))
}

/// `dev.ues.admin.getReplication`.
pub(crate) async fn get_replication(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    admin(&st, &headers)?;
    blocking(move || Ok(Json(replication(&st)?.describe(&st.accounts)))).await
}
