//! Session tokens as the reference PDS issues them: HS256 JWTs, access (`at+jwt`, 2 hours) and
//! refresh (`refresh+jwt`, 90 days, single use, rotated with a 2-hour grace for racing clients).
//! Passwords are hashed with Argon2id. App passwords and their scopes, the ending of sessions,
//! and the service-auth tokens an account signs for other services live here too: every face
//! authenticates through this module.
//!
//! Session tokens are made and checked by `jsonwebtoken`. Service-auth tokens are signed here by
//! hand: they are ES256K (secp256k1), which `jsonwebtoken` does not offer, with the account's
//! repository key.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use ues_sync::repo::syntax::Did;

use super::{Node, NodeError, credentials};

/// Access-token lifetime.
pub(crate) const ACCESS_TTL_SECS: u64 = 2 * 3600;
/// Refresh-token lifetime.
pub(crate) const REFRESH_TTL_SECS: u64 = 90 * 24 * 3600;
/// How long a used refresh token still yields the same successor (clients race).
pub(crate) const REFRESH_GRACE_SECS: u64 = 2 * 3600;

/// Token claims.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    /// `com.atproto.access`, `com.atproto.refresh` or `com.atproto.appPass`.
    pub scope: String,
    /// The account DID.
    pub sub: String,
    /// The service DID.
    pub aud: String,
    /// Issued at (seconds).
    pub iat: u64,
    /// Expires at (seconds).
    pub exp: u64,
    /// Token id (refresh tokens).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    /// The account's session generation when the token was issued: ending every session bumps
    /// it, so a token issued a moment before (even in the same second) is refused and one issued
    /// after is not. Absent in tokens of earlier versions.
    #[serde(rename = "gen", default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// The key a token is bound to (an OAuth access token's `cnf`): such a token is good only
    /// with a DPoP proof of that key, never as a bearer token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cnf: Option<serde_json::Value>,
    /// The OAuth session an access token belongs to (ended sessions' tokens are refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// What an OAuth session's scope grants (set when its access token is checked; `None` for
    /// the node's own session tokens, which the scope checks let through).
    #[serde(skip)]
    pub permissions: Option<std::sync::Arc<super::scopes::Permissions>>,
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Signs claims into a compact JWT (HS256) whose header `typ` is `typ`.
pub(crate) fn sign(secret: &[u8], typ: &str, claims: &Claims) -> String {
    let header = Header { typ: Some(typ.to_string()), ..Header::new(Algorithm::HS256) };
    let key = EncodingKey::from_secret(secret).expect("an HMAC key of any length");
    jsonwebtoken::encode(&header, claims, &key).expect("HS256 signs any claims")
}

/// Verifies a JWT's signature (HS256 only) and type; expiry, audience and scope are checked by
/// the caller, so that an expired access token can be told apart (`ExpiredToken`) from a bad one.
pub(crate) fn verify(secret: &[u8], token: &str, want_typ: &str) -> Result<Claims, NodeError> {
    let bad = || NodeError::new(StatusCode::UNAUTHORIZED, "InvalidToken", "Token could not be verified");
    let mut checks = Validation::new(Algorithm::HS256);
    checks.validate_exp = false;
    checks.validate_aud = false;
    checks.required_spec_claims.clear();
    let key = DecodingKey::from_secret(secret).map_err(|_| bad())?;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &checks).map_err(|_| bad())?;
    if data.header.typ.as_deref() != Some(want_typ) {
        return Err(bad());
    }
    Ok(data.claims)
}

/// Hashes a password with Argon2id (memory-hard; a fresh salt each time).
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    argon2::Argon2::default().hash_password(password.as_bytes(), &salt).expect("argon2 with default params").to_string()
}

