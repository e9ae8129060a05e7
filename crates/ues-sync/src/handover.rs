//! The account hand-over: what a node sends an authorized device of an account that asks to
//! replicate it (`replicate DID --from PEER`). It carries the account (handle, signing key,
//! credentials, PLC operation) and the account's signed device authorizations, so the new
//! device knows from the start which peers may sync the account with it.
//!
//! The message is JSON (a handful of fields, once per account). Whatever a peer sends is
//! bounded before it is parsed, and every authorization must be signed by the handed key and
//! name the account.

use serde_json::{Value, json};
use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::syntax::{Did, Handle};

use crate::entry::Entry;
use crate::replica::Signed;

/// Largest hand-over message read.
pub const MAX_HANDOVER_BYTES: usize = 256 << 10;
/// Most device authorizations one hand-over carries.
pub const MAX_HANDOVER_AUTHS: usize = 512;

/// Why a hand-over was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandoverError {
    /// Larger than [`MAX_HANDOVER_BYTES`], or more than [`MAX_HANDOVER_AUTHS`] authorizations.
    #[error("hand-over too large")]
    TooLarge,
    /// Not the expected shape.
    #[error("malformed hand-over: {0}")]
    Malformed(String),
    /// The peer refused (its reason).
    #[error("the peer refused: {0}")]
    Refused(String),
    /// The peer handed over another account than the one asked for.
    #[error("the peer handed over {found}, not {expected}")]
    OtherAccount {
        /// The account asked for.
        expected: Did,
        /// The account handed over.
        found: String,
    },
    /// An authorization that the handed key did not sign, or of another account.
    #[error("authorization {0} does not verify against the account's key")]
    BadAuthorization(usize),
}

fn malformed(m: impl std::fmt::Display) -> HandoverError {
    HandoverError::Malformed(m.to_string())
}

/// An account handed over.
pub struct Handover {
    /// The account.
    pub did: Did,
    /// Its handle.
    pub handle: Handle,
    /// Its signing key.
    pub key: Keypair,
    /// Its email, when it has one.
    pub email: Option<String>,
    /// Its password hash, when it has one.
    pub password_hash: Option<String>,
    /// Its signed PLC genesis operation, when known.
    pub plc_op: Option<String>,
    /// Its device authorizations (and revocations) as they travel, each verified.
    pub auths: Vec<Signed>,
}

impl std::fmt::Debug for Handover {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handover")
            .field("did", &self.did)
            .field("handle", &self.handle)
            .field("auths", &self.auths.len())
            .finish_non_exhaustive()
    }
}

impl Handover {
    /// The message.
    pub fn encode(&self) -> Vec<u8> {
        let auths: Vec<String> = self.auths.iter().map(|a| hex::encode(&a.bytes)).collect();
        json!({
            "did": self.did.to_string(),
            "handle": self.handle.to_string(),
            "keyType": match self.key.key_type() { KeyType::K256 => "k256", KeyType::P256 => "p256" },
            "key": hex::encode(self.key.to_bytes()),
            "email": self.email,
            "passwordHash": self.password_hash,
            "plcOp": self.plc_op,
            "auths": auths,
        })
        .to_string()
        .into_bytes()
    }

    /// A refusal message (`{"error": reason}`).
    pub fn refusal(reason: &str) -> Vec<u8> {
        json!({ "error": reason }).to_string().into_bytes()
    }

