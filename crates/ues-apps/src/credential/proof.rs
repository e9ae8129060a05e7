//! Data Integrity proofs with the `eddsa-jcs-2022` cryptosuite (W3C Data Integrity EdDSA
//! Cryptosuites v1.0).
//!
//! The signed bytes are SHA-256(JCS(proof options)) ‖ SHA-256(JCS(document without its proof)),
//! where the proof options are the proof without `proofValue` and carry the document's
//! `@context`: changing either the document or any proof option breaks the signature.

use ed25519_dalek::{Signature, Signer, SigningKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::{CredentialError, DidKey, canonical, check_date_time};

/// The proof type.
pub const PROOF_TYPE: &str = "DataIntegrityProof";
/// The cryptosuite.
pub const CRYPTOSUITE: &str = "eddsa-jcs-2022";
/// The only proof purpose made and accepted.
pub const PROOF_PURPOSE: &str = "assertionMethod";

/// Base58btc of a 64-byte signature is at most 88 characters.
const MAX_PROOF_VALUE: usize = 1 + 88;

/// A verified proof: who signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The proof's `verificationMethod` (`did:key:z6Mk…#z6Mk…`).
    pub verification_method: String,
    /// The key it names, which made the signature.
    pub key: DidKey,
    /// The proof's `created`, when it has one.
    pub created: Option<String>,
}

/// Signs `document` (a JSON object without a `proof`) with `key`, as of `created` (an XML Schema
/// dateTimeStamp, `2025-01-31T12:00:00Z`), and returns it with its `proof`.
pub fn sign(document: &Value, key: &SigningKey, created: &str) -> Result<Value, CredentialError> {
    let Value::Object(members) = document else {
        return Err(CredentialError::InvalidCredential("a signed document must be a JSON object".into()));
    };
    if members.contains_key("proof") {
        return Err(CredentialError::InvalidCredential("the document already has a proof".into()));
    }
    check_date_time("created", created)?;

    let mut options = Map::new();
    options.insert("type".into(), PROOF_TYPE.into());
    options.insert("cryptosuite".into(), CRYPTOSUITE.into());
    options.insert("created".into(), created.into());
    options.insert("verificationMethod".into(), DidKey::from(key.verifying_key()).verification_method().into());
    options.insert("proofPurpose".into(), PROOF_PURPOSE.into());
    if let Some(context) = members.get("@context") {
        options.insert("@context".into(), context.clone());
    }
    let mut options = Value::Object(options);
    let signature = key.sign(&hash_data(&options, document)?);

    options["proofValue"] = format!("z{}", bs58::encode(signature.to_bytes()).into_string()).into();
    let mut secured = members.clone();
    secured.insert("proof".into(), options);
    Ok(Value::Object(secured))
}