/// Checks a password against a stored Argon2 hash.
pub fn check_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| argon2::Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
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
    pub(crate) fn scope(&self) -> &'static str {
        match self {
            Credential::Full => "com.atproto.access",
            Credential::App { privileged: false, .. } => "com.atproto.appPass",
            Credential::App { privileged: true, .. } => "com.atproto.appPassPrivileged",
        }
    }

    pub(crate) fn name(&self) -> Option<&str> {
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
pub(crate) fn require_full(claims: &Claims) -> Result<(), NodeError> {
    if claims.scope == "com.atproto.access" {
        Ok(())
    } else {
        tracing::warn!(did = %claims.sub, scope = %claims.scope, "an app password tried a method of the account holder's");
        Err(NodeError::token("InvalidToken", "Bad token scope: app passwords cannot call this method"))
    }
}

/// Refuses a plain app password's token for privileged methods (chat).
pub fn require_privileged(claims: &Claims) -> Result<(), NodeError> {
    if matches!(claims.scope.as_str(), "com.atproto.access" | "com.atproto.appPassPrivileged") {
        Ok(())
    } else {
        Err(NodeError::token("InvalidToken", "Bad token scope: this method needs a privileged app password"))
    }
}

pub(crate) fn generation_key(did: &str) -> Vec<u8> {
    format!("sessions/gen/{did}").into_bytes()
}

/// The account's session generation (0 until its sessions are first ended).
pub(crate) fn session_generation(st: &Node, did: &str) -> Result<u64, NodeError> {
    let v = st.kv.get(&generation_key(did)).map_err(NodeError::internal)?;
    Ok(v.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse().ok()).unwrap_or(0))
}

/// A fresh access token.
pub(crate) fn access_token(st: &Node, did: &Did, cred: &Credential) -> Result<String, NodeError> {
    let now = now_secs();
    let claims = Claims {
        scope: cred.scope().into(),
        sub: did.to_string(),
        aud: st.cfg.service_did.clone(),
        iat: now,
        exp: now + ACCESS_TTL_SECS,
        jti: None,
        generation: Some(session_generation(st, did.as_str())?),
        cnf: None,
        sid: None,
        permissions: None,
    };
    Ok(sign(&st.cfg.jwt_secret, "at+jwt", &claims))
}

/// Issues a fresh access/refresh pair for `did` (for an app password's session when `cred`
/// names one) and records the refresh token.
pub(crate) fn issue(st: &Node, did: &Did, cred: &Credential) -> Result<(String, String), NodeError> {
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
        cnf: None,
        sid: None,
        permissions: None,
    };
    let entry = json!({ "did": did.as_str(), "app": cred.name() }).to_string();
    st.kv
        .put(
            format!("refresh/{jti}").as_bytes(),
            entry.as_bytes(),
            Some(std::time::Duration::from_secs(REFRESH_TTL_SECS)),
        )
        .map_err(NodeError::internal)?;
    Ok((access_token(st, did, cred)?, sign(&st.cfg.jwt_secret, "refresh+jwt", &refresh)))
}

/// Ends every session of `did` issued until now (password change, takedown, deletion): the
/// account's session generation moves on, so every token issued before (even in this very
/// second) is refused from now on, and tokens issued after are not. Kept without expiry: a
/// generation that reset would revive old tokens.
pub(crate) fn revoke_sessions(st: &Node, did: &Did) -> Result<(), NodeError> {
    let next = session_generation(st, did.as_str())? + 1;
    st.kv.put(&generation_key(did.as_str()), next.to_string().as_bytes(), None).map_err(NodeError::internal)
}

/// Whether `claims` were issued before the sessions of their subject were last ended.
pub(crate) fn is_revoked(st: &Node, claims: &Claims) -> Result<bool, NodeError> {
    let current = session_generation(st, &claims.sub)?;
    if let Some(g) = claims.generation {
        return Ok(g < current);
    }
    // A token of an earlier version: ended by any revocation since, or by the time-based
    // revocation earlier versions recorded.
    if current > 0 {
        return Ok(true);
    }
    let at = st.kv.get(format!("revoked/{}", claims.sub).as_bytes()).map_err(NodeError::internal)?;
    Ok(at.and_then(|v| String::from_utf8(v).ok()).and_then(|v| v.parse::<u64>().ok()).is_some_and(|t| claims.iat < t))
}

