//! Session tokens as the reference PDS issues them: HS256 JWTs, access (`at+jwt`, 2 hours) and
//! refresh (`refresh+jwt`, 90 days, single use, rotated with a 2-hour grace for racing clients).
//! Passwords are hashed with Argon2id.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::XrpcError;

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
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn mac(secret: &[u8]) -> Hmac<Sha256> {
    Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length")
}

/// Signs claims into a compact JWT.
pub(crate) fn sign(secret: &[u8], typ: &str, claims: &Claims) -> String {
    let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"typ":"{typ}","alg":"HS256"}}"#));
    let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).expect("claims serialise"));
    let signing_input = format!("{header}.{payload}");
    let mut m = mac(secret);
    m.update(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(m.finalize().into_bytes()))
}

/// Verifies a JWT's signature, type and scope; expiry is checked by the caller so that an
/// expired access token can be told apart (`ExpiredToken`) from a bad one.
pub(crate) fn verify(secret: &[u8], token: &str, want_typ: &str) -> Result<Claims, XrpcError> {
    let bad = || XrpcError::new(axum::http::StatusCode::UNAUTHORIZED, "InvalidToken", "Token could not be verified");
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(sig), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    let sig = URL_SAFE_NO_PAD.decode(sig).map_err(|_| bad())?;
    let mut m = mac(secret);
    m.update(format!("{h}.{p}").as_bytes());
    m.verify_slice(&sig).map_err(|_| bad())?;
    let header: serde_json::Value =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).map_err(|_| bad())?).map_err(|_| bad())?;
    if header.get("typ").and_then(|t| t.as_str()) != Some(want_typ)
        || header.get("alg").and_then(|a| a.as_str()) != Some("HS256")
    {
        return Err(bad());
    }
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(p).map_err(|_| bad())?).map_err(|_| bad())
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
