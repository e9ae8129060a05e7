//! A client's DPoP key and proofs (RFC 9449) as the OAuth tests make them: a P-256 key with
//! its public JWK, and ES256 proofs for a method and URL, with a nonce and an access token's
//! hash when asked.

#![allow(dead_code, unreachable_pub)]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::json;

/// A client's DPoP key.
pub struct Key {
    pub enc: EncodingKey,
    pub jwk: Jwk,
}

pub fn key() -> Key {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let der = secret.to_pkcs8_der().unwrap();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let jwk = serde_json::from_value(json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    }))
    .unwrap();
    Key { enc: EncodingKey::from_ec_der(der.as_bytes()), jwk }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// A DPoP proof for a POST to `url`.
pub fn proof(k: &Key, url: &str, nonce: Option<&str>) -> String {
    proof_of(k, ("POST", url), nonce, None)
}

/// A DPoP proof by `k` for `htm` `htu`, with a nonce, and for a call with `access` (`ath`).
pub fn proof_of(k: &Key, (htm, htu): (&str, &str), nonce: Option<&str>, access: Option<&str>) -> String {
    let mut h = Header::new(Algorithm::ES256);
    h.typ = Some("dpop+jwt".into());
    h.jwk = Some(k.jwk.clone());
    let mut claims =
        json!({"jti": URL_SAFE_NO_PAD.encode(rand::random::<[u8; 16]>()), "htm": htm, "htu": htu, "iat": now()});
    if let Some(n) = nonce {
        claims["nonce"] = json!(n);
    }
    if let Some(a) = access {
        claims["ath"] = json!(URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(a.as_bytes())));
    }
    jsonwebtoken::encode(&h, &claims, &k.enc).unwrap()
}