/// Verifies the one `eddsa-jcs-2022` proof of `document`, signed by the Ed25519 `did:key` its
/// verification method names.
pub fn verify(document: &Value) -> Result<Verified, CredentialError> {
    let Value::Object(members) = document else {
        return Err(CredentialError::InvalidCredential("a signed document must be a JSON object".into()));
    };
    let proof = match members.get("proof") {
        None => return Err(CredentialError::MissingProof),
        Some(Value::Object(proof)) => proof,
        Some(Value::Array(proofs)) => match proofs.as_slice() {
            [Value::Object(proof)] => proof,
            [] | [_] => return Err(CredentialError::InvalidProof("proof must be an object".into())),
            several => return Err(CredentialError::MultipleProofs(several.len())),
        },
        Some(_) => return Err(CredentialError::InvalidProof("proof must be an object".into())),
    };

    let field = |name: &str| -> Result<&str, CredentialError> {
        match proof.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(CredentialError::InvalidProof(format!("{name} must be a string"))),
            None => Err(CredentialError::InvalidProof(format!("{name} is missing"))),
        }
    };
    let proof_type = field("type")?;
    if proof_type != PROOF_TYPE {
        return Err(CredentialError::UnsupportedProofType(proof_type.to_owned()));
    }
    let cryptosuite = field("cryptosuite")?;
    if cryptosuite != CRYPTOSUITE {
        return Err(CredentialError::UnsupportedCryptosuite(cryptosuite.to_owned()));
    }
    let purpose = field("proofPurpose")?;
    if purpose != PROOF_PURPOSE {
        return Err(CredentialError::UnsupportedProofPurpose(purpose.to_owned()));
    }
    let verification_method = field("verificationMethod")?;
    let key = DidKey::parse_verification_method(verification_method)?;
    let created = match proof.get("created") {
        None => None,
        Some(_) => {
            let created = field("created")?;
            check_date_time("created", created)
                .map_err(|_| CredentialError::InvalidProof(format!("created is not a dateTimeStamp: {created:?}")))?;
            Some(created.to_owned())
        }
    };
    let signature = decode_proof_value(field("proofValue")?)?;

    let mut options = proof.clone();
    options.remove("proofValue");
    let mut unsecured = members.clone();
    unsecured.remove("proof");
    // Contexts added after signing are allowed, so long as the signed ones still come first;
    // the document is then checked with the contexts it was signed with.
    if let Some(proof_context) = options.get("@context") {
        let signed = as_list(proof_context);
        let present = unsecured.get("@context").map(as_list).unwrap_or_default();
        if signed.is_empty() || present.len() < signed.len() || present[..signed.len()] != signed[..] {
            return Err(CredentialError::InvalidProof(
                "the document's @context does not start with the proof's".into(),
            ));
        }
        unsecured.insert("@context".into(), proof_context.clone());
    }

    let data = hash_data(&Value::Object(options), &Value::Object(unsecured))?;
    key.verifying_key().verify_strict(&data, &signature).map_err(|_| CredentialError::BadSignature)?;
    Ok(Verified { verification_method: verification_method.to_owned(), key, created })
}

/// SHA-256(JCS(proof options)) ‖ SHA-256(JCS(unsecured document)).
fn hash_data(options: &Value, document: &Value) -> Result<[u8; 64], CredentialError> {
    let mut data = [0u8; 64];
    data[..32].copy_from_slice(&Sha256::digest(canonical(options)?));
    data[32..].copy_from_slice(&Sha256::digest(canonical(document)?));
    Ok(data)
}

fn decode_proof_value(value: &str) -> Result<Signature, CredentialError> {
    let invalid = || CredentialError::InvalidProof("proofValue must be a base58btc Ed25519 signature".into());
    if value.len() > MAX_PROOF_VALUE {
        return Err(invalid());
    }
    let encoded = value.strip_prefix('z').ok_or_else(invalid)?;
    let bytes = bs58::decode(encoded).into_vec().map_err(|_| invalid())?;
    let bytes: [u8; 64] = bytes.try_into().map_err(|_| invalid())?;
    Ok(Signature::from_bytes(&bytes))
}

