//! `dev.ues.credential`: the node issues W3C Verifiable Credentials for the accounts it holds,
//! verifies anyone's, and publishes revocation as Bitstring Status Lists.
//!
//! Each account gets an Ed25519 key on its first `issue` (sealed at rest under a key derived
//! from the node key), whose `did:key` signs its credentials and is published in the account's
//! repository as its `dev.ues.credential.issuer` record (key `self`), which ties the did:key
//! to the account for anyone who reads the repository. (did:plc documents name only P-256 and
//! secp256k1 keys and no `assertionMethod`, so standard verifiers could not use them.)
//!
//! Issued credentials are kept here, not in the repository: they name their subjects.

use std::io::Read;
use std::sync::{Arc, OnceLock};

use axum::extract::Query;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use axum::{Json, Router};
use ed25519_dalek::SigningKey;
use futures::future::BoxFuture;
use serde_json::{Value, json};
use ues_protocol::node::extract::XJson;
use ues_protocol::node::{Node, NodeError, blocking};
use ues_protocol::sync::repo::ipld::storage::rusqlite::{self, OptionalExtension, Transaction, params};
use ues_protocol::sync::repo::ipld::storage::{Error as StoreError, Migration};
use ues_protocol::sync::repo::repo::Write;
use ues_protocol::sync::repo::seal::SealKey;
use ues_protocol::sync::repo::syntax::{Nsid, RecordKey};

use super::{CredentialDraft, CredentialError, DidKey, StatusList, build_credential, sign, status_entry};
use crate::App;
use crate::mirror::{self, Answer, Input, Mirrored, Route};

/// The application's name.
pub const NAME: &str = "dev.ues.credential";

/// The issuer record's collection.
const ISSUER: &str = "dev.ues.credential.issuer";
/// A status list read from another node at most.
const MAX_REMOTE_LIST: u64 = 1 << 20;
/// A status list inflated at most.
const MAX_INFLATED: usize = 16 << 20;
/// Types a credential names at most (besides `VerifiableCredential`).
const MAX_TYPES: usize = 8;

const MIGRATIONS: &[Migration] = &[Migration {
    id: "dev.ues.credential/0001_issuers",
    sql: "
        CREATE TABLE credential_key (
            did TEXT PRIMARY KEY,
            did_key TEXT NOT NULL,
            sealed BLOB NOT NULL,
            created_at INTEGER NOT NULL
        );
        CREATE TABLE credential_issued (
            id TEXT PRIMARY KEY,
            did TEXT NOT NULL,
            subject TEXT NOT NULL,
            list INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            credential TEXT NOT NULL,
            issued_at INTEGER NOT NULL,
            revoked_at INTEGER,
            UNIQUE (did, list, idx)
        );
        CREATE TABLE credential_list (
            did TEXT NOT NULL,
            list INTEGER NOT NULL,
            bits BLOB NOT NULL,
            signed TEXT NOT NULL,
            PRIMARY KEY (did, list)
        );
    ",
}];

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// An XML Schema dateTimeStamp of now, to the second.
fn now_stamp() -> String {
    let iso = ues_protocol::node::sequencer::iso_from_millis(now_ms());
    // `2026-12-05T10:00:00.123Z` → `2026-12-05T10:00:00Z`
    match iso.split_once('.') {
        Some((s, _)) => format!("{s}Z"),
        None => iso,
    }
}

fn refused(e: CredentialError) -> NodeError {
    NodeError::bad(e.name(), e.to_string())
}

fn sql(e: rusqlite::Error) -> NodeError {
    NodeError::internal(e)
}

/// The application.
#[derive(Default)]
pub struct Credentials {
    node: OnceLock<Arc<Node>>,
    seal: OnceLock<SealKey>,
    /// One issuer's key made at a time.
    making: parking_lot::Mutex<()>,
}

impl Credentials {
    fn node(&self) -> &Arc<Node> {
        self.node.get().expect("the host attaches the node before any call")
    }

    fn context(did: &str) -> Vec<u8> {
        format!("{NAME}/credential_key\0{did}").into_bytes()
    }

    /// The URL of `did`'s status list `list`.
    fn list_url(&self, did: &str, list: i64) -> String {
        format!(
            "{}/xrpc/dev.ues.credential.getStatusList?issuer={did}&list={list}",
            self.node().cfg.public_url.trim_end_matches('/')
        )
    }

