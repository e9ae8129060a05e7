//! DPoP proofs (RFC 9449) as the AT Protocol OAuth profile requires them on every token
//! request and every call made with an OAuth access token: a JWT (`typ` `dpop+jwt`, `ES256`)
//! signed by the client's session key, which travels in its header as a public JWK, naming the
//! request's method (`htm`) and URL (`htu`), fresh (`iat`), unique (`jti`), carrying a nonce
//! this server issued and, with an access token, that token's hash (`ath`). The key's
//! thumbprint (RFC 7638) is what access tokens are bound to (`cnf.jkt`).
//!
//! Nonces are derived from a secret and the current minute, so none is stored: one is good for
//! the minute it was issued in and the next two (the profile allows at most five minutes).
//! `jti`s are remembered for as long as a proof is accepted ([`MAX_AGE`] both ways), at most
//! [`MAX_JTIS`] of them; past that, proofs are refused until older ones expire, rather than
//! remembered less.

use std::collections::{HashMap, VecDeque};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, ThumbprintHash};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// How far a proof's `iat` may be from the server's clock, either way.
pub const MAX_AGE: u64 = 60;

/// Proof `jti`s remembered at once.
pub const MAX_JTIS: usize = 100_000;

/// Longest proof read.
pub const MAX_PROOF: usize = 8 * 1024;

/// Seconds a nonce is issued for; one is accepted for this and the two after.
const NONCE_WINDOW: u64 = 60;

/// Why a proof is refused, as the token endpoint and resource server answer it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DpopError {
    /// No nonce, or a stale one: the answer carries a fresh one (`DPoP-Nonce`) and the error
    /// `use_dpop_nonce`.
    #[error("use_dpop_nonce")]
    UseNonce,
    /// Anything else wrong with the proof (`invalid_dpop_proof`).
    #[error("invalid_dpop_proof: {0}")]
    Invalid(String),
}

/// A proof that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proof {
    /// The thumbprint of the key that signed it (what tokens are bound to).
    pub jkt: String,
    /// Its `jti`.
    pub jti: String,
}

#[derive(Deserialize)]
struct Claims {
    jti: String,
    htm: String,
    htu: String,
    iat: u64,
    nonce: Option<String>,
    ath: Option<String>,
}

/// `jti`s seen, with when each may be forgotten, oldest first.
#[derive(Default)]
struct Jtis {
    seen: HashMap<String, u64>,
    order: VecDeque<(u64, String)>,
}

/// Issues nonces and verifies proofs.
pub struct Dpop {
    secret: [u8; 32],
    jtis: parking_lot::Mutex<Jtis>,
}

impl std::fmt::Debug for Dpop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dpop").finish_non_exhaustive()
    }
}

impl Default for Dpop {
    fn default() -> Self {
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut secret);
        Self { secret, jtis: parking_lot::Mutex::new(Default::default()) }
    }
}

fn now() -> u64 {
    super::auth::now_secs()
}

/// `htu` as compared: scheme and host lower case, no query or fragment.
fn normalize_url(url: &str) -> String {
    let url = url.split(['?', '#']).next().unwrap_or("");
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (host, path) = rest.split_once('/').map_or((rest, ""), |(h, p)| (h, p));
            format!("{}://{}/{path}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase())
        }
        None => url.to_string(),
    }
}

impl Dpop {
    fn nonce_at(&self, window: u64) -> String {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(window.to_be_bytes());
        URL_SAFE_NO_PAD.encode(&h.finalize()[..16])
    }

    /// The nonce to send now (`DPoP-Nonce`).
    pub fn nonce(&self) -> String {
        self.nonce_at(now() / NONCE_WINDOW)
    }

    fn nonce_good(&self, nonce: &str) -> bool {
        let w = now() / NONCE_WINDOW;
        (0..3).any(|back| w >= back && self.nonce_at(w - back) == nonce)
    }

