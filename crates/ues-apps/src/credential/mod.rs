//! W3C Verifiable Credentials 2.0, the pure parts: JSON canonicalisation (RFC 8785), Ed25519
//! `did:key` identifiers, Data Integrity proofs with the `eddsa-jcs-2022` cryptosuite, and
//! Bitstring Status Lists for revocation.
//!
//! Nothing here does I/O: an application around it keeps keys, status lists and issued
//! credentials, and serves them. Credentials are plain JSON (`serde_json::Value`) signed over
//! their JCS form, so no JSON-LD processing happens anywhere: verifiers that only hash JSON
//! (like Digital Bazaar's `eddsa-jcs-2022`) accept them as they are.
//!
//! Untrusted JSON enters through [`parse_bounded`] (size, depth and duplicate keys checked before
//! anything else looks at it), and status lists through [`StatusList::decode`] (bounded inflate).

mod didkey;
mod jcs;
mod proof;
mod service;
mod status;

#[cfg(test)]
mod interop_tests;

use serde_json::{Map, Value, json};

pub use didkey::{DidKey, DidKeyError};
pub use jcs::{MAX_CREDENTIAL_BYTES, MAX_DEPTH, canonical, parse_bounded};
pub use proof::{CRYPTOSUITE, PROOF_PURPOSE, PROOF_TYPE, Verified, sign, verify};
pub use service::{Credentials, NAME};
pub use status::{
    STATUS_LIST_BITS, STATUS_LIST_BYTES, STATUS_PURPOSE, StatusList, status_entry, status_list_credential,
};

/// The VC 2.0 base context, first in every credential made here.
pub const VC_V2_CONTEXT: &str = "https://www.w3.org/ns/credentials/v2";

/// The issuer property naming the AT Protocol account a credential is issued for (the
/// `did:key` signs; the account is who stands behind it). Not a term of the VC 2.0 context:
/// JCS verifiers accept it, JSON-LD processors in safe mode would drop or refuse it.
pub const ACCOUNT_PROPERTY: &str = "atprotoAccount";

/// What can go wrong with a credential, a proof, a key or a status list.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CredentialError {
    /// The input is larger than allowed.
    #[error("credential is {len} bytes, more than the {max} allowed")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The bound.
        max: usize,
    },
    /// The input nests arrays and objects deeper than allowed.
    #[error("credential nests deeper than {max} levels")]
    TooDeep {
        /// The bound.
        max: usize,
    },
    /// Not JSON, or JSON that RFC 8785 cannot canonicalise (duplicate keys, lone surrogates).
    #[error("invalid JSON: {0}")]
    Json(String),
    /// Well-formed JSON that is not a credential of the expected shape.
    #[error("invalid credential: {0}")]
    InvalidCredential(String),
    /// The document has no `proof`.
    #[error("the document has no proof")]
    MissingProof,
    /// The document has several proofs (proof sets and chains are not supported).
    #[error("the document has {0} proofs; exactly one is supported")]
    MultipleProofs(usize),
    /// A proof of another type than `DataIntegrityProof`.
    #[error("unsupported proof type {0:?}")]
    UnsupportedProofType(String),
    /// A cryptosuite other than `eddsa-jcs-2022`.
    #[error("unsupported cryptosuite {0:?}")]
    UnsupportedCryptosuite(String),
    /// A proof purpose other than `assertionMethod`.
    #[error("unsupported proof purpose {0:?}")]
    UnsupportedProofPurpose(String),
    /// The verification method is not an Ed25519 `did:key` whose fragment is its key.
    #[error("unsupported verification method: {0}")]
    UnsupportedVerificationMethod(#[from] DidKeyError),
    /// A malformed proof (missing or ill-typed fields, a `@context` the document does not start
    /// with, a `proofValue` that is not a multibase Ed25519 signature).
    #[error("invalid proof: {0}")]
    InvalidProof(String),
    /// The signature does not verify: the document or the proof options were changed, or were
    /// signed by another key.
    #[error("the signature does not verify")]
    BadSignature,
    /// A credential's issuer is not the key that signed it.
    #[error("issuer {issuer:?} is not the signer {signer:?}")]
    IssuerMismatch {
        /// The credential's issuer id.
        issuer: String,
        /// The DID of the signing key.
        signer: String,
    },
    /// An encoded status list, or the list it inflates to, is larger than allowed.
    #[error("status list larger than {max} bytes")]
    StatusListTooLarge {
        /// The bound.
        max: usize,
    },
    /// A malformed status list (not multibase base64url, not gzip, shorter than 16 KiB).
    #[error("invalid status list: {0}")]
    InvalidStatusList(String),
    /// A status list index beyond the list.
    #[error("status index {index} is outside the list of {len} entries")]
    StatusIndexOutOfRange {
        /// The index.
        index: usize,
        /// The list's length in bits.
        len: usize,
    },
}

