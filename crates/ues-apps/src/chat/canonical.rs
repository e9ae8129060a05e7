//! Matrix's canonical JSON and signed JSON objects (the Matrix specification's appendix
//! "Signing JSON"): device keys and one-time keys are signed over the canonical form of the
//! object without its `signatures` and `unsigned` members, so a signature made by libolm's
//! clients verifies here and ours verify there.
//!
//! Canonical JSON: object keys sorted by code point, no whitespace, strings as UTF-8 (only what
//! JSON must escape is escaped), integers within ±(2^53 - 1) and no other numbers. It is written
//! here key by key rather than through `serde_json`'s map order, which a feature elsewhere in the
//! build could change.

use serde_json::{Map, Value};
use vodozemac::{Ed25519PublicKey, Ed25519Signature};

/// The largest integer canonical JSON allows (2^53 - 1).
const MAX_INT: i64 = (1 << 53) - 1;

/// Why an object is not canonical JSON, or its signature does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SignedJsonError {
    /// A float or an integer outside ±(2^53 - 1).
    #[error("canonical JSON has integers within ±(2^53 - 1) only")]
    Number,
    /// Not an object, or no signature by the named key.
    #[error("no signature by {0}")]
    Unsigned(String),
    /// The signature is malformed or does not verify.
    #[error("the signature by {0} does not verify")]
    Bad(String),
}

/// `value` as canonical JSON bytes.
pub(crate) fn canonical(value: &Value) -> Result<Vec<u8>, SignedJsonError> {
    let mut out = Vec::new();
    write(value, &mut out)?;
    Ok(out)
}

fn write(value: &Value, out: &mut Vec<u8>) -> Result<(), SignedJsonError> {
    match value {
        Value::Null | Value::Bool(_) | Value::String(_) => {
            out.extend_from_slice(serde_json::to_string(value).expect("a scalar serialises").as_bytes())
        }
        Value::Number(n) => match n.as_i64() {
            Some(i) if (-MAX_INT..=MAX_INT).contains(&i) => out.extend_from_slice(i.to_string().as_bytes()),
            _ => return Err(SignedJsonError::Number),
        },
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort_unstable();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(serde_json::to_string(k).expect("a string serialises").as_bytes());
                out.push(b':');
                write(&map[k], out)?;
            }
            out.push(b'}');
        }
    }
    Ok(())
}

/// What is signed of `object`: its canonical form without `signatures` and `unsigned`.
pub(crate) fn signing_bytes(object: &Map<String, Value>) -> Result<Vec<u8>, SignedJsonError> {
    let mut copy = object.clone();
    copy.remove("signatures");
    copy.remove("unsigned");
    canonical(&Value::Object(copy))
}

/// Signs `object` as `entity`'s key `key_name` (`ed25519:<device id>`) with `sign`, adding the
/// signature beside any it already has.
pub(crate) fn sign(
    object: &mut Map<String, Value>,
    entity: &str,
    key_name: &str,
    sign: impl FnOnce(&[u8]) -> Ed25519Signature,
) -> Result<(), SignedJsonError> {
    let signature = sign(&signing_bytes(object)?).to_base64();
    let signatures = object.entry("signatures").or_insert_with(|| Value::Object(Map::new()));
    if !signatures.is_object() {
        *signatures = Value::Object(Map::new());
    }
    let by_entity = signatures
        .as_object_mut()
        .expect("made an object above")
        .entry(entity)
        .or_insert_with(|| Value::Object(Map::new()));
    if !by_entity.is_object() {
        *by_entity = Value::Object(Map::new());
    }
    by_entity.as_object_mut().expect("made an object above").insert(key_name.to_string(), Value::String(signature));
    Ok(())
}

