//! com.atproto.server.* and com.atproto.identity.resolveHandle.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};
use ues_sync::repo::accounts::Account;
use ues_sync::repo::crypto::{KeyType, Keypair, PublicKey};
use ues_sync::repo::identity::did_document;
use ues_sync::repo::plc::{Genesis, PlcClient};
use ues_sync::repo::syntax::{Did, Handle};

use crate::node::credentials;

use super::auth::{self, ACCESS_TTL_SECS, Claims, REFRESH_GRACE_SECS, REFRESH_TTL_SECS, now_secs};
use super::extract::{XJson, XQuery};
use super::{XrpcError, XrpcState, bearer};

type Res = Result<Json<Value>, XrpcError>;

pub(crate) async fn describe_server(State(st): State<Arc<XrpcState>>) -> Json<Value> {
    Json(json!({
        "did": st.cfg.service_did,
        "availableUserDomains": st.cfg.user_domains,
        "inviteCodeRequired": false,
        "phoneVerificationRequired": false,
        "links": {},
    }))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct CreateAccount {
    pub(crate) handle: String,
    pub(crate) email: Option<String>,
    pub(crate) password: Option<String>,
    /// A did:key the user keeps, listed as the DID's most authoritative rotation key.
    pub(crate) recovery_key: Option<String>,
}

fn did_doc(st: &XrpcState, account: &Account) -> Result<Value, XrpcError> {
    let key = st.accounts.signing_key(&account.did)?;
    Ok(did_document(&account.did, &account.handle, &key.public(), &st.cfg.public_url))
}

/// What a session was opened with: the account's password, or one of its app passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Credential {
    /// The account password: every method.
    Full,
    /// An app password: records, blobs and reads; never account state, identity, email or app
    /// passwords. A privileged one also reaches chat.
    App {
        /// The app password's name.
        name: String,
        /// Whether it may reach chat (`chat.bsky.*`).
        privileged: bool,
    },
}

impl Credential {
    /// The token scope, as the reference PDS names them.
    fn scope(&self) -> &'static str {
        match self {
            Credential::Full => "com.atproto.access",
            Credential::App { privileged: false, .. } => "com.atproto.appPass",
            Credential::App { privileged: true, .. } => "com.atproto.appPassPrivileged",
        }
    }

    fn name(&self) -> Option<&str> {
        match self {
            Credential::Full => None,
            Credential::App { name, .. } => Some(name),
        }
    }
}

/// Methods an app password must not reach, whatever its privileges: account state, identity,
/// email and app passwords are the account holder's alone (the reference PDS's protected methods).
pub(crate) const PROTECTED_METHODS: &[&str] = &[
    "com.atproto.admin.sendEmail",
    "com.atproto.identity.requestPlcOperationSignature",
    "com.atproto.identity.signPlcOperation",
    "com.atproto.identity.updateHandle",
    "com.atproto.server.activateAccount",
    "com.atproto.server.confirmEmail",
    "com.atproto.server.createAppPassword",
    "com.atproto.server.deactivateAccount",
    "com.atproto.server.deleteAccount",
    "com.atproto.server.getAccountInviteCodes",
    "com.atproto.server.listAppPasswords",
    "com.atproto.server.requestAccountDelete",
    "com.atproto.server.requestEmailConfirmation",
    "com.atproto.server.requestEmailUpdate",
    "com.atproto.server.revokeAppPassword",
    "com.atproto.server.updateEmail",
    "com.atproto.repo.importRepo",
];

/// Whether a method needs a full session or a privileged app password (chat, and creating
/// accounts elsewhere in the account's name).
pub(crate) fn is_privileged_method(nsid: &str) -> bool {
    nsid.starts_with("chat.bsky.") || nsid == "com.atproto.server.createAccount"
}

/// Refuses an app password's token (`InvalidToken`, as the reference answers a token of the
/// wrong scope): for methods only the account holder may call.
pub(crate) fn require_full(claims: &Claims) -> Result<(), XrpcError> {
    if claims.scope == "com.atproto.access" {
        Ok(())
    } else {
        tracing::warn!(did = %claims.sub, scope = %claims.scope, "an app password tried a method of the account holder's");
        Err(XrpcError::bad("InvalidToken", "Bad token scope: app passwords cannot call this method"))
    }
}