    /// Reads a hand-over of `expected` from a peer: bounded, every field checked, every
    /// authorization verified against the handed key.
    pub fn decode(bytes: &[u8], expected: &Did) -> Result<Handover, HandoverError> {
        if bytes.len() > MAX_HANDOVER_BYTES {
            return Err(HandoverError::TooLarge);
        }
        let v: Value = serde_json::from_slice(bytes).map_err(malformed)?;
        if let Some(e) = v.get("error") {
            return Err(HandoverError::Refused(e.as_str().unwrap_or("no reason").chars().take(256).collect()));
        }
        let s = |k: &str| v.get(k).and_then(Value::as_str);
        let opt = |k: &str| s(k).map(str::to_string);
        let found = s("did").ok_or_else(|| malformed("no did"))?;
        if found != expected.as_str() {
            return Err(HandoverError::OtherAccount {
                expected: expected.clone(),
                found: found.chars().take(256).collect(),
            });
        }
        let kind = match s("keyType") {
            Some("p256") => KeyType::P256,
            Some("k256") | None => KeyType::K256,
            Some(other) => return Err(malformed(format!("key type {other}"))),
        };
        let secret = hex::decode(s("key").ok_or_else(|| malformed("no key"))?).map_err(malformed)?;
        let key = Keypair::from_bytes(kind, &secret).map_err(malformed)?;
        let handle = Handle::new(s("handle").ok_or_else(|| malformed("no handle"))?).map_err(malformed)?;
        let list = match v.get("auths") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(malformed("auths is not a list")),
        };
        if list.len() > MAX_HANDOVER_AUTHS {
            return Err(HandoverError::TooLarge);
        }
        let public = key.public();
        let mut auths = Vec::with_capacity(list.len());
        for (i, a) in list.iter().enumerate() {
            let bytes = hex::decode(a.as_str().ok_or_else(|| malformed("an authorization is not a string"))?)
                .map_err(malformed)?;
            match Entry::decode(&bytes) {
                Ok(Entry::Auth(auth)) if auth.did == *expected && auth.verify(&public).is_ok() => {}
                _ => return Err(HandoverError::BadAuthorization(i)),
            }
            auths.push(Signed { bytes, block: None });
        }
        Ok(Handover {
            did: expected.clone(),
            handle,
            key,
            email: opt("email"),
            password_hash: opt("passwordHash"),
            plc_op: opt("plcOp"),
            auths,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::DeviceAuth;
    use crate::hlc::Timestamp;

    fn sample(key: &Keypair, did: &Did, signer: &Keypair) -> Handover {
        let auth = DeviceAuth::sign(signer, did.clone(), [5; 32], Timestamp { wall_ms: 1, logical: 0 }, false);
        Handover {
            did: did.clone(),
            handle: Handle::new("alice.test").unwrap(),
            key: Keypair::from_bytes(key.key_type(), &key.to_bytes()).unwrap(),
            email: Some("a@example.com".into()),
            password_hash: None,
            plc_op: None,
            auths: vec![Signed { bytes: Entry::Auth(auth).encode(), block: None }],
        }
    }

    #[test]
    fn a_hand_over_round_trips_and_refuses_foreign_authorizations_and_oversize() {
        let key = Keypair::generate(KeyType::K256);
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let bytes = sample(&key, &did, &key).encode();
        let got = Handover::decode(&bytes, &did).unwrap();
        assert_eq!(got.auths.len(), 1);
        assert_eq!(got.key.public(), key.public());
        assert_eq!(got.email.as_deref(), Some("a@example.com"));
        // Another account asked for.
        let other = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        assert!(matches!(Handover::decode(&bytes, &other), Err(HandoverError::OtherAccount { .. })));
        // An authorization signed by another key.
        let forged = sample(&key, &did, &Keypair::generate(KeyType::K256)).encode();
        assert_eq!(Handover::decode(&forged, &did).unwrap_err(), HandoverError::BadAuthorization(0));
        // Too large, before parsing.
        let big = vec![b' '; MAX_HANDOVER_BYTES + 1];
        assert_eq!(Handover::decode(&big, &did).unwrap_err(), HandoverError::TooLarge);
        assert!(matches!(Handover::decode(&Handover::refusal("no"), &did), Err(HandoverError::Refused(_))));
        assert!(matches!(Handover::decode(b"[1", &did), Err(HandoverError::Malformed(_))));
    }
}