pub(crate) fn hex_id() -> String {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Verifies a refresh token and returns its claims (expired: `ExpiredToken`).
pub(crate) fn refresh_claims(st: &Node, token: &str) -> Result<Claims, NodeError> {
    let claims = verify(&st.cfg.jwt_secret, token, "refresh+jwt")?;
    if claims.scope != "com.atproto.refresh" || claims.aud != st.cfg.service_did {
        return Err(NodeError::new(StatusCode::UNAUTHORIZED, "InvalidToken", "Bad token scope"));
    }
    if claims.exp <= now_secs() {
        return Err(NodeError::token("ExpiredToken", "Token has expired"));
    }
    if is_revoked(st, &claims)? {
        return Err(NodeError::token("ExpiredToken", "Token has been revoked"));
    }
    Ok(claims)
}

/// The account of a full session (the account password's): account state, identity and app
/// passwords are managed with it only.
pub(crate) fn full_session(st: &Node, headers: &HeaderMap) -> Result<Did, NodeError> {
    let claims = st.access(headers)?;
    require_full(&claims)?;
    Did::new(claims.sub).map_err(NodeError::internal)
}

/// App passwords read `abcd-efgh-ijkl-mnop` (base32, lower case), as the reference makes them.
pub(crate) fn looks_like_app_password(p: &str) -> bool {
    p.len() == 19
        && p.split('-').count() == 4
        && p.split('-').all(|g| g.len() == 4 && g.bytes().all(|b| matches!(b, b'a'..=b'z' | b'2'..=b'7')))
}

/// How an app password is stored. It is random (80 bits), so a fast hash resists guessing as
/// well as a slow one would, and one indexed lookup finds it: a wrong password costs no slow
/// hash per app password.
pub(crate) fn app_password_digest(password: &str) -> String {
    use sha2::Digest;
    format!("sha256${}", data_encoding::HEXLOWER.encode(&sha2::Sha256::digest(password.as_bytes())))
}

/// The app password of `did` that `password` is, if any.
pub(crate) fn find_app_password(st: &Node, did: &Did, password: &str) -> Result<Option<Credential>, NodeError> {
    let digest = app_password_digest(password);
    let db = st.accounts.db();
    let found = credentials::app_password_by_digest(db, did, &digest).map_err(NodeError::internal)?;
    if let Some((name, privileged)) = found {
        return Ok(Some(Credential::App { name, privileged }));
    }
    // Earlier versions stored Argon2 hashes: each is checked once and rewritten on success.
    let legacy = credentials::argon2_app_passwords(db, did).map_err(NodeError::internal)?;
    for (name, hash, privileged) in legacy {
        if check_password(password, &hash) {
            credentials::set_app_password_hash(db, did, &name, &digest).map_err(NodeError::internal)?;
            return Ok(Some(Credential::App { name, privileged }));
        }
    }
    Ok(None)
}

/// A service-auth JWT (`iss` the account, signed with its repository key, ES256K or ES256) for
/// another service `aud`, optionally bound to one method `lxm`, expiring at `exp`.
pub(crate) fn service_token(st: &Node, did: &Did, aud: &str, lxm: Option<&str>, exp: u64) -> Result<String, NodeError> {
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

/// Longest service-auth token read.
const MAX_SERVICE_TOKEN: usize = 4096;

/// Verifies a service-auth JWT another PDS issued for its account (`iss`) to call `lxm` here:
/// audience this node, not expired, bound to `lxm`, signed by the key `iss`'s DID document
/// names (resolved again once if the cached one does not verify, as keys rotate), and not seen
/// before (its `jti` is remembered until it expires). Returns the account's DID.
pub(crate) fn verify_service_token(st: &Node, token: &str, lxm: &str) -> Result<Did, NodeError> {
    let me = st.cfg.service_did.as_str();
    verify_service_token_for(st, token, lxm, &|aud| aud == me).map(|(did, _)| did)
}

/// [`verify_service_token`] for a token whose audience `aud_ok` accepts (an account held here,
/// for calls made to one account rather than to the node): returns the issuer and audience.
pub(crate) fn verify_service_token_for(
    st: &Node,
    token: &str,
    lxm: &str,
    aud_ok: &dyn Fn(&str) -> bool,
) -> Result<(Did, String), NodeError> {
    use base64::Engine;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let bad = |m: &str| NodeError::auth_required(format!("Invalid service auth token: {m}"));
    if token.len() > MAX_SERVICE_TOKEN {
        return Err(bad("too long"));
    }
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad("not a JWT"));
    };
    let decode = |s: &str| URL_SAFE_NO_PAD.decode(s).map_err(|_| bad("not base64url"));
    let header: Value = serde_json::from_slice(&decode(h)?).map_err(|_| bad("header is not JSON"))?;
    let payload: Value = serde_json::from_slice(&decode(p)?).map_err(|_| bad("payload is not JSON"))?;
    let sig = decode(sig)?;
    if !matches!(header["alg"].as_str(), Some("ES256K" | "ES256")) {
        return Err(bad("alg must be ES256K or ES256"));
    }
    // Not a session token of this node's passed off as a service token.
    if matches!(header["typ"].as_str(), Some("at+jwt" | "refresh+jwt" | "dpop+jwt")) {
        return Err(bad("wrong token type"));
    }
    let iss = payload["iss"].as_str().ok_or_else(|| bad("no iss"))?;
    let did = Did::new(iss.split('#').next().unwrap_or(iss)).map_err(|_| bad("iss is not a DID"))?;
    let aud = payload["aud"].as_str().unwrap_or_default().to_string();
    if !aud_ok(&aud) {
        return Err(bad("aud is not this server"));
    }
    let exp = payload["exp"].as_u64().ok_or_else(|| bad("no exp"))?;
    if exp <= now_secs() {
        return Err(NodeError::token("JwtExpired", "jwt expired"));
    }
    match payload["lxm"].as_str() {
        Some(m) if m == lxm => {}
        Some(_) => return Err(NodeError::auth_required(format!("bad jwt lexicon method (\"lxm\"), expected {lxm}"))),
        None => return Err(NodeError::auth_required("missing jwt lexicon method (\"lxm\")")),
    }
    let signed = format!("{h}.{p}");
    let key_of =
        |doc: Value| ues_sync::repo::identity::parse_did_document(&doc, &did).ok().and_then(|id| id.signing_key);
    let verifies = |doc: Value| key_of(doc).is_some_and(|k| k.verify(signed.as_bytes(), &sig).is_ok());
    let doc = st.dids.resolve(&did).map_err(|e| bad(&e.to_string()))?;
    if !verifies(doc) {
        let fresh = st.dids.refresh(&did).map_err(|e| bad(&e.to_string()))?;
        if !verifies(fresh) {
            tracing::warn!(%did, lxm, "service auth token with a bad signature");
            return Err(bad("signature does not verify with the DID's signing key"));
        }
    }
    if let Some(jti) = payload["jti"].as_str() {
        let key = format!("service-jti/{}", app_password_digest(jti));
        if st.kv.get(key.as_bytes()).map_err(NodeError::internal)?.is_some() {
            tracing::warn!(%did, lxm, "service auth token replayed");
            return Err(bad("token already used"));
        }
        let ttl = std::time::Duration::from_secs(exp.saturating_sub(now_secs()).min(3600) + 60);
        st.kv.put(key.as_bytes(), b"1", Some(ttl)).map_err(NodeError::internal)?;
    }
    Ok((did, aud))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_round_trip_and_tampering() {
        let c = Claims {
            scope: "com.atproto.access".into(),
            sub: "did:plc:x".into(),
            aud: "did:web:h".into(),
            iat: 1,
            exp: 2,
            jti: None,
            generation: Some(3),
            cnf: None,
            sid: None,
            permissions: None,
        };
        let t = sign(b"secret", "at+jwt", &c);
        assert_eq!(verify(b"secret", &t, "at+jwt").unwrap(), c);
        assert!(verify(b"other", &t, "at+jwt").is_err());
        assert!(verify(b"secret", &t, "refresh+jwt").is_err());
        let mut forged = t.clone();
        forged.insert(t.find('.').unwrap() + 2, 'A');
        assert!(verify(b"secret", &forged, "at+jwt").is_err());
    }

    #[test]
    fn passwords() {
        let h = hash_password("hunter2");
        assert!(check_password("hunter2", &h));
        assert!(!check_password("hunter3", &h));
        assert!(!check_password("hunter2", "not a hash"));
    }
}