/// Checks `object` carries a signature by `entity`'s key `key_name` that `key` verifies.
pub(crate) fn verify(
    object: &Map<String, Value>,
    entity: &str,
    key_name: &str,
    key: &Ed25519PublicKey,
) -> Result<(), SignedJsonError> {
    let name = || format!("{entity} {key_name}");
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(entity))
        .and_then(|s| s.get(key_name))
        .and_then(Value::as_str)
        .ok_or_else(|| SignedJsonError::Unsigned(name()))?;
    let signature = Ed25519Signature::from_base64(signature).map_err(|_| SignedJsonError::Bad(name()))?;
    key.verify(&signing_bytes(object)?, &signature).map_err(|_| SignedJsonError::Bad(name()))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;
    use vodozemac::olm::Account;

    use super::*;

    #[test]
    fn the_specifications_examples_are_canonical() {
        // The Matrix specification's appendix gives these inputs and their canonical forms.
        let cases = [
            (json!({}), "{}"),
            (json!({"one": 1, "two": "Two"}), r#"{"one":1,"two":"Two"}"#),
            (json!({"b": "2", "a": "1"}), r#"{"a":"1","b":"2"}"#),
            (
                json!({"auth": {"success": true, "mxid": "@john.doe:example.com", "profile": {"display_name": "John Doe", "three_pids": [{"medium": "email", "address": "john.doe@example.org"}, {"medium": "msisdn", "address": "123456789"}]}}}),
                r#"{"auth":{"mxid":"@john.doe:example.com","profile":{"display_name":"John Doe","three_pids":[{"address":"john.doe@example.org","medium":"email"},{"address":"123456789","medium":"msisdn"}]},"success":true}}"#,
            ),
            (json!({"a": "日本語"}), "{\"a\":\"日本語\"}"),
            (json!({"本": 2, "日": 1}), "{\"日\":1,\"本\":2}"),
            (json!({"a": "\u{65e5}"}), "{\"a\":\"日\"}"),
            (json!({"a": null}), r#"{"a":null}"#),
        ];
        for (input, want) in cases {
            assert_eq!(String::from_utf8(canonical(&input).unwrap()).unwrap(), want);
        }
        assert_eq!(canonical(&json!({"a": 1.5})), Err(SignedJsonError::Number));
        assert_eq!(canonical(&json!({"a": 9_007_199_254_740_992_i64})), Err(SignedJsonError::Number));
        assert!(canonical(&json!({"a": -9_007_199_254_740_991_i64})).is_ok());
    }

    #[test]
    fn a_signature_covers_everything_but_signatures_and_unsigned() {
        let account = Account::new();
        let mut keys = json!({"user_id": "did:plc:abc", "device_id": "PHONE", "keys": {"ed25519:PHONE": account.ed25519_key().to_base64()}, "unsigned": {"note": "x"}})
            .as_object()
            .unwrap()
            .clone();
        sign(&mut keys, "did:plc:abc", "ed25519:PHONE", |m| account.sign(m)).unwrap();
        let key = account.ed25519_key();
        verify(&keys, "did:plc:abc", "ed25519:PHONE", &key).unwrap();
        let mut unsigned_changed = keys.clone();
        unsigned_changed.insert("unsigned".into(), json!({"note": "y"}));
        verify(&unsigned_changed, "did:plc:abc", "ed25519:PHONE", &key).unwrap();
        let mut tampered = keys.clone();
        tampered.insert("device_id".into(), json!("LAPTOP"));
        assert!(matches!(verify(&tampered, "did:plc:abc", "ed25519:PHONE", &key), Err(SignedJsonError::Bad(_))));
        assert!(matches!(verify(&keys, "did:plc:other", "ed25519:PHONE", &key), Err(SignedJsonError::Unsigned(_))));
        let other = Account::new().ed25519_key();
        assert!(matches!(verify(&keys, "did:plc:abc", "ed25519:PHONE", &other), Err(SignedJsonError::Bad(_))));
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            (-MAX_INT..=MAX_INT).prop_map(|i| json!(i)),
            ".{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(".{0,6}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn canonical_json_reads_back_as_the_same_value_and_is_stable(v in json_value()) {
            let bytes = canonical(&v).unwrap();
            let back: Value = serde_json::from_slice(&bytes).unwrap();
            prop_assert_eq!(&back, &v);
            prop_assert_eq!(canonical(&back).unwrap(), bytes.clone());
            // serde_json's maps (without its preserve_order feature) keep keys sorted by their
            // bytes, which for UTF-8 is code point order: the same text, written another way.
            prop_assert_eq!(bytes, serde_json::to_vec(&v).unwrap());
        }
    }
}