/// Refuses a plain app password's token for privileged methods (chat).
pub(crate) fn require_privileged(claims: &Claims) -> Result<(), XrpcError> {
    if matches!(claims.scope.as_str(), "com.atproto.access" | "com.atproto.appPassPrivileged") {
        Ok(())
    } else {
        Err(XrpcError::bad("InvalidToken", "Bad token scope: this method needs a privileged app password"))
    }
}

fn generation_key(did: &str) -> Vec<u8> {
    format!("sessions/gen/{did}").into_bytes()
}

/// The account's session generation (0 until its sessions are first ended).
pub(crate) fn session_generation(st: &XrpcState, did: &str) -> Result<u64, XrpcError> {
    let v = st.kv.get(&generation_key(did)).map_err(XrpcError::internal)?;
    Ok(v.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// A fresh access token.
fn access_token(st: &XrpcState, did: &Did, cred: &Credential) -> Result<String, XrpcError> {
    let now = now_secs();
    let claims = Claims {
        scope: cred.scope().into(),
        sub: did.to_string(),
        aud: st.cfg.service_did.clone(),
        iat: now,
        exp: now + ACCESS_TTL_SECS,
        jti: None,
        generation: Some(session_generation(st, did.as_str())?),
    };
    Ok(auth::sign(&st.cfg.jwt_secret, "at+jwt", &claims))
}

/// Issues a fresh access/refresh pair for `did` (for an app password's session when `cred`
/// names one) and records the refresh token.
fn issue(st: &XrpcState, did: &Did, cred: &Credential) -> Result<(String, String), XrpcError> {
    let now = now_secs();
    let jti = hex_id();
    let refresh = Claims {
        scope: "com.atproto.refresh".into(),
        sub: did.to_string(),
        aud: st.cfg.service_did.clone(),
        iat: now,
        exp: now + REFRESH_TTL_SECS,
        jti: Some(jti.clone()),
        generation: Some(session_generation(st, did.as_str())?),
    };
    let entry = json!({ "did": did.as_str(), "app": cred.name() }).to_string();
    st.kv
        .put(
            format!("refresh/{jti}").as_bytes(),
            entry.as_bytes(),
            Some(std::time::Duration::from_secs(REFRESH_TTL_SECS)),
        )
        .map_err(XrpcError::internal)?;
    Ok((access_token(st, did, cred)?, auth::sign(&st.cfg.jwt_secret, "refresh+jwt", &refresh)))
}

/// Ends every session of `did` issued until now (password change, takedown, deletion): the
/// account's session generation moves on, so every token issued before (even in this very
/// second) is refused from now on, and tokens issued after are not. Kept without expiry: a
/// generation that reset would revive old tokens.
pub(crate) fn revoke_sessions(st: &XrpcState, did: &Did) -> Result<(), XrpcError> {
    let next = session_generation(st, did.as_str())? + 1;
    st.kv.put(&generation_key(did.as_str()), next.to_string().as_bytes(), None).map_err(XrpcError::internal)
}

/// Whether `claims` were issued before the sessions of their subject were last ended.
pub(crate) fn is_revoked(st: &XrpcState, claims: &Claims) -> Result<bool, XrpcError> {
    let current = session_generation(st, &claims.sub)?;
    if let Some(g) = claims.generation {
        return Ok(g < current);
    }
    // A token of an earlier version: ended by any revocation since, or by the time-based
    // revocation earlier versions recorded.
    if current > 0 {
        return Ok(true);
    }
    let at = st.kv.get(format!("revoked/{}", claims.sub).as_bytes()).map_err(XrpcError::internal)?;
    Ok(at.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|t| claims.iat < t))
}

fn hex_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn session_json(st: &XrpcState, account: &Account, access: &str, refresh: &str) -> Result<Value, XrpcError> {
    let email = credentials::email(st.accounts.db(), &account.did).map_err(XrpcError::internal)?;
    let mut out = json!({
        "accessJwt": access,
        "refreshJwt": refresh,
        "handle": account.handle.as_str(),
        "did": account.did.as_str(),
        "didDoc": did_doc(st, account)?,
        "emailConfirmed": false,
        "active": account.status == "active",
    });
    // Optional fields are omitted when absent: clients validate them as strings.
    if let Some(e) = email {
        out["email"] = Value::String(e);
    }
    if account.status != "active" {
        out["status"] = Value::String(account.status.clone());
    }
    Ok(out)
}

pub(crate) async fn create_account(State(st): State<Arc<XrpcState>>, XJson(body): XJson<CreateAccount>) -> Res {
    let handle = Handle::new(&body.handle).map_err(|e| XrpcError::bad("InvalidHandle", e.to_string()))?.normalized();
    if !st.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
        return Err(XrpcError::bad(
            "UnsupportedDomain",
            format!("Not a supported handle domain: {}", st.cfg.user_domains.join(", ")),
        ));
    }
    if st.accounts.by_handle(&handle)?.is_some() {
        return Err(XrpcError::conflict("HandleNotAvailable", "Handle already taken"));
    }
    if let Some(email) = &body.email {
        // Checked before the account exists, so a taken email leaves nothing half made.
        let taken = credentials::did_by_email(st.accounts.db(), email).map_err(XrpcError::internal)?.is_some();
        if taken {
            return Err(XrpcError::conflict("InvalidRequest", "Email already taken"));
        }
    }
    if let Some(p) = &body.password
        && p.len() < 8
    {
        return Err(XrpcError::bad("InvalidPassword", "Password must be at least 8 characters"));
    }
    if let Some(k) = &body.recovery_key
        && PublicKey::from_did_key(k).is_err()
    {
        return Err(XrpcError::invalid("recoveryKey must be a did:key (secp256k1 or P-256)"));
    }
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        let key = Keypair::generate(KeyType::K256);
        // The node's rotation key, not the signing key, controls the DID: the signing key goes
        // to every device of the account; the rotation key never leaves this node. A user's
        // recovery key comes first, outranking the node's (as the reference PDS lists them).
        let rotation = st2.accounts.plc_rotation_key();
        let rotation_keys = body.recovery_key.iter().cloned().chain([rotation.public().did_key()]).collect();
        let genesis = Genesis {
            rotation_keys,
            signing_key: key.public().did_key(),
            handle: handle.to_string(),
            pds_endpoint: st2.cfg.public_url.clone(),
        };
        let (op, did) = genesis.sign(rotation).map_err(XrpcError::internal)?;
        if let Some(url) = &st2.cfg.plc_url {
            PlcClient::new(url).submit(&did, &op).map_err(|e| XrpcError::bad("UnresolvableDid", e.to_string()))?;
        }
        let did = Did::new(did).map_err(XrpcError::internal)?;
        let password_hash = body.password.as_deref().map(auth::hash_password);
        let (account, _, _) = st2.accounts.create_with_key(did.clone(), handle, key)?;
        st2.firehose.notify();
        credentials::insert(st2.accounts.db(), &did, body.email.as_deref(), password_hash.as_deref())
            .map_err(|e| XrpcError::bad("InvalidRequest", format!("Could not store credentials: {e}")))?;
        st2.kv.put(format!("plc/{did}").as_bytes(), op.to_string().as_bytes(), None).map_err(XrpcError::internal)?;
        let (access, refresh) = issue(&st2, &did, &Credential::Full)?;
        let mut out = session_json(&st2, &account, &access, &refresh)?;
        if let Some(o) = out.as_object_mut() {
            o.retain(|k, _| ["accessJwt", "refreshJwt", "handle", "did", "didDoc"].contains(&k.as_str()));
        }
        Ok(Json(out))
    })
    .await
    .map_err(XrpcError::internal)?
}

