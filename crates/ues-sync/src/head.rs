//! Head announcements: a replica's signed statement of what it holds of one account (the
//! log's fingerprint and size, the latest commit), small enough to gossip on every write.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use prost::Message;
use ues_repo::syntax::Did;

use crate::proto;
use crate::recon::{Scope, SyncError, scope_fingerprint};
use crate::replica::Replica;
use crate::vv::DeviceId;

/// Largest announcement accepted.
pub const MAX_HEAD_BYTES: usize = 1024;

/// A verified head announcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The account.
    pub did: Did,
    /// Fingerprint of the announcer's log of the account.
    pub fingerprint: [u8; 16],
    /// Entries in it.
    pub count: u64,
    /// The latest commit (CID bytes) and revision, when known.
    pub commit: Option<(Vec<u8>, String)>,
    /// The announcing device.
    pub device: DeviceId,
}

impl Head {
    /// What `rep` holds of `did` now, with an optional commit (CID bytes, rev).
    pub fn of(rep: &Replica, did: &Did, commit: Option<(Vec<u8>, String)>, device: DeviceId) -> Head {
        let (fingerprint, count) = scope_fingerprint(rep, &Scope::new([did.clone()]));
        Head { did: did.clone(), fingerprint, count, commit, device }
    }

    fn unsigned(&self) -> proto::Head {
        let (commit, rev) = self.commit.clone().unwrap_or_default();
        proto::Head {
            did: self.did.to_string(),
            fingerprint: self.fingerprint.to_vec(),
            count: self.count,
            commit,
            rev,
            device: self.device.to_vec(),
            sig: Vec::new(),
        }
    }

    /// Signs and encodes (the key must be the announcing device's).
    pub fn sign(&self, key: &SigningKey) -> Vec<u8> {
        let mut msg = self.unsigned();
        msg.sig = key.sign(&msg.encode_to_vec()).to_bytes().to_vec();
        msg.encode_to_vec()
    }

    /// Decodes and checks the signature; whether the device may speak for the account is the
    /// caller's question (its authorizations live in the replica).
    pub fn verify(bytes: &[u8]) -> Result<Head, SyncError> {
        let bad = |m: &str| SyncError::Protocol(format!("head announcement: {m}"));
        if bytes.len() > MAX_HEAD_BYTES {
            return Err(bad("too large"));
        }
        let msg = proto::Head::decode(bytes).map_err(|e| bad(&e.to_string()))?;
        let did = Did::new(msg.did.as_str()).map_err(|e| bad(&e.to_string()))?;
        let fingerprint: [u8; 16] = msg.fingerprint.as_slice().try_into().map_err(|_| bad("fingerprint"))?;
        let device: DeviceId = msg.device.as_slice().try_into().map_err(|_| bad("device"))?;
        let sig: [u8; 64] = msg.sig.as_slice().try_into().map_err(|_| bad("signature"))?;
        let commit = (!msg.commit.is_empty()).then(|| (msg.commit.clone(), msg.rev.clone()));
        let head = Head { did, fingerprint, count: msg.count, commit, device };
        let key = VerifyingKey::from_bytes(&device).map_err(|_| bad("device key"))?;
        key.verify_strict(&head.unsigned().encode_to_vec(), &ed25519_dalek::Signature::from_bytes(&sig))
            .map_err(|_| bad("bad signature"))?;
        Ok(head)
    }

    /// Whether `rep` holds exactly what this head says (else a session is due).
    pub fn matches(&self, rep: &Replica) -> bool {
        scope_fingerprint(rep, &Scope::new([self.did.clone()])) == (self.fingerprint, self.count)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Arc;

    use ues_repo::crypto::{KeyType, Keypair};

    use super::*;
    use crate::hlc::Hlc;

    #[test]
    fn heads_are_signed_small_and_say_when_a_replica_is_behind() {
        let account = Keypair::generate(KeyType::K256);
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let keys = Arc::new(HashMap::from([(did.clone(), account.public())]));
        let key = SigningKey::from_bytes(&[3; 32]);
        let mut a = Replica::in_memory(keys.clone(), Hlc::new(60_000), Some(key.clone()));
        let b = Replica::in_memory(keys, Hlc::new(60_000), None);
        a.authorize(&account, &did, a.device_id().unwrap(), false).unwrap();
        let head = Head::of(&a, &did, Some((vec![1, 2, 3], "3kabc".into())), a.device_id().unwrap());
        let bytes = head.sign(&key);
        assert!(bytes.len() < 200, "{} bytes", bytes.len());
        let got = Head::verify(&bytes).unwrap();
        assert_eq!(got, head);
        assert!(got.matches(&a) && !got.matches(&b));
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x10;
            assert!(Head::verify(&bad).map(|h| h != head).unwrap_or(true), "byte {i}");
        }
    }
}
