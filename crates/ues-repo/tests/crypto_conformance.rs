//! `crypto/` vectors: signature fixtures (valid, high-S, DER) and W3C did:key vectors.

#[path = "../../../tests/support/shared.rs"]
mod shared;

use base64::Engine;
use ues_repo::crypto::{CryptoError, KeyType, Keypair, PublicKey};

fn b64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

#[test]
fn signature_fixtures() {
    let Some(cases) = shared::json("interop/atproto-interop-tests/crypto/signature-fixtures.json") else { return };
    let cases = cases.as_array().unwrap();
    assert_eq!(cases.len(), 6);
    for c in cases {
        let name = c["comment"].as_str().unwrap();
        let key = PublicKey::from_did_key(c["publicKeyDid"].as_str().unwrap()).unwrap();
        let kind = if c["algorithm"] == "ES256K" { KeyType::K256 } else { KeyType::P256 };
        assert_eq!(key.key_type(), kind, "{name}");
        // The legacy multibase names the same key.
        let legacy = PublicKey::from_legacy_multibase(kind, c["publicKeyMultibase"].as_str().unwrap()).unwrap();
        assert_eq!(legacy, key, "{name}");
        let result =
            key.verify(&b64(c["messageBase64"].as_str().unwrap()), &b64(c["signatureBase64"].as_str().unwrap()));
        if c["validSignature"].as_bool().unwrap() {
            result.unwrap_or_else(|e| panic!("{name}: {e}"));
        } else {
            let tags: Vec<&str> = c["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
            match result {
                Err(CryptoError::HighS) => assert!(tags.contains(&"high-s"), "{name}"),
                Err(CryptoError::BadSignatureLength(_)) => assert!(tags.contains(&"der-encoded"), "{name}"),
                other => panic!("{name}: expected refusal, got {other:?}"),
            }
        }
    }
}

#[test]
fn w3c_did_key_vectors() {
    let Some(k256) = shared::json("interop/atproto-interop-tests/crypto/w3c_didkey_K256.json") else { return };
    let k256 = k256.as_array().unwrap();
    assert_eq!(k256.len(), 5);
    for c in k256 {
        let secret = hex::decode(c["privateKeyBytesHex"].as_str().unwrap()).unwrap();
        let key = Keypair::from_bytes(KeyType::K256, &secret).unwrap();
        assert_eq!(key.public().did_key(), c["publicDidKey"].as_str().unwrap());
    }
    let Some(p256) = shared::json("interop/atproto-interop-tests/crypto/w3c_didkey_P256.json") else { return };
    let p256 = p256.as_array().unwrap();
    assert_eq!(p256.len(), 1);
    for c in p256 {
        let secret = bs58_decode(c["privateKeyBytesBase58"].as_str().unwrap());
        let key = Keypair::from_bytes(KeyType::P256, &secret).unwrap();
        assert_eq!(key.public().did_key(), c["publicDidKey"].as_str().unwrap());
    }
}

fn bs58_decode(s: &str) -> Vec<u8> {
    bs58::decode(s).into_vec().unwrap()
}