    /// `did`'s signing key, made (with its issuer record and its first status list) when it has none.
    fn key(&self, did: &str) -> Result<(SigningKey, DidKey), NodeError> {
        let node = self.node();
        let seal = self.seal.get().expect("attached");
        let load = || -> Result<Option<(SigningKey, DidKey)>, NodeError> {
            let row: Option<Vec<u8>> = node
                .accounts
                .db()
                .read(|c| {
                    c.query_row("SELECT sealed FROM credential_key WHERE did = ?1", [did], |r| r.get(0)).optional()
                })
                .map_err(sql)?;
            let Some(sealed) = row else { return Ok(None) };
            let secret = seal.open_many(&Self::context(did), &sealed).map_err(NodeError::internal)?;
            let bytes: [u8; 32] =
                secret.as_slice().try_into().map_err(|_| NodeError::internal("a credential key is not 32 bytes"))?;
            let key = SigningKey::from_bytes(&bytes);
            let public = DidKey::from(key.verifying_key());
            Ok(Some((key, public)))
        };
        if let Some(k) = load()? {
            return Ok(k);
        }
        let _one = self.making.lock();
        if let Some(k) = load()? {
            return Ok(k);
        }
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        let public = DidKey::from(key.verifying_key());
        // The issuer record first: the key is used only once the account has published it.
        let parsed = node.served_did(did)?;
        let collection = Nsid::new(ISSUER).map_err(NodeError::internal)?;
        let record = json!({
            "$type": ISSUER, "key": public.did(), "verificationMethod": public.verification_method(),
            "createdAt": ues_protocol::node::sequencer::iso_from_millis(now_ms()),
        });
        let (ipld, _) = node.prepare_record(&collection, "self", record, Some(true))?;
        let rkey = RecordKey::new("self").map_err(NodeError::internal)?;
        node.commit(None, &parsed, &[Write::Update { collection, rkey, record: ipld, swap: None }], None)?;
        let sealed = seal.seal_many(&Self::context(did), &key.to_bytes());
        let list = self.signed_list(did, 0, &key, &public, &StatusList::new())?;
        node.accounts
            .db()
            .write(|tx| {
                tx.execute(
                    "INSERT INTO credential_key (did, did_key, sealed, created_at) VALUES (?1, ?2, ?3, ?4)",
                    params![did, public.did(), sealed, now_ms()],
                )?;
                put_list(tx, did, 0, &StatusList::new(), &list)?;
                Ok::<_, StoreError>(())
            })
            .map_err(NodeError::internal)?;
        tracing::info!(app = NAME, %did, key = %public.did(), "a credential issuer key was made");
        Ok((key, public))
    }

    fn signed_list(
        &self,
        did: &str,
        list: i64,
        key: &SigningKey,
        public: &DidKey,
        bits: &StatusList,
    ) -> Result<Value, NodeError> {
        let url = self.list_url(did, list);
        let unsigned = super::status_list_credential(&url, &public.did(), &now_stamp(), bits).map_err(refused)?;
        sign(&unsigned, key, &now_stamp()).map_err(refused)
    }
}

fn put_list(tx: &Transaction<'_>, did: &str, list: i64, bits: &StatusList, signed: &Value) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO credential_list (did, list, bits, signed) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (did, list) DO UPDATE SET bits = excluded.bits, signed = excluded.signed",
        params![did, list, bits.as_bytes(), signed.to_string()],
    )?;
    Ok(())
}

fn load_list(c: &rusqlite::Connection, did: &str, list: i64) -> rusqlite::Result<Option<(StatusList, String)>> {
    c.query_row("SELECT bits, signed FROM credential_list WHERE did = ?1 AND list = ?2", params![did, list], |r| {
        let bits: Vec<u8> = r.get(0)?;
        Ok((bits, r.get::<_, String>(1)?))
    })
    .optional()
    .map(|o| o.and_then(|(bits, signed)| StatusList::from_bytes(&bits).map(|b| (b, signed))))
}

/// Nesting depth of a JSON value.
fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn bounded(v: &Value) -> Result<(), NodeError> {
    let size = v.to_string().len();
    if size > super::MAX_CREDENTIAL_BYTES {
        return Err(refused(CredentialError::TooLarge { len: size, max: super::MAX_CREDENTIAL_BYTES }));
    }
    if depth(v) > super::MAX_DEPTH {
        return Err(refused(CredentialError::TooDeep { max: super::MAX_DEPTH }));
    }
    Ok(())
}