#[derive(Deserialize)]
pub(crate) struct CreateSession {
    pub(crate) identifier: String,
    pub(crate) password: String,
}

pub(crate) async fn create_session(State(st): State<Arc<XrpcState>>, XJson(body): XJson<CreateSession>) -> Res {
    let st2 = st.clone();
    tokio::task::spawn_blocking(move || {
        let denied = || XrpcError::auth_required("Invalid identifier or password");
        let ident = body.identifier.trim().to_ascii_lowercase();
        let account = if ident.starts_with("did:") {
            Did::new(&ident).ok().and_then(|d| st2.accounts.get(&d).transpose())
        } else if ident.contains('@') {
            let did = credentials::did_by_email(st2.accounts.db(), &ident).map_err(XrpcError::internal)?;
            did.and_then(|d| Did::new(d).ok()).and_then(|d| st2.accounts.get(&d).transpose())
        } else {
            Handle::new(&ident).ok().and_then(|h| st2.accounts.by_handle(&h).transpose())
        };
        let account = account.transpose()?.ok_or_else(denied)?;
        let hash = credentials::password_hash(st2.accounts.db(), &account.did).map_err(XrpcError::internal)?;
        // An app password (recognised by its form: one indexed lookup, no slow hash), or else
        // the account password: at most one Argon2 check per attempt, however many app
        // passwords the account has.
        let app = if looks_like_app_password(&body.password) {
            find_app_password(&st2, &account.did, &body.password)?
        } else {
            None
        };
        let cred = match app {
            Some(c) => c,
            None if hash.is_some_and(|h| auth::check_password(&body.password, &h)) => Credential::Full,
            None => {
                tracing::warn!(did = %account.did, "wrong password");
                return Err(denied());
            }
        };
        if account.status == "takendown" {
            return Err(XrpcError::bad("AccountTakedown", "Account has been taken down"));
        }
        let (access, refresh) = issue(&st2, &account.did, &cred)?;
        Ok(Json(session_json(&st2, &account, &access, &refresh)?))
    })
    .await
    .map_err(XrpcError::internal)?
}