impl CredentialError {
    /// The XRPC error name for this error.
    pub fn name(&self) -> &'static str {
        match self {
            Self::TooLarge { .. } | Self::TooDeep { .. } => "CredentialTooLarge",
            Self::Json(_) | Self::InvalidCredential(_) | Self::IssuerMismatch { .. } => "InvalidCredential",
            Self::MissingProof
            | Self::MultipleProofs(_)
            | Self::UnsupportedProofPurpose(_)
            | Self::InvalidProof(_)
            | Self::BadSignature => "InvalidProof",
            Self::UnsupportedProofType(_) | Self::UnsupportedCryptosuite(_) => "UnsupportedCryptosuite",
            Self::UnsupportedVerificationMethod(_) => "UnsupportedVerificationMethod",
            Self::StatusListTooLarge { .. } => "StatusListTooLarge",
            Self::InvalidStatusList(_) | Self::StatusIndexOutOfRange { .. } => "InvalidStatusList",
        }
    }
}

/// What an unsigned credential says, for [`build_credential`].
#[derive(Debug, Clone)]
pub struct CredentialDraft<'a> {
    /// The key that will sign it: the credential's `issuer.id`.
    pub issuer: &'a DidKey,
    /// The AT Protocol account it is issued for (`issuer.atprotoAccount`).
    pub account: &'a str,
    /// The credential's own `id` (a URL or URN).
    pub id: &'a str,
    /// Its types after `VerifiableCredential`.
    pub types: &'a [String],
    /// `credentialSubject`: an object, or an array of objects.
    pub subject: Value,
    /// `validFrom`, an XML Schema dateTimeStamp (`2025-01-31T12:00:00Z`).
    pub valid_from: &'a str,
    /// `validUntil`, likewise, when it expires.
    pub valid_until: Option<&'a str>,
    /// `credentialStatus` (see [`status_entry`]), when it can be revoked.
    pub status: Option<Value>,
}

/// An unsigned VC 2.0 credential (sign it with [`sign`]).
pub fn build_credential(draft: CredentialDraft<'_>) -> Result<Value, CredentialError> {
    if !draft.subject.is_object()
        && !draft.subject.as_array().is_some_and(|a| !a.is_empty() && a.iter().all(Value::is_object))
    {
        return Err(CredentialError::InvalidCredential("credentialSubject must be an object".into()));
    }
    check_date_time("validFrom", draft.valid_from)?;
    if let Some(until) = draft.valid_until {
        check_date_time("validUntil", until)?;
    }
    let mut types = vec![Value::from("VerifiableCredential")];
    types.extend(draft.types.iter().filter(|t| *t != "VerifiableCredential").map(|t| Value::from(t.as_str())));

    let mut credential = Map::new();
    credential.insert("@context".into(), json!([VC_V2_CONTEXT]));
    credential.insert("id".into(), draft.id.into());
    credential.insert("type".into(), types.into());
    credential.insert("issuer".into(), json!({"id": draft.issuer.did(), ACCOUNT_PROPERTY: draft.account}));
    credential.insert("validFrom".into(), draft.valid_from.into());
    if let Some(until) = draft.valid_until {
        credential.insert("validUntil".into(), until.into());
    }
    credential.insert("credentialSubject".into(), draft.subject);
    if let Some(status) = draft.status {
        credential.insert("credentialStatus".into(), status);
    }
    Ok(Value::Object(credential))
}