async fn issue(app: Arc<Credentials>, headers: HeaderMap, body: Value) -> Answer {
    let did = crate::peer::caller(app.node(), &headers, "dev.ues.credential.issue")?;
    bounded(&body)?;
    blocking(move || {
        let node = app.node();
        let types: Vec<String> =
            body["type"].as_array().into_iter().flatten().filter_map(Value::as_str).map(str::to_string).collect();
        if types.len() > MAX_TYPES {
            return Err(NodeError::invalid(format!("at most {MAX_TYPES} types")));
        }
        let mut subject = body["claims"].as_object().cloned().unwrap_or_default();
        if let Some(s) = body["subject"].as_str() {
            subject.insert("id".into(), Value::String(s.to_string()));
        }
        let (key, public) = app.key(&did)?;
        // A free place in the newest list (a new list when it is full).
        let (list, idx) = node
            .accounts
            .db()
            .read(|c| {
                let list: i64 = c.query_row("SELECT COALESCE(MAX(list), 0) FROM credential_list WHERE did = ?1", [&did], |r| r.get(0))?;
                let taken: std::collections::HashSet<i64> = c
                    .prepare_cached("SELECT idx FROM credential_issued WHERE did = ?1 AND list = ?2")?
                    .query_map(params![did, list], |r| r.get(0))?
                    .collect::<rusqlite::Result<_>>()?;
                let bits = load_list(c, &did, list)?.map(|(b, _)| b).unwrap_or_default();
                Ok::<_, rusqlite::Error>(match bits.random_free_index(&mut rand::thread_rng(), |i| taken.contains(&(i as i64))) {
                    Some(i) => (list, i as i64),
                    None => (list + 1, 0),
                })
            })
            .map_err(sql)?;
        let url = app.list_url(&did, list);
        let id = format!("urn:uuid:{}", uuid_v4());
        let issued_at = now_stamp();
        let unsigned = build_credential(CredentialDraft {
            issuer: &public,
            account: &did,
            id: &id,
            types: &types,
            subject: Value::Object(subject.clone()),
            valid_from: body["validFrom"].as_str().unwrap_or(&issued_at),
            valid_until: body["validUntil"].as_str(),
            status: Some(status_entry(&url, idx as usize)),
        })
        .map_err(refused)?;
        let credential = sign(&unsigned, &key, &issued_at).map_err(refused)?;
        let new_list = if list > 0 { Some(app.signed_list(&did, list, &key, &public, &StatusList::new())?) } else { None };
        node.accounts
            .db()
            .write(|tx| {
                if let Some(signed) = &new_list
                    && load_list(tx, &did, list)?.is_none()
                {
                    put_list(tx, &did, list, &StatusList::new(), signed)?;
                }
                tx.execute(
                    "INSERT INTO credential_issued (id, did, subject, list, idx, credential, issued_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![id, did, subject.get("id").and_then(Value::as_str).unwrap_or_default(), list, idx, credential.to_string(), now_ms()],
                )?;
                Ok::<_, StoreError>(())
            })
            .map_err(NodeError::internal)?;
        Ok(Json(json!({ "id": id, "credential": credential })))
    })
    .await
}