/// Verifies a refresh token and returns its claims (expired: `ExpiredToken`).
fn refresh_claims(st: &XrpcState, headers: &HeaderMap) -> Result<Claims, XrpcError> {
    let claims = auth::verify(&st.cfg.jwt_secret, bearer(headers)?, "refresh+jwt")?;
    if claims.scope != "com.atproto.refresh" || claims.aud != st.cfg.service_did {
        return Err(XrpcError::new(StatusCode::UNAUTHORIZED, "InvalidToken", "Bad token scope"));
    }
    if claims.exp <= now_secs() {
        return Err(XrpcError::bad("ExpiredToken", "Token has expired"));
    }
    if is_revoked(st, &claims)? {
        return Err(XrpcError::bad("ExpiredToken", "Token has been revoked"));
    }
    Ok(claims)
}

pub(crate) async fn refresh_session(State(st): State<Arc<XrpcState>>, headers: HeaderMap) -> Res {
    let claims = refresh_claims(&st, &headers)?;
    let jti = claims.jti.clone().unwrap_or_default();
    let key = format!("refresh/{jti}");
    let entry = st.kv.get(key.as_bytes()).map_err(XrpcError::internal)?;
    let Some(entry) = entry else {
        return Err(XrpcError::bad("ExpiredToken", "Token has been revoked"));
    };
    let entry: Value = serde_json::from_slice(&entry).map_err(XrpcError::internal)?;
    let did = Did::new(claims.sub.clone()).map_err(XrpcError::internal)?;
    let account = st.accounts.get(&did)?.ok_or_else(|| XrpcError::bad("InvalidToken", "Account not found"))?;
    let app = entry.get("app").and_then(Value::as_str).map(str::to_string);
    let cred = match &app {
        None => Credential::Full,
        Some(name) => {
            // The app password must still exist; its privileges are read afresh.
            let privileged =
                credentials::app_password_privileged(st.accounts.db(), &did, name).map_err(XrpcError::internal)?;
            let Some(privileged) = privileged else {
                return Err(XrpcError::bad("ExpiredToken", "The app password was revoked"));
            };
            Credential::App { name: name.clone(), privileged }
        }
    };
    // A token used within the grace period yields the same successor (clients race).
    if let Some(next) = entry.get("next").and_then(Value::as_str) {
        return Ok(Json(session_json(&st, &account, &access_token(&st, &did, &cred)?, next)?));
    }
    let (access, refresh) = issue(&st, &did, &cred)?;
    let successor = json!({ "did": did.as_str(), "app": app, "next": refresh }).to_string();
    st.kv
        .put(key.as_bytes(), successor.as_bytes(), Some(std::time::Duration::from_secs(REFRESH_GRACE_SECS)))
        .map_err(XrpcError::internal)?;
    Ok(Json(session_json(&st, &account, &access, &refresh)?))
}