/// Verifies a credential's proof ([`verify`]) and that it is a VC 2.0 credential issued by the
/// key that signed it (`issuer`, or `issuer.id`, is the signer's `did:key`). Validity dates and
/// status are the caller's to check: they depend on the time and on other documents.
pub fn verify_credential(credential: &Value) -> Result<Verified, CredentialError> {
    let verified = verify(credential)?;
    let context = credential.get("@context").and_then(Value::as_array);
    if context.and_then(|c| c.first()).and_then(Value::as_str) != Some(VC_V2_CONTEXT) {
        return Err(CredentialError::InvalidCredential(format!("@context must start with {VC_V2_CONTEXT}")));
    }
    let is_vc = match credential.get("type") {
        Some(Value::String(t)) => t == "VerifiableCredential",
        Some(Value::Array(types)) => types.iter().any(|t| t == "VerifiableCredential"),
        _ => false,
    };
    if !is_vc {
        return Err(CredentialError::InvalidCredential("type must include VerifiableCredential".into()));
    }
    let issuer = match credential.get("issuer") {
        Some(Value::String(id)) => id.as_str(),
        Some(Value::Object(issuer)) => issuer.get("id").and_then(Value::as_str).unwrap_or_default(),
        _ => "",
    };
    let signer = verified.key.did();
    if issuer != signer {
        return Err(CredentialError::IssuerMismatch { issuer: issuer.to_owned(), signer });
    }
    Ok(verified)
}

/// Checks an XML Schema `dateTimeStamp` (a dateTime with a time zone), as VC 2.0 and Data
/// Integrity require: `YYYY-MM-DDThh:mm:ss[.s+](Z|±hh:mm)`.
pub(crate) fn check_date_time(what: &str, s: &str) -> Result<(), CredentialError> {
    if is_date_time_stamp(s) {
        Ok(())
    } else {
        Err(CredentialError::InvalidCredential(format!("{what} is not a dateTimeStamp: {s:?}")))
    }
}