fn uuid_v4() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = data_encoding::HEXLOWER.encode(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

async fn revoke(app: Arc<Credentials>, headers: HeaderMap, body: Value) -> Answer {
    let did = crate::peer::caller(app.node(), &headers, "dev.ues.credential.revoke")?;
    let id = body["id"].as_str().ok_or_else(|| NodeError::invalid("id is required"))?.to_string();
    blocking(move || {
        let node = app.node();
        let (key, public) = app.key(&did)?;
        let _one = app.making.lock();
        let found: Option<(i64, i64)> = node
            .accounts
            .db()
            .read(|c| {
                c.query_row(
                    "SELECT list, idx FROM credential_issued WHERE id = ?1 AND did = ?2",
                    params![id, did],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
            })
            .map_err(sql)?;
        let (list, idx) =
            found.ok_or_else(|| NodeError::bad("CredentialNotFound", format!("you issued no credential {id}")))?;
        let (mut bits, _) = node.accounts.db().read(|c| load_list(c, &did, list)).map_err(sql)?.unwrap_or_default();
        bits.set(idx as usize, true).map_err(refused)?;
        let signed = app.signed_list(&did, list, &key, &public, &bits)?;
        node.accounts
            .db()
            .write(|tx| {
                put_list(tx, &did, list, &bits, &signed)?;
                tx.execute(
                    "UPDATE credential_issued SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
                    params![id, now_ms()],
                )?;
                Ok::<_, StoreError>(())
            })
            .map_err(NodeError::internal)?;
        tracing::info!(app = NAME, %did, credential = %id, "a credential was revoked");
        Ok(Json(json!({ "id": id, "revoked": true })))
    })
    .await
}

async fn get_status_list(app: Arc<Credentials>, _headers: HeaderMap, p: Vec<(String, String)>) -> Answer {
    let did = crate::mirror::param(&p, "issuer").unwrap_or_default().to_string();
    let list: i64 =
        crate::mirror::param(&p, "list").unwrap_or("0").parse().map_err(|_| NodeError::invalid("list is a number"))?;
    blocking(move || {
        let row = app.node().accounts.db().read(|c| load_list(c, &did, list)).map_err(sql)?;
        let (_, signed) =
            row.ok_or_else(|| NodeError::bad("StatusListNotFound", format!("{did} has no status list {list}")))?;
        Ok(Json(serde_json::from_str(&signed).map_err(NodeError::internal)?))
    })
    .await
}

/// A status list credential: this node's own from its table, another's fetched (bounded).
fn fetch_list(app: &Credentials, url: &str) -> Result<Value, CredentialError> {
    let own = format!("{}/xrpc/dev.ues.credential.getStatusList?", app.node().cfg.public_url.trim_end_matches('/'));
    if let Some(query) = url.strip_prefix(&own) {
        let mut did = "";
        let mut list = 0i64;
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some(("issuer", v)) => did = v,
                Some(("list", v)) => list = v.parse().unwrap_or(-1),
                _ => {}
            }
        }
        let row = app
            .node()
            .accounts
            .db()
            .read(|c| load_list(c, did, list))
            .map_err(|e| CredentialError::InvalidStatusList(e.to_string()))?;
        let (_, signed) = row.ok_or_else(|| CredentialError::InvalidStatusList(format!("no status list at {url}")))?;
        return serde_json::from_str(&signed).map_err(|e| CredentialError::InvalidStatusList(e.to_string()));
    }
    let allowed = url.starts_with("https://") || (app.node().development() && url.starts_with("http://"));
    if !allowed {
        return Err(CredentialError::InvalidStatusList(format!("{url} is not an https: URL")));
    }
    let res = app
        .node()
        .service_agent()
        .get(url)
        .call()
        .map_err(|e| CredentialError::InvalidStatusList(format!("{url}: {e}")))?;
    if res.status().as_u16() != 200 {
        return Err(CredentialError::InvalidStatusList(format!("{url} answered {}", res.status())));
    }
    let mut bytes = Vec::new();
    res.into_body()
        .as_reader()
        .take(MAX_REMOTE_LIST + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| CredentialError::InvalidStatusList(format!("{url}: {e}")))?;
    if bytes.len() as u64 > MAX_REMOTE_LIST {
        return Err(CredentialError::StatusListTooLarge { max: MAX_REMOTE_LIST as usize });
    }
    super::parse_bounded(&bytes, MAX_REMOTE_LIST as usize, super::MAX_DEPTH)
}

/// Verifies a credential: its proof and issuer, and its revocation status when it has one.
fn check(app: &Credentials, credential: &Value) -> Value {
    let verified = match super::verify_credential(credential) {
        Ok(v) => v,
        Err(e) => return json!({ "verified": false, "error": e.name(), "message": e.to_string() }),
    };
    let mut out =
        json!({ "verified": true, "issuer": verified.verification_method.split('#').next().unwrap_or_default() });
    let Some(status) = credential.get("credentialStatus") else { return out };
    let revoked = (|| -> Result<bool, CredentialError> {
        let url = status["statusListCredential"]
            .as_str()
            .ok_or_else(|| CredentialError::InvalidStatusList("no statusListCredential".into()))?;
        let index: usize = status["statusListIndex"]
            .as_str()
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| CredentialError::InvalidStatusList("statusListIndex is not a number".into()))?;
        let list = fetch_list(app, url)?;
        let list_key = super::verify_credential(&list)?;
        if list_key.key != verified.key {
            return Err(CredentialError::InvalidStatusList("the status list has another issuer".into()));
        }
        let encoded = list["credentialSubject"]["encodedList"]
            .as_str()
            .ok_or_else(|| CredentialError::InvalidStatusList("no encodedList".into()))?;
        StatusList::decode(encoded, MAX_INFLATED)?.get(index)
    })();
    match revoked {
        Ok(r) => out["revoked"] = Value::Bool(r),
        Err(e) => {
            out["verified"] = Value::Bool(false);
            out["error"] = Value::String(e.name().to_string());
            out["message"] = Value::String(e.to_string());
        }
    }
    out
}