/// A `@context` as a list (a single context is a list of one).
fn as_list(context: &Value) -> Vec<&Value> {
    match context {
        Value::Array(items) => items.iter().collect(),
        single => vec![single],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    use crate::credential::{MAX_CREDENTIAL_BYTES, MAX_DEPTH, parse_bounded};

    const CREATED: &str = "2025-03-01T10:00:00Z";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[42; 32])
    }

    fn document() -> Value {
        json!({
            "@context": ["https://www.w3.org/ns/credentials/v2", "https://www.w3.org/ns/credentials/examples/v2"],
            "id": "urn:uuid:00000000-0000-4000-8000-000000000001",
            "type": ["VerifiableCredential", "ExampleCredential"],
            "issuer": DidKey::from(key().verifying_key()).did(),
            "validFrom": "2025-01-01T00:00:00Z",
            "credentialSubject": {"id": "did:plc:abc", "score": 12.5, "tags": ["a", "é", "😀"], "nested": {"deep": [1, {"x": null}]}},
        })
    }

    #[test]
    fn signs_and_verifies() {
        let signed = sign(&document(), &key(), CREATED).unwrap();
        let proof = &signed["proof"];
        assert_eq!(proof["type"], PROOF_TYPE);
        assert_eq!(proof["cryptosuite"], CRYPTOSUITE);
        assert_eq!(proof["proofPurpose"], PROOF_PURPOSE);
        assert_eq!(proof["created"], CREATED);
        assert_eq!(proof["@context"], document()["@context"]);
        assert!(proof["proofValue"].as_str().unwrap().starts_with('z'));
        let verified = verify(&signed).unwrap();
        let did = DidKey::from(key().verifying_key());
        assert_eq!(verified.key, did);
        assert_eq!(verified.verification_method, did.verification_method());
        assert_eq!(verified.created.as_deref(), Some(CREATED));
        // Signing is deterministic (Ed25519), and the document is otherwise unchanged.
        assert_eq!(sign(&document(), &key(), CREATED).unwrap(), signed);
        let mut without = signed.clone();
        without.as_object_mut().unwrap().remove("proof");
        assert_eq!(without, document());
    }

    #[test]
    fn documents_without_context_sign_too() {
        let document = json!({"hello": "world"});
        let signed = sign(&document, &key(), CREATED).unwrap();
        assert!(signed["proof"].get("@context").is_none());
        assert!(verify(&signed).is_ok());
        // A context added after signing is then part of what was signed: refused.
        let mut added = signed.clone();
        added["@context"] = json!("https://www.w3.org/ns/credentials/v2");
        assert!(matches!(verify(&added), Err(CredentialError::BadSignature)));
    }

    #[test]
    fn contexts_appended_after_signing_are_allowed() {
        let signed = sign(&document(), &key(), CREATED).unwrap();
        let mut appended = signed.clone();
        appended["@context"].as_array_mut().unwrap().push(json!("https://example.org/more/v1"));
        assert!(verify(&appended).is_ok());
        let mut reordered = signed.clone();
        appended["@context"].as_array_mut().unwrap().swap(0, 1);
        reordered["@context"] = appended["@context"].clone();
        assert!(matches!(verify(&reordered), Err(CredentialError::InvalidProof(_))));
        let mut truncated = signed.clone();
        truncated["@context"] = json!(["https://www.w3.org/ns/credentials/v2"]);
        assert!(matches!(verify(&truncated), Err(CredentialError::InvalidProof(_))));
        let mut dropped = signed.clone();
        dropped.as_object_mut().unwrap().remove("@context");
        assert!(matches!(verify(&dropped), Err(CredentialError::InvalidProof(_))));
    }

    #[test]
    fn refuses_other_proofs() {
        let signed = sign(&document(), &key(), CREATED).unwrap();
        let with_proof = |f: &dyn Fn(&mut Value)| {
            let mut d = signed.clone();
            f(&mut d["proof"]);
            verify(&d)
        };
        let err = |r: Result<Verified, CredentialError>| r.unwrap_err();
        assert!(matches!(
            err(with_proof(&|p| p["type"] = json!("Ed25519Signature2020"))),
            CredentialError::UnsupportedProofType(_)
        ));
        assert!(matches!(
            err(with_proof(&|p| p["cryptosuite"] = json!("eddsa-rdfc-2022"))),
            CredentialError::UnsupportedCryptosuite(_)
        ));
        assert!(matches!(
            err(with_proof(&|p| p["proofPurpose"] = json!("authentication"))),
            CredentialError::UnsupportedProofPurpose(_)
        ));
        assert!(matches!(
            err(with_proof(&|p| p["verificationMethod"] = json!("https://example.org/key#1"))),
            CredentialError::UnsupportedVerificationMethod(_)
        ));
        assert!(matches!(err(with_proof(&|p| p["proofValue"] = json!("u"))), CredentialError::InvalidProof(_)));
        assert!(matches!(err(with_proof(&|p| p["proofValue"] = json!("z3"))), CredentialError::InvalidProof(_)));
        assert!(matches!(err(with_proof(&|p| p["proofValue"] = json!(7))), CredentialError::InvalidProof(_)));
        assert!(matches!(err(with_proof(&|p| p["created"] = json!("yesterday"))), CredentialError::InvalidProof(_)));
        assert!(matches!(
            err(with_proof(&|p| {
                p.as_object_mut().unwrap().remove("proofValue");
            })),
            CredentialError::InvalidProof(_)
        ));
        // Another key's did:key in the proof: a well-formed method that did not sign.
        let other = DidKey::from(SigningKey::from_bytes(&[1; 32]).verifying_key()).verification_method();
        assert!(matches!(err(with_proof(&|p| p["verificationMethod"] = json!(other))), CredentialError::BadSignature));

        let mut none = signed.clone();
        none.as_object_mut().unwrap().remove("proof");
        assert!(matches!(verify(&none), Err(CredentialError::MissingProof)));
        let mut two = signed.clone();
        two["proof"] = json!([signed["proof"], signed["proof"]]);
        assert!(matches!(verify(&two), Err(CredentialError::MultipleProofs(2))));
        let mut empty = signed.clone();
        empty["proof"] = json!([]);
        assert!(matches!(verify(&empty), Err(CredentialError::InvalidProof(_))));
        let mut one = signed.clone();
        one["proof"] = json!([signed["proof"]]);
        assert!(verify(&one).is_ok());
        assert!(matches!(verify(&json!([1])), Err(CredentialError::InvalidCredential(_))));
        assert!(matches!(sign(&signed, &key(), CREATED), Err(CredentialError::InvalidCredential(_))));
        assert!(matches!(sign(&document(), &key(), "now"), Err(CredentialError::InvalidCredential(_))));
    }

    /// Every path to a value in `v`, as JSON pointers.
    fn pointers(v: &Value, at: &str, out: &mut Vec<String>) {
        out.push(at.to_owned());
        match v {
            Value::Object(m) => m.iter().for_each(|(k, v)| pointers(v, &format!("{at}/{k}"), out)),
            Value::Array(a) => a.iter().enumerate().for_each(|(i, v)| pointers(v, &format!("{at}/{i}"), out)),
            _ => {}
        }
    }

    fn perturb(v: &mut Value) {
        match v {
            Value::String(s) => s.push('x'),
            // At the front: a context appended at the end is allowed.
            Value::Array(a) => a.insert(0, Value::Null),
            Value::Object(m) => {
                m.insert("extra".into(), json!(1));
            }
            Value::Bool(b) => *b = !*b,
            Value::Null => *v = json!(false),
            Value::Number(n) => {
                let changed = n.as_f64().unwrap() + 1.0;
                *v = json!(changed);
            }
        }
    }

    #[test]
    fn any_changed_value_or_name_breaks_the_signature() {
        let signed = sign(&document(), &key(), CREATED).unwrap();
        let mut all = Vec::new();
        pointers(&signed, "", &mut all);
        let mut tried = 0;
        for pointer in all.iter().filter(|p| !p.is_empty() && !p.ends_with("/proofValue")) {
            let mut changed = signed.clone();
            perturb(changed.pointer_mut(pointer).unwrap());
            assert!(verify(&changed).is_err(), "changing {pointer} still verifies");
            tried += 1;

            // Renaming the member (where the pointer ends in one).
            let (parent, name) = pointer.rsplit_once('/').unwrap();
            let mut renamed = signed.clone();
            if let Some(members) = renamed.pointer_mut(parent).and_then(Value::as_object_mut)
                && let Some(value) = members.remove(name)
            {
                members.insert(format!("{name}x"), value);
                assert!(verify(&renamed).is_err(), "renaming {pointer} still verifies");
                tried += 1;
            }
        }
        assert!(tried > 40, "{tried}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn roundtrips_with_random_keys_and_subjects(secret in any::<[u8; 32]>(), claim in any::<String>(), n in any::<i64>()) {
            let key = SigningKey::from_bytes(&secret);
            let mut document = document();
            document["credentialSubject"]["claim"] = json!(claim);
            document["credentialSubject"]["n"] = json!(n);
            let signed = sign(&document, &key, CREATED).unwrap();
            let verified = verify(&signed).unwrap();
            prop_assert_eq!(verified.key, DidKey::from(key.verifying_key()));
        }

        #[test]
        fn any_changed_byte_fails(index in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let text = serde_json::to_vec(&sign(&document(), &key(), CREATED).unwrap()).unwrap();
            let mut changed = text.clone();
            let i = index.index(changed.len());
            prop_assume!(changed[i] != byte);
            changed[i] = byte;
            // Either it is no longer JSON, or no longer verifies.
            if let Ok(value) = parse_bounded(&changed, MAX_CREDENTIAL_BYTES, MAX_DEPTH) {
                prop_assert!(verify(&value).is_err(), "byte {} changed to {:#x} still verifies", i, byte);
            }
        }
    }
}