fn is_date_time_stamp(s: &str) -> bool {
    let b = s.as_bytes();
    let digits = |r: std::ops::Range<usize>| b.get(r).is_some_and(|d| d.iter().all(u8::is_ascii_digit));
    let num = |r: std::ops::Range<usize>| -> u32 { s[r].parse().unwrap_or(u32::MAX) };
    if b.len() < 20 || !digits(0..4) || b[4] != b'-' || !digits(5..7) || b[7] != b'-' || !digits(8..10) {
        return false;
    }
    if b[10] != b'T' || !digits(11..13) || b[13] != b':' || !digits(14..16) || b[16] != b':' || !digits(17..19) {
        return false;
    }
    let (month, day, hour, minute, second) = (num(5..7), num(8..10), num(11..13), num(14..16), num(17..19));
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 24 || minute > 59 || second > 60 {
        return false;
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return false;
        }
        rest = &fraction[n..];
    }
    match rest {
        b"Z" => true,
        [sign, h1, h2, b':', m1, m2] => {
            matches!(sign, b'+' | b'-') && [h1, h2, m1, m2].iter().all(|c| c.is_ascii_digit())
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    #[test]
    fn date_time_stamps() {
        for ok in [
            "2025-01-31T12:00:00Z",
            "2025-01-31T12:00:00.123Z",
            "2025-01-31T12:00:00+02:00",
            "2024-02-29T23:59:60-11:30",
        ] {
            assert!(is_date_time_stamp(ok), "{ok}");
        }
        for bad in [
            "",
            "2025-01-31",
            "2025-01-31T12:00:00",
            "2025-13-01T00:00:00Z",
            "2025-01-31 12:00:00Z",
            "2025-01-31T12:00:00.Z",
            "2025-01-31T12:00:00+0200",
            "2025-01-31T12:00:00Zjunk",
            "２025-01-31T12:00:00Z",
        ] {
            assert!(!is_date_time_stamp(bad), "{bad}");
        }
    }

    #[test]
    fn builds_a_vc2_credential() {
        let issuer = DidKey::from(key().verifying_key());
        let types = ["VerifiableCredential".to_owned(), "MembershipCredential".to_owned()];
        let credential = build_credential(CredentialDraft {
            issuer: &issuer,
            account: "did:plc:ewvi7nxzyoun6zhxrhs64oiz",
            id: "urn:uuid:6a1f0f54-55a0-4b8e-8c1b-3f4a5e9e2b10",
            types: &types,
            subject: json!({"id": "did:plc:abc", "memberOf": "Example Club"}),
            valid_from: "2025-01-01T00:00:00Z",
            valid_until: Some("2026-01-01T00:00:00Z"),
            status: Some(status_entry("https://node.example/status/1", 42)),
        })
        .unwrap();
        assert_eq!(credential["@context"], json!([VC_V2_CONTEXT]));
        assert_eq!(credential["type"], json!(["VerifiableCredential", "MembershipCredential"]));
        assert_eq!(credential["issuer"]["id"], issuer.did());
        assert_eq!(credential["issuer"][ACCOUNT_PROPERTY], "did:plc:ewvi7nxzyoun6zhxrhs64oiz");
        assert_eq!(credential["validUntil"], "2026-01-01T00:00:00Z");
        assert_eq!(credential["credentialStatus"]["statusListIndex"], "42");

        let signed = sign(&credential, &key(), "2025-01-01T00:00:00Z").unwrap();
        let verified = verify_credential(&signed).unwrap();
        assert_eq!(verified.key, issuer);
    }

    #[test]
    fn refuses_bad_drafts() {
        let issuer = DidKey::from(key().verifying_key());
        let draft = |subject: Value, valid_from: &'static str| CredentialDraft {
            issuer: &issuer,
            account: "did:plc:abc",
            id: "urn:x",
            types: &[],
            subject,
            valid_from,
            valid_until: None,
            status: None,
        };
        assert!(build_credential(draft(json!({"id": "did:plc:abc"}), "2025-01-01T00:00:00Z")).is_ok());
        assert!(build_credential(draft(json!("no"), "2025-01-01T00:00:00Z")).is_err());
        assert!(build_credential(draft(json!([]), "2025-01-01T00:00:00Z")).is_err());
        assert!(build_credential(draft(json!({}), "yesterday")).is_err());
    }

    #[test]
    fn verify_credential_wants_the_signer_as_issuer() {
        let other = DidKey::from(SigningKey::from_bytes(&[8; 32]).verifying_key());
        let issuer = DidKey::from(key().verifying_key());
        for (issuer_value, ok) in [
            (json!(issuer.did()), true),
            (json!({"id": issuer.did()}), true),
            (json!(other.did()), false),
            (json!({"id": other.did()}), false),
            (json!({"name": "no id"}), false),
        ] {
            let credential = json!({
                "@context": [VC_V2_CONTEXT],
                "type": ["VerifiableCredential"],
                "issuer": issuer_value,
                "validFrom": "2025-01-01T00:00:00Z",
                "credentialSubject": {"id": "did:plc:abc"},
            });
            let signed = sign(&credential, &key(), "2025-01-01T00:00:00Z").unwrap();
            let result = verify_credential(&signed);
            assert_eq!(result.is_ok(), ok, "{issuer_value}: {result:?}");
            if !ok {
                assert_eq!(result.unwrap_err().name(), "InvalidCredential");
            }
        }
        let not_vc =
            sign(&json!({"@context": [VC_V2_CONTEXT], "issuer": issuer.did()}), &key(), "2025-01-01T00:00:00Z")
                .unwrap();
        assert!(matches!(verify_credential(&not_vc), Err(CredentialError::InvalidCredential(_))));
    }

    #[test]
    fn error_names() {
        assert_eq!(CredentialError::TooLarge { len: 1, max: 0 }.name(), "CredentialTooLarge");
        assert_eq!(CredentialError::TooDeep { max: 0 }.name(), "CredentialTooLarge");
        assert_eq!(CredentialError::BadSignature.name(), "InvalidProof");
        assert_eq!(CredentialError::UnsupportedCryptosuite("x".into()).name(), "UnsupportedCryptosuite");
        assert_eq!(CredentialError::from(DidKeyError::NotDidKey).name(), "UnsupportedVerificationMethod");
        assert_eq!(CredentialError::StatusListTooLarge { max: 0 }.name(), "StatusListTooLarge");
    }
}
