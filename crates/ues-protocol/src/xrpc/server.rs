//! com.atproto.server.* and com.atproto.identity.resolveHandle.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::crypto::Keypair;
use ues_sync::repo::plc::{Genesis, PlcClient};
use ues_sync::repo::syntax::{Did, Handle};

use crate::node::credentials;

use crate::node::auth::{
    PROTECTED_METHODS, app_password_digest, full_session, is_privileged_method, now_secs, require_full,
    require_privileged, service_token,
};
use crate::node::extract::{XJson, XQuery};
use crate::node::sessions::{NewAccount, Session};
use crate::node::{Node, NodeError, bearer, blocking};

type Res = Result<Json<Value>, NodeError>;

pub(crate) async fn describe_server(State(st): State<Arc<Node>>) -> Json<Value> {
    Json(json!({
        "did": st.cfg.service_did,
        "availableUserDomains": st.cfg.user_domains,
        "inviteCodeRequired": st.invite_required.load(std::sync::atomic::Ordering::Relaxed),
        "phoneVerificationRequired": false,
        "links": {},
    }))
}

/// `createAccount`'s input: every field the lexicon names, and no other (a field this server
/// does not know is refused, never ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct CreateAccount {
    pub(crate) handle: String,
    pub(crate) email: Option<String>,
    pub(crate) password: Option<String>,
    /// A did:key the user keeps, listed as the DID's most authoritative rotation key.
    pub(crate) recovery_key: Option<String>,
    /// An existing DID moving to this server (account migration).
    pub(crate) did: Option<String>,
    /// A signed PLC operation for that DID.
    pub(crate) plc_op: Option<Value>,
    /// Needed when the server requires invites (`describeServer` says whether).
    pub(crate) invite_code: Option<String>,
    /// Phone verification is not required here; accepted.
    #[expect(dead_code, reason = "named so that it is not refused as unknown")]
    pub(crate) verification_code: Option<String>,
    /// Phone verification is not required here; accepted.
    #[expect(dead_code, reason = "named so that it is not refused as unknown")]
    pub(crate) verification_phone: Option<String>,
}

/// A session as `createSession`, `refreshSession` and `getSession` answer it (tokens left out
/// when empty; optional fields omitted when absent: clients validate them as strings).
pub(crate) fn session_json(s: &Session) -> Value {
    let mut out = json!({
        "handle": s.account.handle.as_str(),
        "did": s.account.did.as_str(),
        "didDoc": s.did_doc,
        "emailConfirmed": s.email_confirmed,
        "emailAuthFactor": s.email_auth_factor,
        "active": s.active(),
    });
    if !s.access.is_empty() {
        out["accessJwt"] = Value::String(s.access.clone());
        out["refreshJwt"] = Value::String(s.refresh.clone());
    }
    if let Some(e) = &s.email {
        out["email"] = Value::String(e.clone());
    }
    if !s.active() {
        out["status"] = Value::String(s.account.status.clone());
    }
    out
}