    /// Checks `proof` for a request `htm` `htu` (and, when the request carries an access
    /// token, that token), and remembers its `jti`.
    pub fn verify(&self, proof: &str, htm: &str, htu: &str, access_token: Option<&str>) -> Result<Proof, DpopError> {
        let bad = |m: &str| DpopError::Invalid(m.to_string());
        if proof.len() > MAX_PROOF {
            return Err(bad("proof too long"));
        }
        let header = jsonwebtoken::decode_header(proof).map_err(|e| bad(&format!("malformed proof: {e}")))?;
        if header.typ.as_deref() != Some("dpop+jwt") {
            return Err(bad("typ must be dpop+jwt"));
        }
        if header.alg != Algorithm::ES256 {
            return Err(bad("alg must be ES256"));
        }
        let jwk: Jwk = header.jwk.ok_or_else(|| bad("no jwk in the header"))?;
        // A private key in the header is a client bug that must not be rewarded.
        let raw = proof.split('.').next().unwrap_or("");
        let head: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(raw).unwrap_or_default())
            .map_err(|_| bad("malformed header"))?;
        if head["jwk"].get("d").is_some() {
            return Err(bad("the jwk holds a private key"));
        }
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| bad(&format!("unusable jwk: {e}")))?;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.required_spec_claims.clear();
        validation.validate_exp = false;
        validation.validate_aud = false;
        let claims = jsonwebtoken::decode::<Claims>(proof, &key, &validation)
            .map_err(|e| bad(&format!("signature or claims do not verify: {e}")))?
            .claims;
        if claims.htm != htm {
            return Err(bad("htm does not match the request's method"));
        }
        if normalize_url(&claims.htu) != normalize_url(htu) {
            return Err(bad("htu does not match the request's URL"));
        }
        let t = now();
        if claims.iat > t + MAX_AGE || claims.iat + MAX_AGE < t {
            return Err(bad("iat is not recent"));
        }
        if let Some(token) = access_token {
            let want = URL_SAFE_NO_PAD.encode(Sha256::digest(token.as_bytes()));
            match &claims.ath {
                Some(ath) if *ath == want => {}
                Some(_) => return Err(bad("ath does not match the access token")),
                None => return Err(bad("ath is required with an access token")),
            }
        }
        match &claims.nonce {
            Some(n) if self.nonce_good(n) => {}
            _ => return Err(DpopError::UseNonce),
        }
        if claims.jti.is_empty() || claims.jti.len() > 256 {
            return Err(bad("jti must be 1-256 characters"));
        }
        self.remember(&claims.jti, t)?;
        let jkt = jwk.thumbprint(ThumbprintHash::SHA256).map_err(|e| bad(&format!("no thumbprint: {e}")))?;
        Ok(Proof { jkt, jti: claims.jti })
    }

    /// Remembers a confidential client's assertion (`client_id`'s `jti`) until it expires
    /// (`until`, Unix seconds): one seen before is refused.
    pub fn remember_assertion(&self, client_id: &str, jti: &str, until: u64) -> Result<(), DpopError> {
        let t = now();
        self.remember_until(&format!("assertion {client_id} {jti}"), t, until.max(t))
    }

    fn remember(&self, jti: &str, t: u64) -> Result<(), DpopError> {
        self.remember_until(jti, t, t + 2 * MAX_AGE)
    }

    fn remember_until(&self, jti: &str, t: u64, until: u64) -> Result<(), DpopError> {
        let mut guard = self.jtis.lock();
        let Jtis { seen, order } = &mut *guard;
        while order.front().is_some_and(|(until, _)| *until < t) {
            if let Some((_, old)) = order.pop_front() {
                seen.remove(&old);
            }
        }
        if seen.contains_key(jti) {
            return Err(DpopError::Invalid("jti already used".into()));
        }
        if seen.len() >= MAX_JTIS {
            tracing::warn!("DPoP jti store full: proofs refused until older ones expire");
            return Err(DpopError::Invalid("too many proofs; try again shortly".into()));
        }
        seen.insert(jti.to_string(), until);
        order.push_back((until, jti.to_string()));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use p256::pkcs8::EncodePrivateKey;
    use serde_json::json;

    /// A client's session key: its signer and public JWK.
    struct Client {
        key: EncodingKey,
        jwk: Jwk,
    }

    fn client() -> Client {
        let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
        let der = secret.to_pkcs8_der().unwrap();
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256",
            "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()),
            "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
        }))
        .unwrap();
        Client { key: EncodingKey::from_ec_der(der.as_bytes()), jwk }
    }

    fn proof(c: &Client, claims: serde_json::Value) -> String {
        let mut h = Header::new(Algorithm::ES256);
        h.typ = Some("dpop+jwt".into());
        h.jwk = Some(c.jwk.clone());
        jsonwebtoken::encode(&h, &claims, &c.key).unwrap()
    }

    fn claims(d: &Dpop, jti: &str) -> serde_json::Value {
        json!({"jti": jti, "htm": "POST", "htu": "https://pds.test/oauth/token", "iat": now(), "nonce": d.nonce()})
    }

    #[test]
    fn a_good_proof_passes_once_and_binds_to_its_key() {
        let d = Dpop::default();
        let c = client();
        let p = proof(&c, claims(&d, "one"));
        let ok = d.verify(&p, "POST", "https://PDS.test/oauth/token?x=1", None).unwrap();
        assert_eq!(ok.jkt, c.jwk.thumbprint(ThumbprintHash::SHA256).unwrap());
        assert_eq!(
            d.verify(&p, "POST", "https://pds.test/oauth/token", None),
            Err(DpopError::Invalid("jti already used".into()))
        );
        // Another key, another thumbprint.
        let other = client();
        let q = proof(&other, claims(&d, "two"));
        assert_ne!(d.verify(&q, "POST", "https://pds.test/oauth/token", None).unwrap().jkt, ok.jkt);
    }

    #[test]
    fn proofs_for_another_request_or_time_or_without_a_nonce_are_refused() {
        let d = Dpop::default();
        let c = client();
        let url = "https://pds.test/oauth/token";
        let check = |jti: &str, edit: &dyn Fn(&mut serde_json::Value)| {
            let mut cl = claims(&d, jti);
            edit(&mut cl);
            d.verify(&proof(&c, cl), "POST", url, None)
        };
        assert!(matches!(check("m", &|c| c["htm"] = json!("GET")), Err(DpopError::Invalid(_))));
        assert!(matches!(check("u", &|c| c["htu"] = json!("https://pds.test/oauth/par")), Err(DpopError::Invalid(_))));
        assert!(matches!(check("o", &|c| c["iat"] = json!(now() - 3600)), Err(DpopError::Invalid(_))));
        assert!(matches!(check("f", &|c| c["iat"] = json!(now() + 3600)), Err(DpopError::Invalid(_))));
        assert_eq!(check("n", &|c| c["nonce"] = json!("stale")), Err(DpopError::UseNonce));
        assert_eq!(
            check("x", &|c| {
                c.as_object_mut().unwrap().remove("nonce");
            }),
            Err(DpopError::UseNonce)
        );
        // A nonce from more than three windows ago is stale.
        let old = d.nonce_at(now() / NONCE_WINDOW - 3);
        assert_eq!(check("s", &|c| c["nonce"] = json!(old.clone())), Err(DpopError::UseNonce));
        let recent = d.nonce_at(now() / NONCE_WINDOW - 2);
        assert!(check("r", &|c| c["nonce"] = json!(recent.clone())).is_ok());
    }

    #[test]
    fn access_tokens_need_their_hash_and_tampering_is_caught() {
        let d = Dpop::default();
        let c = client();
        let url = "https://pds.test/xrpc/com.atproto.repo.createRecord";
        let mut cl = claims(&d, "a");
        cl["htu"] = json!(url);
        assert!(matches!(d.verify(&proof(&c, cl.clone()), "POST", url, Some("token")), Err(DpopError::Invalid(_))));
        cl["jti"] = json!("b");
        cl["ath"] = json!(URL_SAFE_NO_PAD.encode(Sha256::digest(b"token")));
        assert!(d.verify(&proof(&c, cl.clone()), "POST", url, Some("token")).is_ok());
        cl["jti"] = json!("c");
        assert!(matches!(d.verify(&proof(&c, cl.clone()), "POST", url, Some("another")), Err(DpopError::Invalid(_))));
        // A signature over other claims.
        cl["jti"] = json!("d");
        let good = proof(&c, cl.clone());
        let mut parts: Vec<&str> = good.split('.').collect();
        let forged_claims = URL_SAFE_NO_PAD.encode(
            serde_json::to_vec(
                &json!({"jti": "e", "htm": "POST", "htu": url, "iat": now(), "nonce": d.nonce(), "ath": cl["ath"]}),
            )
            .unwrap(),
        );
        parts[1] = &forged_claims;
        assert!(matches!(d.verify(&parts.join("."), "POST", url, Some("token")), Err(DpopError::Invalid(_))));
        // Not a DPoP proof at all.
        let mut h = Header::new(Algorithm::ES256);
        h.jwk = Some(c.jwk.clone());
        let plain = jsonwebtoken::encode(&h, &claims(&d, "f"), &c.key).unwrap();
        assert!(matches!(d.verify(&plain, "POST", "https://pds.test/oauth/token", None), Err(DpopError::Invalid(_))));
        assert!(matches!(d.verify("not.a.jwt", "POST", url, None), Err(DpopError::Invalid(_))));
        assert!(matches!(d.verify(&"a".repeat(MAX_PROOF + 1), "POST", url, None), Err(DpopError::Invalid(_))));
    }

    proptest::proptest! {
        /// Whatever arrives as a proof is refused with a typed error, never a panic.
        #[test]
        fn any_bytes_are_refused_without_a_panic(proof in ".{0,400}", jwtish in "[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}\\.[A-Za-z0-9_-]{0,80}") {
            let d = Dpop::default();
            proptest::prop_assert!(d.verify(&proof, "GET", "https://pds.test/x", None).is_err());
            proptest::prop_assert!(d.verify(&jwtish, "GET", "https://pds.test/x", Some("t")).is_err());
        }
    }
}
