//! What an OAuth access token costs a call beyond a session token: checking its DPoP proof
//! (an ES256 signature, the nonce, the `jti` store) and parsing its scope.
//!
//! `cargo bench -p ues-protocol --bench oauth`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use criterion::{Criterion, criterion_group, criterion_main};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use p256::pkcs8::EncodePrivateKey;
use serde_json::json;
use ues_protocol::node::dpop::Dpop;
use ues_protocol::node::scopes::Permissions;

fn bench(c: &mut Criterion) {
    let secret = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let der = secret.to_pkcs8_der().unwrap();
    let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&secret.public_key(), false);
    let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(json!({
        "kty": "EC", "crv": "P-256",
        "x": URL_SAFE_NO_PAD.encode(point.x().unwrap()), "y": URL_SAFE_NO_PAD.encode(point.y().unwrap()),
    }))
    .unwrap();
    let key = EncodingKey::from_ec_der(der.as_bytes());
    let dpop = Dpop::default();
    let url = "https://pds.example/xrpc/com.atproto.repo.createRecord";
    let token = "an-access-token";
    let ath = URL_SAFE_NO_PAD.encode(<sha2::Sha256 as sha2::Digest>::digest(token.as_bytes()));
    let mut n = 0u64;
    c.bench_function("dpop: verify a proof (ES256, nonce, ath, jti)", |b| {
        b.iter_batched(
            || {
                n += 1;
                let mut h = Header::new(Algorithm::ES256);
                h.typ = Some("dpop+jwt".into());
                h.jwk = Some(jwk.clone());
                let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
                let claims = json!({"jti": format!("p{n}"), "htm": "POST", "htu": url, "iat": now, "ath": ath, "nonce": dpop.nonce()});
                jsonwebtoken::encode(&h, &claims, &key).unwrap()
            },
            |proof| dpop.verify(&proof, "POST", url, Some(token)).unwrap(),
            criterion::BatchSize::SmallInput,
        )
    });
    let scope = "atproto repo:app.bsky.feed.post?action=create&action=delete repo:app.bsky.feed.like \
                 rpc:app.bsky.feed.getTimeline?aud=did:web:api.bsky.app%23bsky_appview blob:image/* account:email";
    c.bench_function("scopes: parse a six-permission scope", |b| b.iter(|| Permissions::parse(scope).unwrap()));
    let p = Permissions::parse(scope).unwrap();
    c.bench_function("scopes: check a record write", |b| {
        b.iter(|| p.allows_repo("app.bsky.feed.like", ues_protocol::node::scopes::Action::Create))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