pub(crate) async fn create_account(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateAccount>,
) -> Res {
    if b.plc_op.is_some() {
        // The operation moving a DID here is signed by the old server and sent with
        // submitPlcOperation once the account is here, as the migration guide does it.
        return Err(NodeError::invalid(
            "plcOp is not taken here: create the account with did and a service auth token, then submit the PLC operation with com.atproto.identity.submitPlcOperation; no account was created",
        ));
    }
    let req = NewAccount {
        handle: b.handle,
        email: b.email,
        password: b.password,
        recovery_key: b.recovery_key,
        invite_code: b.invite_code,
    };
    let moving = match b.did {
        Some(did) => {
            let did = Did::new(&did).map_err(|e| NodeError::invalid(e.to_string()))?;
            // Only the DID's holder may bring it here: a service auth token its current
            // server signed with the DID's key, for this server and this method.
            let token = bearer(&headers).map_err(|_| {
                tracing::info!(%did, "account migration without a service auth token refused");
                NodeError::auth_required(format!(
                    "Bringing {did} here needs a service auth token from its current server (com.atproto.server.getServiceAuth, aud {}, lxm com.atproto.server.createAccount); no account was created",
                    st.cfg.service_did
                ))
            })?
            .to_string();
            Some((did, token))
        }
        None => None,
    };
    blocking(move || {
        let s = match moving {
            Some((did, token)) => {
                let iss = crate::node::auth::verify_service_token(&st, &token, "com.atproto.server.createAccount")?;
                if iss != did {
                    return Err(NodeError::auth_required(format!(
                        "the service auth token is {iss}'s, not {did}'s; no account was created"
                    )));
                }
                st.create_moving_account(req, did)?
            }
            None => st.create_account(req)?,
        };
        Ok(Json(json!({
            "accessJwt": s.access, "refreshJwt": s.refresh, "handle": s.account.handle.as_str(),
            "did": s.account.did.as_str(), "didDoc": s.did_doc,
        })))
    })
    .await
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateSession {
    pub(crate) identifier: String,
    pub(crate) password: String,
    /// The code mailed for an account with two-factor sign-in by email.
    pub(crate) auth_factor_token: Option<String>,
}

pub(crate) async fn create_session(State(st): State<Arc<Node>>, XJson(b): XJson<CreateSession>) -> Res {
    blocking(move || {
        let s = st.login(&b.identifier, &b.password, b.auth_factor_token.as_deref())?;
        Ok(Json(session_json(&s)))
    })
    .await
}

pub(crate) async fn refresh_session(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    let token = bearer(&headers)?.to_string();
    blocking(move || Ok(Json(session_json(&st.refresh_session(&token)?)))).await
}

pub(crate) async fn get_session(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    let claims = st.access(&headers)?;
    let mut s = st.describe_session(&claims)?;
    if !claims.may_read_email() {
        s.email = None;
    }
    Ok(Json(session_json(&s)))
}

pub(crate) async fn delete_session(State(st): State<Arc<Node>>, headers: HeaderMap) -> Result<StatusCode, NodeError> {
    st.logout(bearer(&headers)?)?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct ResolveHandle {
    handle: String,
}

/// `identity.resolveHandle`: this node's accounts first; a handle under one of the node's own
/// domains that no account holds is not found; any other handle is resolved as the handle
/// specification says (DNS TXT, then HTTPS).
pub(crate) async fn resolve_handle(State(st): State<Arc<Node>>, XQuery(q): XQuery<ResolveHandle>) -> Res {
    let handle = Handle::new(&q.handle).map_err(|e| NodeError::invalid(e.to_string()))?.normalized();
    if let Some(a) = st.accounts.by_handle(&handle)? {
        return Ok(Json(json!({ "did": a.did.as_str() })));
    }
    if st.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
        return Err(NodeError::bad("HandleNotFound", "Unable to resolve handle"));
    }
    crate::node::blocking(move || match st.dids.handle(&st.cfg.handle_resolver, &handle, false) {
        Some(did) => Ok(Json(json!({ "did": did.as_str() }))),
        None => {
            tracing::info!(%handle, "handle did not resolve");
            Err(NodeError::bad("HandleNotFound", "Unable to resolve handle"))
        }
    })
    .await
}

/// `/.well-known/atproto-did`: the DID of the account whose handle is this request's host.
pub(crate) async fn well_known_atproto_did(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<String, StatusCode> {
    let host = headers.get(axum::http::header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let handle = Handle::new(host).map_err(|_| StatusCode::NOT_FOUND)?;
    match st.accounts.by_handle(&handle) {
        Ok(Some(a)) => Ok(a.did.to_string()),
        _ => Err(StatusCode::NOT_FOUND),
    }
}

/// `/.well-known/did.json`: the node's own did:web document, naming it an AT Protocol PDS.
pub(crate) async fn well_known_did_json(State(st): State<Arc<Node>>) -> Json<Value> {
    Json(json!({
        "@context": ["https://www.w3.org/ns/did/v1"],
        "id": st.cfg.service_did,
        "service": [{ "id": "#atproto_pds", "type": "AtprotoPersonalDataServer", "serviceEndpoint": st.cfg.public_url }],
    }))
}

#[derive(Deserialize)]
pub(crate) struct UpdateHandle {
    handle: String,
}

/// `identity.updateHandle`: a new handle under a served domain, or any other domain whose DNS
/// TXT record or `/.well-known/atproto-did` names the account; emits `#identity`, and a PLC
/// update operation when a directory is configured.
pub(crate) async fn update_handle(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdateHandle>,
) -> Result<StatusCode, NodeError> {
    let did = full_session(&st, &headers)?;
    crate::node::blocking(move || {
        let handle = Handle::new(&b.handle).map_err(|e| NodeError::bad("InvalidHandle", e.to_string()))?.normalized();
        if !st.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
            st.cfg.handle_resolver.verify(&handle, &did).map_err(|e| {
                tracing::info!(error = %e, "external handle refused");
                NodeError::bad("InvalidHandle", format!("External handle did not resolve to DID: {e}"))
            })?;
        }
        change_handle(&st, &did, &handle)?;
        Ok(StatusCode::OK)
    })
    .await
}

/// Moves an account to `handle`: a PLC update operation first when a directory is configured,
/// then the account row and the `#identity` event.
pub(crate) fn change_handle(st: &Node, did: &Did, handle: &Handle) -> Result<(), NodeError> {
    if let Some(url) = &st.cfg.plc_url {
        let key = st.accounts.signing_key(did)?;
        let stored = st.kv.get(format!("plc/{did}").as_bytes()).map_err(NodeError::internal)?;
        let last: Value = match stored {
            Some(last) => serde_json::from_slice(&last).map_err(NodeError::internal)?,
            // An account that moved here: its operations were made elsewhere.
            None => PlcClient::new(url)
                .last_operation(did.as_str())
                .map_err(|e| NodeError::bad("UnresolvableDid", e.to_string()))?,
        };
        let prev = ues_sync::repo::plc::operation_cid(&last).map_err(NodeError::internal)?;
        let (rotation_keys, signer) = next_rotation_keys(st, &last, &key)?;
        let state = Genesis {
            rotation_keys,
            signing_key: key.public().did_key(),
            handle: handle.to_string(),
            pds_endpoint: st.cfg.public_url.clone(),
        };
        let op = state.update(&prev.to_string(), &signer).map_err(NodeError::internal)?;
        PlcClient::new(url).submit(did.as_str(), &op).map_err(|e| NodeError::bad("UnresolvableDid", e.to_string()))?;
        st.kv.put(format!("plc/{did}").as_bytes(), op.to_string().as_bytes(), None).map_err(NodeError::internal)?;
    }
    st.accounts.update_handle(did, handle).map_err(|e| match e {
        ues_sync::repo::accounts::AccountError::Taken(_) => {
            NodeError::conflict("HandleNotAvailable", "Handle already taken")
        }
        e => e.into(),
    })?;
    st.firehose.notify();
    Ok(())
}

/// The rotation keys of a DID's next PLC operation and the key to sign it with, from its last
/// operation: signed by the node's rotation key when that is listed, else (a DID made when the
/// signing key was its rotation key) by the signing key, which the next operation then drops
/// in favour of the node's rotation key. Other listed keys (a user's recovery key) stay, in
/// their order. A node that holds none of the listed keys (another device of the account)
/// cannot change the DID.
pub(crate) fn next_rotation_keys(
    st: &Node,
    last: &Value,
    signing: &Keypair,
) -> Result<(Vec<String>, Keypair), NodeError> {
    let listed: Vec<String> = last
        .get("rotationKeys")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|k| k.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    let rotation = st.accounts.plc_rotation_key();
    let node = rotation.public().did_key();
    let old = signing.public().did_key();
    let signer = if listed.contains(&node) {
        rotation.clone()
    } else if listed.contains(&old) {
        tracing::info!("PLC rotation moves from the account's signing key to the node's rotation key");
        signing.clone()
    } else {
        return Err(NodeError::bad(
            "InvalidRequest",
            "This node holds none of the DID's rotation keys; change the handle on the node that created the account",
        ));
    };
    let mut keys: Vec<String> = listed.into_iter().filter(|k| *k != old).collect();
    if !keys.contains(&node) {
        keys.push(node);
    }
    Ok((keys, signer))
}

async fn set_status(st: Arc<Node>, headers: HeaderMap, status: &'static str) -> Result<StatusCode, NodeError> {
    let did = full_session(&st, &headers)?;
    crate::node::blocking(move || {
        if status == "active" {
            check_did_points_here(&st, &did)?;
        }
        st.accounts.set_status(&did, status)?;
        if status == "active" {
            // Consumers resolve the identity again and take the repository from here.
            st.accounts.announce_identity(&did)?;
        }
        st.firehose.notify();
        Ok(StatusCode::OK)
    })
    .await
}

/// Refuses to activate an account whose DID document names another server or another
/// signing key (an account moving here before its PLC operation went through). A DID that
/// cannot be resolved (a development node without a directory) is not held against it.
fn check_did_points_here(st: &Node, did: &Did) -> Result<(), NodeError> {
    if did.as_str().starts_with("did:plc:") && st.cfg.plc_url.is_none() {
        return Ok(());
    }
    let doc = match st.dids.resolve_now(did) {
        Ok(doc) => doc,
        Err(e) => {
            tracing::info!(%did, error = %e, "an account whose DID does not resolve");
            return Ok(());
        }
    };
    let id = ues_sync::repo::identity::parse_did_document(&doc, did).map_err(NodeError::internal)?;
    if id.pds_endpoint.as_deref().map(|e| e.trim_end_matches('/')) != Some(st.cfg.public_url.trim_end_matches('/')) {
        return Err(NodeError::invalid(format!(
            "the DID document names {} as the account's server, not this one ({}): submit the PLC operation first",
            id.pds_endpoint.as_deref().unwrap_or("no server"),
            st.cfg.public_url
        )));
    }
    let own = st.accounts.signing_key(did)?.public();
    if id.signing_key.as_ref() != Some(&own) {
        return Err(NodeError::invalid(
            "the DID document names another signing key than the account's here: submit the PLC operation first",
        ));
    }
    Ok(())
}

pub(crate) async fn activate_account(State(st): State<Arc<Node>>, headers: HeaderMap) -> Result<StatusCode, NodeError> {
    set_status(st, headers, "active").await
}

pub(crate) async fn deactivate_account(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
) -> Result<StatusCode, NodeError> {
    set_status(st, headers, "deactivated").await
}

pub(crate) async fn check_account_status(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    let claims = st.access(&headers)?;
    crate::node::blocking(move || {
        let did = Did::new(claims.sub).map_err(NodeError::internal)?;
        let a = st.accounts.get(&did)?.ok_or_else(|| NodeError::not_found("RepoNotFound", "no such account"))?;
        let held = st.accounts.holdings(&did)?;
        Ok(Json(json!({
            "activated": a.status == "active",
            "validDid": check_did_points_here(&st, &did).is_ok(),
            "repoCommit": a.head.to_string(),
            "repoRev": a.rev,
            "repoBlocks": st.accounts.block_count(&did)?,
            "indexedRecords": held.records,
            "privateStateValues": 0,
            "expectedBlobs": held.referenced_blobs,
            "importedBlobs": held.stored_blobs,
        })))
    })
    .await
}

#[derive(Deserialize)]
pub(crate) struct CreateAppPassword {
    name: String,
    #[serde(default)]
    privileged: bool,
}

pub(crate) async fn create_app_password(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateAppPassword>,
) -> Res {
    let did = full_session(&st, &headers)?;
    if b.name.trim().is_empty() || b.name.len() > 100 {
        return Err(NodeError::invalid("name must be 1-100 characters"));
    }
    crate::node::blocking(move || {
        let password = {
            use rand::RngCore;
            let mut raw = [0u8; 10];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let s = data_encoding::BASE32_NOPAD.encode(&raw).to_ascii_lowercase();
            format!("{}-{}-{}-{}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
        };
        let hash = app_password_digest(&password);
        let created = crate::node::firehose_time();
        let made =
            credentials::AppPassword { name: b.name.clone(), created_at: created.clone(), privileged: b.privileged };
        credentials::add_app_password(st.accounts.db(), &did, &made, &hash)
            .map_err(|_| NodeError::bad("DuplicateAppPassword", "An app password with this name exists"))?;
        Ok(Json(json!({ "name": b.name, "password": password, "createdAt": created, "privileged": b.privileged })))
    })
    .await
}

pub(crate) async fn list_app_passwords(State(st): State<Arc<Node>>, headers: HeaderMap) -> Res {
    let did = full_session(&st, &headers)?;
    let rows = credentials::app_passwords(st.accounts.db(), &did).map_err(NodeError::internal)?;
    let passwords: Vec<Value> = rows
        .into_iter()
        .map(|p| json!({ "name": p.name, "createdAt": p.created_at, "privileged": p.privileged }))
        .collect();
    Ok(Json(json!({ "passwords": passwords })))
}

#[derive(Deserialize)]
pub(crate) struct RevokeAppPassword {
    name: String,
}

/// Revokes an app password; sessions created with it can no longer refresh.
pub(crate) async fn revoke_app_password(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XJson(b): XJson<RevokeAppPassword>,
) -> Result<StatusCode, NodeError> {
    let did = full_session(&st, &headers)?;
    credentials::revoke_app_password(st.accounts.db(), &did, &b.name).map_err(NodeError::internal)?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct ServiceAuth {
    aud: String,
    exp: Option<u64>,
    lxm: Option<String>,
}

/// `server.getServiceAuth`: a short-lived JWT signed with the account's repository key
/// (`ES256K`/`ES256`), for another service (`aud`) to authenticate the account.
pub(crate) async fn get_service_auth(
    State(st): State<Arc<Node>>,
    headers: HeaderMap,
    XQuery(q): XQuery<ServiceAuth>,
) -> Res {
    let claims = st.access(&headers)?;
    Did::new(&q.aud).map_err(|e| NodeError::invalid(format!("aud must be a DID: {e}")))?;
    // An OAuth grant names the methods and services (`rpc:`); a token for any method is not
    // within one.
    claims.check_rpc(q.lxm.as_deref().unwrap_or("*"), &q.aud)?;
    let now = now_secs();
    let exp = q.exp.unwrap_or(now + 60);
    if exp <= now || exp > now + 3600 {
        return Err(NodeError::bad("BadExpiration", "exp must be in the future and at most an hour away"));
    }
    match &q.lxm {
        Some(lxm) => {
            ues_sync::repo::syntax::Nsid::new(lxm).map_err(|e| NodeError::invalid(e.to_string()))?;
            // Account management is done here, in person, never through another service.
            if PROTECTED_METHODS.contains(&lxm.as_str()) {
                return Err(NodeError::invalid(format!(
                    "cannot request a service auth token for the following protected method: {lxm}"
                )));
            }
            if lxm == "com.atproto.server.createAccount" {
                require_full(&claims)?;
            } else if is_privileged_method(lxm) {
                require_privileged(&claims)?;
            }
        }
        None => {
            // A token for any method is as strong as the session itself: only the account
            // holder's, and short-lived.
            require_full(&claims)?;
            if exp > now + 60 {
                return Err(NodeError::bad(
                    "BadExpiration",
                    "cannot request a method-less token with an expiration more than a minute in the future",
                ));
            }
        }
    }
    let did = Did::new(claims.sub).map_err(NodeError::internal)?;
    Ok(Json(json!({ "token": service_token(&st, &did, &q.aud, q.lxm.as_deref(), exp)? })))
}