async fn verify(app: Arc<Credentials>, _headers: HeaderMap, body: Value) -> Answer {
    let credential = body.get("credential").cloned().ok_or_else(|| NodeError::invalid("credential is required"))?;
    bounded(&credential)?;
    blocking(move || Ok(Json(check(&app, &credential)))).await
}

const LEXICONS: &[&str] = &[
    include_str!("../../../../lexicons/dev/ues/credential/issue.json"),
    include_str!("../../../../lexicons/dev/ues/credential/verify.json"),
    include_str!("../../../../lexicons/dev/ues/credential/revoke.json"),
    include_str!("../../../../lexicons/dev/ues/credential/getStatusList.json"),
];

const ROUTES: &[Route] = &[
    ("post", "/api/v1/credentials", "dev.ues.credential.issue", &[]),
    ("post", "/api/v1/credentials/verify", "dev.ues.credential.verify", &[]),
    ("post", "/api/v1/credentials/revoke", "dev.ues.credential.revoke", &[]),
    ("get", "/api/v1/credentials/status-list", "dev.ues.credential.getStatusList", &[]),
];

fn public(nsid: &str) -> bool {
    matches!(nsid, "dev.ues.credential.verify" | "dev.ues.credential.getStatusList")
}

impl Mirrored for Credentials {
    fn dispatch(self: Arc<Self>, headers: HeaderMap, nsid: &'static str, input: Input) -> BoxFuture<'static, Answer> {
        Box::pin(async move {
            match (input, nsid) {
                (Input::Params(p), _) => get_status_list(self, headers, p).await,
                (Input::Body(b), "dev.ues.credential.issue") => issue(self, headers, b).await,
                (Input::Body(b), "dev.ues.credential.revoke") => revoke(self, headers, b).await,
                (Input::Body(b), _) => verify(self, headers, b).await,
            }
        })
    }

    fn public(&self, nsid: &str) -> bool {
        public(nsid)
    }
}

impl App for Credentials {
    fn name(&self) -> &'static str {
        NAME
    }

    fn attach(&self, node: &Arc<Node>) {
        let _ = self.seal.set(node.accounts.derive_seal(format!("{NAME}/seal/v1").as_bytes()));
        let _ = self.node.set(node.clone());
    }

    fn migrations(&self) -> &'static [Migration] {
        MIGRATIONS
    }

    fn xrpc(self: Arc<Self>) -> Router<Arc<Node>> {
        macro_rules! procedure {
            ($f:ident) => {{
                let app = self.clone();
                post(move |headers: HeaderMap, XJson(body): XJson<Value>| $f(app, headers, body))
            }};
        }
        let app = self.clone();
        Router::new()
            .route("/xrpc/dev.ues.credential.issue", procedure!(issue))
            .route("/xrpc/dev.ues.credential.verify", procedure!(verify))
            .route("/xrpc/dev.ues.credential.revoke", procedure!(revoke))
            .route(
                "/xrpc/dev.ues.credential.getStatusList",
                get(move |headers: HeaderMap, Query(p): Query<Vec<(String, String)>>| get_status_list(app, headers, p)),
            )
    }

    fn api(self: Arc<Self>, node: Arc<Node>) -> Router {
        mirror::routes(self, node, ROUTES)
    }

    fn openapi(&self) -> Value {
        mirror::openapi(LEXICONS, ROUTES, "credentials", public)
    }

    fn apply(&self, tx: &Transaction<'_>, events: &[ues_protocol::node::sequencer::LogEvent]) -> rusqlite::Result<()> {
        use ues_protocol::node::sequencer::Happened;
        for e in events {
            if let Happened::Account { status } = &e.what
                && status == "deleted"
            {
                for table in ["credential_key", "credential_issued", "credential_list"] {
                    tx.execute(&format!("DELETE FROM {table} WHERE did = ?1"), [&e.did])?;
                }
            }
        }
        Ok(())
    }

    fn rebuild(&self, _tx: &Transaction<'_>) -> rusqlite::Result<()> {
        // Keys, issued credentials and status lists are not derived from the log.
        Ok(())
    }
}