pub(crate) async fn get_session(State(st): State<Arc<XrpcState>>, headers: HeaderMap) -> Res {
    let claims = st.access(&headers)?;
    let did = Did::new(claims.sub).map_err(XrpcError::internal)?;
    let account = st.accounts.get(&did)?.ok_or_else(|| XrpcError::bad("InvalidToken", "Account not found"))?;
    let mut out = session_json(&st, &account, "", "")?;
    if let Some(o) = out.as_object_mut() {
        o.remove("accessJwt");
        o.remove("refreshJwt");
    }
    Ok(Json(out))
}

pub(crate) async fn delete_session(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
) -> Result<StatusCode, XrpcError> {
    let claims = refresh_claims(&st, &headers)?;
    let jti = claims.jti.unwrap_or_default();
    st.kv.delete(format!("refresh/{jti}").as_bytes()).map_err(XrpcError::internal)?;
    Ok(StatusCode::OK)
}

#[derive(Deserialize)]
pub(crate) struct ResolveHandle {
    handle: String,
}

/// `identity.resolveHandle`: this node's accounts first; a handle under one of the node's own
/// domains that no account holds is not found; any other handle is resolved as the handle
/// specification says (DNS TXT, then HTTPS).
pub(crate) async fn resolve_handle(State(st): State<Arc<XrpcState>>, XQuery(q): XQuery<ResolveHandle>) -> Res {
    let handle = Handle::new(&q.handle).map_err(|e| XrpcError::invalid(e.to_string()))?.normalized();
    if let Some(a) = st.accounts.by_handle(&handle)? {
        return Ok(Json(json!({ "did": a.did.as_str() })));
    }
    if st.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
        return Err(XrpcError::bad("HandleNotFound", "Unable to resolve handle"));
    }
    super::blocking(move || match st.cfg.handle_resolver.resolve(&handle) {
        Ok(did) => Ok(Json(json!({ "did": did.as_str() }))),
        Err(e) => {
            tracing::info!(error = %e, "handle did not resolve");
            Err(XrpcError::bad("HandleNotFound", "Unable to resolve handle"))
        }
    })
    .await
}

