//! `com.atproto.identity.*` beyond handles: resolving DIDs and identities (this node's
//! accounts from its own state, others through the cached [`ues_sync::repo::dids`] resolver),
//! and the PLC operation flow of an account moving its identity (`getRecommendedDidCredentials`,
//! `requestPlcOperationSignature` with an emailed token, `signPlcOperation`,
//! `submitPlcOperation`), plus `server.reserveSigningKey` and `temp.checkSignupQueue`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use ues_sync::repo::crypto::{KeyType, Keypair};
use ues_sync::repo::dids::DidError;
use ues_sync::repo::identity::parse_did_document;
use ues_sync::repo::plc::{PlcClient, operation_cid, sign_operation};
use ues_sync::repo::syntax::{Did, Handle};

use crate::node::auth::full_session;
use crate::node::extract::{XJson, XQuery};
use crate::node::tokens::{self, Purpose};
use crate::node::{Node, NodeError, blocking};

type Res = Result<Json<Value>, NodeError>;

fn did_error(e: DidError) -> NodeError {
    match e {
        DidError::NotFound(m) => NodeError::bad("DidNotFound", format!("DID not found: {m}")),
        DidError::Deactivated(m) => NodeError::bad("DidDeactivated", format!("DID deactivated: {m}")),
        DidError::Unsupported(m) => NodeError::bad("DidNotFound", format!("unsupported DID method: {m}")),
        other => {
            tracing::info!(error = %other, "DID resolution failed");
            NodeError::new(StatusCode::BAD_GATEWAY, "UpstreamFailure", other.to_string())
        }
    }
}

/// The DID document: this node's own for its active accounts, else resolved (`refresh`:
/// anew). An account deactivated here (moved away, or moving in) is resolved like any other,
/// with this node's view as the fallback when the DID does not resolve.
fn did_document(st: &Node, did: &Did, refresh: bool) -> Result<Value, NodeError> {
    let local = st.accounts.get(did)?;
    if let Some(account) = &local
        && account.status == "active"
    {
        return st.did_doc(account);
    }
    let doc = if refresh { st.dids.refresh(did) } else { st.dids.resolve(did) };
    match (doc, local) {
        (Ok(doc), _) => Ok(doc),
        (Err(_), Some(account)) => st.did_doc(&account),
        (Err(e), None) => Err(did_error(e)),
    }
}

/// The DID a handle names: this node's account's, else resolved (DNS, then HTTPS; cached,
/// `refresh`: anew).
fn handle_did(st: &Node, handle: &Handle, refresh: bool) -> Result<Option<Did>, NodeError> {
    if let Some(a) = st.accounts.by_handle(handle)? {
        return Ok(Some(a.did));
    }
    Ok(st.dids.handle(&st.cfg.handle_resolver, handle, refresh))
}

/// `identityInfo`: the DID, its document, and its handle when the handle leads back to the
/// DID (else `handle.invalid`).
fn identity(st: &Node, identifier: &str, refresh: bool) -> Result<Value, NodeError> {
    let (did, asked) = if identifier.starts_with("did:") {
        (Did::new(identifier).map_err(|e| NodeError::invalid(e.to_string()))?, None)
    } else {
        let handle = Handle::new(identifier).map_err(|e| NodeError::invalid(e.to_string()))?.normalized();
        let did = handle_did(st, &handle, refresh)?
            .ok_or_else(|| NodeError::bad("HandleNotFound", format!("Unable to resolve handle: {handle}")))?;
        (did, Some(handle))
    };
    let doc = did_document(st, &did, refresh)?;
    let claimed = parse_did_document(&doc, &did).ok().and_then(|id| id.handle).map(|h| h.normalized());
    let handle = match (claimed, asked) {
        (Some(c), Some(a)) if c == a => c.to_string(),
        (Some(_), Some(a)) => {
            return Err(NodeError::bad("HandleNotFound", format!("{a} is not the handle of {did}'s DID document")));
        }
        (Some(c), None) if handle_did(st, &c, refresh)?.as_ref() == Some(&did) => c.to_string(),
        _ => "handle.invalid".to_string(),
    };
    Ok(json!({ "did": did.as_str(), "handle": handle, "didDoc": doc }))
}

#[derive(Deserialize)]
pub(crate) struct DidParam {
    did: String,
}

pub(crate) async fn resolve_did(State(st): State<Arc<Node>>, XQuery(q): XQuery<DidParam>) -> Res {
    let did = Did::new(&q.did).map_err(|e| NodeError::invalid(e.to_string()))?;
    blocking(move || Ok(Json(json!({ "didDoc": did_document(&st, &did, false)? })))).await
}

#[derive(Deserialize)]
pub(crate) struct Identifier {
    identifier: String,
}

pub(crate) async fn resolve_identity(State(st): State<Arc<Node>>, XQuery(q): XQuery<Identifier>) -> Res {
    blocking(move || Ok(Json(identity(&st, &q.identifier, false)?))).await
}

/// Resolves anew (at most once every few seconds per DID: see the resolver).
pub(crate) async fn refresh_identity(State(st): State<Arc<Node>>, XJson(b): XJson<Identifier>) -> Res {
    blocking(move || Ok(Json(identity(&st, &b.identifier, true)?))).await
}

/// What an account moving here should put in its DID document: this node's rotation key, the
/// account's signing key here, its handle, and this node as its PDS.
pub(crate) async fn get_recommended_did_credentials(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    let claims = st.access(&headers)?;
    blocking(move || {
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        let account = st.accounts.get(&did)?.ok_or_else(|| NodeError::invalid("account not found"))?;
        let key = st.accounts.signing_key(&did)?;
        Ok(Json(json!({
            "alsoKnownAs": [format!("at://{}", account.handle)],
            "verificationMethods": { "atproto": key.public().did_key() },
            "rotationKeys": [st.accounts.plc_rotation_key().public().did_key()],
            "services": { "atproto_pds": { "type": "AtprotoPersonalDataServer", "endpoint": st.cfg.public_url } },
        })))
    })
    .await
}

pub(crate) async fn request_plc_operation_signature(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<StatusCode, NodeError> {
    let did = full_session(&st, &headers)?;
    blocking(move || {
        st.send_token(&did, Purpose::PlcOperation)?;
        Ok(StatusCode::OK)
    })
    .await
}

fn plc(st: &Node) -> Result<PlcClient, NodeError> {
    st.cfg
        .plc_url
        .as_deref()
        .map(PlcClient::new)
        .ok_or_else(|| NodeError::invalid("this server has no PLC directory configured"))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(crate) struct SignPlcOperation {
    token: Option<String>,
    rotation_keys: Option<Vec<String>>,
    also_known_as: Option<Vec<String>>,
    verification_methods: Option<Map<String, Value>>,
    services: Option<Map<String, Value>>,
}

/// Signs, with this node's rotation key, the DID's next PLC operation: its last one with the
/// fields given replaced. Takes a token from `requestPlcOperationSignature`.
pub(crate) async fn sign_plc_operation(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<SignPlcOperation>,
) -> Res {
    let did = full_session(&st, &headers)?;
    blocking(move || {
        let token = b
            .token
            .as_deref()
            .ok_or_else(|| NodeError::invalid("email confirmation token required to sign PLC operations"))?;
        let ttl = st.mailer()?.token_ttl();
        let directory = plc(&st)?;
        tokens::spend(st.accounts.db(), &did, Purpose::PlcOperation, token, ttl)?;
        let last =
            directory.last_operation(did.as_str()).map_err(|e| NodeError::bad("InvalidRequest", e.to_string()))?;
        if last.get("type").and_then(Value::as_str) == Some("plc_tombstone") {
            return Err(NodeError::invalid("Did is tombstoned"));
        }
        let field = |name: &str| last.get(name).cloned().unwrap_or(Value::Null);
        let mut op = Map::new();
        op.insert("type".into(), json!("plc_operation"));
        op.insert("rotationKeys".into(), b.rotation_keys.map_or_else(|| field("rotationKeys"), |k| json!(k)));
        op.insert(
            "verificationMethods".into(),
            b.verification_methods.map_or_else(|| field("verificationMethods"), Value::Object),
        );
        op.insert("alsoKnownAs".into(), b.also_known_as.map_or_else(|| field("alsoKnownAs"), |a| json!(a)));
        op.insert("services".into(), b.services.map_or_else(|| field("services"), Value::Object));
        let prev = operation_cid(&last).map_err(NodeError::internal)?;
        op.insert("prev".into(), json!(prev.to_string()));
        let signed = sign_operation(op, st.accounts.plc_rotation_key()).map_err(NodeError::internal)?;
        tracing::info!(%did, "PLC operation signed for the account");
        Ok(Json(json!({ "operation": signed })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubmitPlcOperation {
    operation: Value,
}

/// Checks that an operation keeps the account working here (this node's rotation key, this
/// node as PDS, the account's signing key, its handle first), then sends it to the directory
/// and tells the network `#identity`.
pub(crate) async fn submit_plc_operation(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<SubmitPlcOperation>,
) -> Result<StatusCode, NodeError> {
    let did = full_session(&st, &headers)?;
    blocking(move || {
        let op = &b.operation;
        if op.get("type").and_then(Value::as_str) != Some("plc_operation") {
            return Err(NodeError::invalid("Invalid operation"));
        }
        let strings = |name: &str| -> Vec<String> {
            op.get(name)
                .and_then(Value::as_array)
                .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                .unwrap_or_default()
        };
        let rotation = st.accounts.plc_rotation_key().public().did_key();
        if !strings("rotationKeys").contains(&rotation) {
            return Err(NodeError::invalid("Rotation keys do not include server's rotation key"));
        }
        let pds = &op["services"]["atproto_pds"];
        if pds["type"] != "AtprotoPersonalDataServer" {
            return Err(NodeError::invalid("Incorrect type on atproto_pds service"));
        }
        if pds["endpoint"] != st.cfg.public_url.as_str() {
            return Err(NodeError::invalid("Incorrect endpoint on atproto_pds service"));
        }
        let key = st.accounts.signing_key(&did)?.public().did_key();
        if op["verificationMethods"]["atproto"] != key.as_str() {
            return Err(NodeError::invalid("Incorrect signing key"));
        }
        let account = st.accounts.get(&did)?.ok_or_else(|| NodeError::invalid("account not found"))?;
        if strings("alsoKnownAs").first() != Some(&format!("at://{}", account.handle)) {
            return Err(NodeError::invalid("Incorrect handle in alsoKnownAs"));
        }
        plc(&st)?.submit(did.as_str(), op).map_err(|e| NodeError::bad("InvalidRequest", e.to_string()))?;
        st.kv.put(format!("plc/{did}").as_bytes(), op.to_string().as_bytes(), None).map_err(NodeError::internal)?;
        st.accounts.announce_identity(&did)?;
        st.firehose.notify();
        st.dids.forget(&did);
        if let Err(e) = st.dids.resolve(&did) {
            tracing::info!(%did, error = %e, "DID not resolved again after its PLC operation");
        }
        tracing::info!(%did, "PLC operation submitted");
        Ok(StatusCode::OK)
    })
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ReserveSigningKey {
    did: Option<String>,
}

/// A signing key made now and held for an account that is to move here: its DID document
/// names it before the account exists (`createAccount` with that DID takes it). Held in memory
/// only (a secret never written unsealed), for a day, the newest
/// [`crate::node::MAX_RESERVED_KEYS`] of them.
pub(crate) async fn reserve_signing_key(State(st): State<Arc<Node>>, XJson(b): XJson<ReserveSigningKey>) -> Res {
    let did = b.did.as_deref().map(Did::new).transpose().map_err(|e| NodeError::invalid(e.to_string()))?;
    let key = Keypair::generate(KeyType::K256);
    let public = key.public().did_key();
    st.reserve_key(did.as_ref().map_or(public.clone(), |d| d.to_string()), key);
    Ok(Json(json!({ "signingKey": public })))
}

/// No sign-up queue here: every account is active at once.
pub(crate) async fn check_signup_queue(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    st.access(&headers)?;
    Ok(Json(json!({ "activated": true })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct HandleAvailability {
    handle: String,
    email: Option<String>,
    #[expect(dead_code, reason = "named by the lexicon; suggestions do not use it")]
    birth_date: Option<String>,
}

/// `temp.checkHandleAvailability`: whether a new account may take the handle (one of the
/// node's user domains, not held); if not, up to five that are free, built from it and from
/// the email's local part.
pub(crate) async fn check_handle_availability(
    State(st): State<Arc<Node>>,
    XQuery(q): XQuery<HandleAvailability>,
) -> Res {
    let handle = Handle::new(&q.handle).map_err(|e| NodeError::invalid(e.to_string()))?.normalized();
    if let Some(e) = &q.email
        && super::email::valid_email(e).is_err()
    {
        return Err(NodeError::bad("InvalidEmail", "An invalid email was provided."));
    }
    blocking(move || {
        let domain = st.cfg.user_domains.iter().find(|d| handle.as_str().ends_with(d.as_str())).cloned();
        let free = |h: &str| -> Result<bool, NodeError> {
            let Ok(h) = Handle::new(h) else { return Ok(false) };
            Ok(st.accounts.by_handle(&h.normalized())?.is_none())
        };
        if domain.is_some() && free(handle.as_str())? {
            return Ok(Json(json!({
                "handle": handle.as_str(),
                "result": { "$type": "com.atproto.temp.checkHandleAvailability#resultAvailable" },
            })));
        }
        let domain = domain.or_else(|| st.cfg.user_domains.first().cloned()).unwrap_or_default();
        let stem: String =
            handle.as_str().split('.').next().unwrap_or("").chars().filter(char::is_ascii_alphanumeric).collect();
        let from_email: Option<String> = q
            .email
            .as_deref()
            .and_then(|e| e.split('@').next())
            .map(|l| l.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_ascii_lowercase())
            .filter(|l| !l.is_empty());
        let mut suggestions = Vec::new();
        let candidates = from_email
            .iter()
            .map(|l| (format!("{l}{domain}"), "email"))
            .chain((1..=20).map(|n| (format!("{stem}{n}{domain}"), "number")));
        for (candidate, method) in candidates {
            if suggestions.len() == 5 {
                break;
            }
            if candidate != handle.as_str() && free(&candidate)? {
                suggestions.push(json!({ "handle": candidate, "method": method }));
            }
        }
        Ok(Json(json!({
            "handle": handle.as_str(),
            "result": {
                "$type": "com.atproto.temp.checkHandleAvailability#resultUnavailable",
                "suggestions": suggestions,
            },
        })))
    })
    .await
}