/// `/.well-known/atproto-did`: the DID of the account whose handle is this request's host.
pub(crate) async fn well_known_atproto_did(
    State(st): State<Arc<XrpcState>>,
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
pub(crate) async fn well_known_did_json(State(st): State<Arc<XrpcState>>) -> Json<Value> {
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
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<UpdateHandle>,
) -> Result<StatusCode, XrpcError> {
    let did = full_session(&st, &headers)?;
    super::blocking(move || {
        let handle = Handle::new(&b.handle).map_err(|e| XrpcError::bad("InvalidHandle", e.to_string()))?.normalized();
        if !st.cfg.user_domains.iter().any(|d| handle.as_str().ends_with(d.as_str())) {
            st.cfg.handle_resolver.verify(&handle, &did).map_err(|e| {
                tracing::info!(error = %e, "external handle refused");
                XrpcError::bad("InvalidHandle", format!("External handle did not resolve to DID: {e}"))
            })?;
        }
        change_handle(&st, &did, &handle)?;
        Ok(StatusCode::OK)
    })
    .await
}

/// Moves an account to `handle`: a PLC update operation first when a directory is configured,
/// then the account row and the `#identity` event.
pub(crate) fn change_handle(st: &XrpcState, did: &Did, handle: &Handle) -> Result<(), XrpcError> {
    if let Some(url) = &st.cfg.plc_url {
        let key = st.accounts.signing_key(did)?;
        let last = st
            .kv
            .get(format!("plc/{did}").as_bytes())
            .map_err(XrpcError::internal)?
            .ok_or_else(|| XrpcError::internal("no PLC operation stored"))?;
        let last: Value = serde_json::from_slice(&last).map_err(XrpcError::internal)?;
        let prev = ues_sync::repo::plc::operation_cid(&last).map_err(XrpcError::internal)?;
        let (rotation_keys, signer) = next_rotation_keys(st, &last, &key)?;
        let state = Genesis {
            rotation_keys,
            signing_key: key.public().did_key(),
            handle: handle.to_string(),
            pds_endpoint: st.cfg.public_url.clone(),
        };
        let op = state.update(&prev.to_string(), &signer).map_err(XrpcError::internal)?;
        PlcClient::new(url).submit(did.as_str(), &op).map_err(|e| XrpcError::bad("UnresolvableDid", e.to_string()))?;
        st.kv.put(format!("plc/{did}").as_bytes(), op.to_string().as_bytes(), None).map_err(XrpcError::internal)?;
    }
    st.accounts.update_handle(did, handle).map_err(|e| match e {
        ues_sync::repo::accounts::AccountError::Taken(_) => {
            XrpcError::conflict("HandleNotAvailable", "Handle already taken")
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
    st: &XrpcState,
    last: &Value,
    signing: &Keypair,
) -> Result<(Vec<String>, Keypair), XrpcError> {
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
        return Err(XrpcError::bad(
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

async fn set_status(st: Arc<XrpcState>, headers: HeaderMap, status: &'static str) -> Result<StatusCode, XrpcError> {
    let did = full_session(&st, &headers)?;
    super::blocking(move || {
        st.accounts.set_status(&did, status)?;
        st.firehose.notify();
        Ok(StatusCode::OK)
    })
    .await
}

pub(crate) async fn activate_account(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
) -> Result<StatusCode, XrpcError> {
    set_status(st, headers, "active").await
}

pub(crate) async fn deactivate_account(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
) -> Result<StatusCode, XrpcError> {
    set_status(st, headers, "deactivated").await
}

pub(crate) async fn check_account_status(State(st): State<Arc<XrpcState>>, headers: HeaderMap) -> Res {
    let claims = st.access(&headers)?;
    super::blocking(move || {
        let did = Did::new(claims.sub).map_err(XrpcError::internal)?;
        let a = st.accounts.get(&did)?.ok_or_else(|| XrpcError::bad("RepoNotFound", "no such account"))?;
        let held = st.accounts.holdings(&did)?;
        Ok(Json(json!({
            "activated": a.status == "active",
            "validDid": true,
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

/// The account of a full session (the account password's): account state, identity and app
/// passwords are managed with it only.
pub(crate) fn full_session(st: &XrpcState, headers: &HeaderMap) -> Result<Did, XrpcError> {
    let claims = st.access(headers)?;
    require_full(&claims)?;
    Did::new(claims.sub).map_err(XrpcError::internal)
}

/// App passwords read `abcd-efgh-ijkl-mnop` (base32, lower case), as the reference makes them.
fn looks_like_app_password(p: &str) -> bool {
    p.len() == 19
        && p.split('-').count() == 4
        && p.split('-').all(|g| g.len() == 4 && g.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')))
}

/// How an app password is stored. It is random (80 bits), so a fast hash resists guessing as
/// well as a slow one would, and one indexed lookup finds it: a wrong password costs no slow
/// hash per app password.
fn app_password_digest(password: &str) -> String {
    use sha2::Digest;
    format!("sha256${}", data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(password.as_bytes())))
}

/// The app password of `did` that `password` is, if any.
fn find_app_password(st: &XrpcState, did: &Did, password: &str) -> Result<Option<Credential>, XrpcError> {
    let digest = app_password_digest(password);
    let db = st.accounts.db();
    let found = credentials::app_password_by_digest(db, did, &digest).map_err(XrpcError::internal)?;
    if let Some((name, privileged)) = found {
        return Ok(Some(Credential::App { name, privileged }));
    }
    // Earlier versions stored Argon2 hashes: each is checked once and rewritten on success.
    let legacy = credentials::argon2_app_passwords(db, did).map_err(XrpcError::internal)?;
    for (name, hash, privileged) in legacy {
        if auth::check_password(password, &hash) {
            credentials::set_app_password_hash(db, did, &name, &digest).map_err(XrpcError::internal)?;
            return Ok(Some(Credential::App { name, privileged }));
        }
    }
    Ok(None)
}

pub(crate) async fn create_app_password(
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<CreateAppPassword>,
) -> Res {
    let did = full_session(&st, &headers)?;
    if b.name.trim().is_empty() || b.name.len() > 100 {
        return Err(XrpcError::invalid("name must be 1-100 characters"));
    }
    super::blocking(move || {
        let password = {
            use rand::RngCore;
            let mut raw = [0u8; 10];
            rand::rngs::OsRng.fill_bytes(&mut raw);
            let s = data_encoding::BASE32_NOPAD.encode(&raw).to_ascii_lowercase();
            format!("{}-{}-{}-{}", &s[0..4], &s[4..8], &s[8..12], &s[12..16])
        };
        let hash = app_password_digest(&password);
        let created = super::firehose_time();
        let made =
            credentials::AppPassword { name: b.name.clone(), created_at: created.clone(), privileged: b.privileged };
        credentials::add_app_password(st.accounts.db(), &did, &made, &hash)
            .map_err(|_| XrpcError::bad("DuplicateAppPassword", "An app password with this name exists"))?;
        Ok(Json(json!({ "name": b.name, "password": password, "createdAt": created, "privileged": b.privileged })))
    })
    .await
}

pub(crate) async fn list_app_passwords(State(st): State<Arc<XrpcState>>, headers: HeaderMap) -> Res {
    let did = full_session(&st, &headers)?;
    let rows = credentials::app_passwords(st.accounts.db(), &did).map_err(XrpcError::internal)?;
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
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XJson(b): XJson<RevokeAppPassword>,
) -> Result<StatusCode, XrpcError> {
    let did = full_session(&st, &headers)?;
    credentials::revoke_app_password(st.accounts.db(), &did, &b.name).map_err(XrpcError::internal)?;
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
    State(st): State<Arc<XrpcState>>,
    headers: HeaderMap,
    XQuery(q): XQuery<ServiceAuth>,
) -> Res {
    let claims = st.access(&headers)?;
    Did::new(&q.aud).map_err(|e| XrpcError::invalid(format!("aud must be a DID: {e}")))?;
    let now = now_secs();
    let exp = q.exp.unwrap_or(now + 60);
    if exp <= now || exp > now + 3600 {
        return Err(XrpcError::bad("BadExpiration", "exp must be in the future and at most an hour away"));
    }
    match &q.lxm {
        Some(lxm) => {
            ues_sync::repo::syntax::Nsid::new(lxm).map_err(|e| XrpcError::invalid(e.to_string()))?;
            // Account management is done here, in person, never through another service.
            if PROTECTED_METHODS.contains(&lxm.as_str()) {
                return Err(XrpcError::invalid(format!(
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
                return Err(XrpcError::bad(
                    "BadExpiration",
                    "cannot request a method-less token with an expiration more than a minute in the future",
                ));
            }
        }
    }
    let did = Did::new(claims.sub).map_err(XrpcError::internal)?;
    Ok(Json(json!({ "token": service_token(&st, &did, &q.aud, q.lxm.as_deref(), exp)? })))
}

/// A service-auth JWT (`iss` the account, signed with its repository key, ES256K or ES256) for
/// another service `aud`, optionally bound to one method `lxm`, expiring at `exp`.
pub(crate) fn service_token(
    st: &XrpcState,
    did: &Did,
    aud: &str,
    lxm: Option<&str>,
    exp: u64,
) -> Result<String, XrpcError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let key = st.accounts.signing_key(did)?;
    let header = URL_SAFE_NO_PAD.encode(json!({ "typ": "JWT", "alg": key.key_type().jwt_alg() }).to_string());
    let mut payload = json!({ "iss": did.as_str(), "aud": aud, "exp": exp, "iat": now_secs(), "jti": hex_id() });
    if let Some(lxm) = lxm {
        payload["lxm"] = Value::String(lxm.to_string());
    }
    let signing_input = format!("{header}.{}", URL_SAFE_NO_PAD.encode(payload.to_string()));
    let sig = key.sign(signing_input.as_bytes());
    Ok(format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig)))
}
