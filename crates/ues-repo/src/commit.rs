//! Repository commits, format v3: `{did, version: 3, data, rev, prev: null, sig}`.
//!
//! The signature is over the DAG-CBOR of the commit without `sig` (SHA-256, 64-byte low-S).
//! `prev` is present and null, as v3 requires.

use cid::Cid;
use ues_ipld::{DAG_CBOR, Ipld, cid_sha256, dagcbor};

use crate::crypto::{CryptoError, Keypair, PublicKey};
use crate::syntax::{Did, Tid};

/// Why a commit block was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommitError {
    /// Not strict DAG-CBOR.
    #[error("commit is not strict DAG-CBOR: {0}")]
    Cbor(#[from] ues_ipld::CborError),
    /// A field is missing or of the wrong kind.
    #[error("commit field {0} is missing or malformed")]
    Field(&'static str),
    /// A version other than 3.
    #[error("commit version {0} is not supported (only 3)")]
    Version(i128),
    /// The signature does not verify against the key.
    #[error("commit signature: {0}")]
    Signature(#[from] CryptoError),
}

/// A signed commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Commit {
    /// The repository's DID.
    pub did: Did,
    /// Root of the record tree.
    pub data: Cid,
    /// Revision: a TID that increases with every commit.
    pub rev: Tid,
    /// Previous commit (virtually always `None` in v3).
    pub prev: Option<Cid>,
    /// 64-byte signature.
    pub sig: Vec<u8>,
}

fn unsigned_map(did: &Did, data: &Cid, rev: &Tid, prev: Option<&Cid>) -> std::collections::BTreeMap<String, Ipld> {
    [
        ("did".to_string(), Ipld::String(did.to_string())),
        ("version".to_string(), Ipld::Integer(3)),
        ("data".to_string(), Ipld::Link(*data)),
        ("rev".to_string(), Ipld::String(rev.to_string())),
        ("prev".to_string(), prev.map_or(Ipld::Null, |p| Ipld::Link(*p))),
    ]
    .into()
}

impl Commit {
    /// Builds and signs a commit.
    pub fn sign(did: Did, data: Cid, rev: Tid, key: &Keypair) -> Commit {
        let unsigned = dagcbor::encode(&Ipld::Map(unsigned_map(&did, &data, &rev, None)));
        let sig = key.sign(&unsigned).to_vec();
        Commit { did, data, rev, prev: None, sig }
    }

    /// The bytes the signature covers.
    pub fn unsigned_bytes(&self) -> Vec<u8> {
        dagcbor::encode(&Ipld::Map(unsigned_map(&self.did, &self.data, &self.rev, self.prev.as_ref())))
    }

    /// The signed commit's block.
    pub fn encode(&self) -> Vec<u8> {
        let mut m = unsigned_map(&self.did, &self.data, &self.rev, self.prev.as_ref());
        m.insert("sig".into(), Ipld::Bytes(self.sig.clone()));
        dagcbor::encode(&Ipld::Map(m))
    }

    /// The block and its CID.
    pub fn to_block(&self) -> (Cid, Vec<u8>) {
        let bytes = self.encode();
        (cid_sha256(DAG_CBOR, &bytes), bytes)
    }

    /// Decodes a commit block (strictly), without checking the signature.
    pub fn decode(bytes: &[u8]) -> Result<Commit, CommitError> {
        let v = dagcbor::decode_atproto(bytes)?;
        let Ipld::Map(m) = v else { return Err(CommitError::Field("(top level)")) };
        match m.get("version") {
            Some(Ipld::Integer(3)) => {}
            Some(Ipld::Integer(n)) => return Err(CommitError::Version(*n)),
            _ => return Err(CommitError::Field("version")),
        }
        let did =
            m.get("did").and_then(Ipld::as_str).and_then(|s| Did::new(s).ok()).ok_or(CommitError::Field("did"))?;
        let data = *m.get("data").and_then(Ipld::as_link).ok_or(CommitError::Field("data"))?;
        let rev =
            m.get("rev").and_then(Ipld::as_str).and_then(|s| Tid::new(s).ok()).ok_or(CommitError::Field("rev"))?;
        let prev = match m.get("prev") {
            Some(Ipld::Null) => None,
            Some(Ipld::Link(c)) => Some(*c),
            _ => return Err(CommitError::Field("prev")),
        };
        let sig = match m.get("sig") {
            Some(Ipld::Bytes(b)) => b.clone(),
            _ => return Err(CommitError::Field("sig")),
        };
        if m.len() != 6 {
            return Err(CommitError::Field("(unexpected extra fields)"));
        }
        Ok(Commit { did, data, rev, prev, sig })
    }

    /// Checks the signature against the account's signing key.
    pub fn verify(&self, key: &PublicKey) -> Result<(), CommitError> {
        Ok(key.verify(&self.unsigned_bytes(), &self.sig)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KeyType;

    #[test]
    fn sign_encode_decode_verify_and_detect_tampering() {
        let key = Keypair::generate(KeyType::K256);
        let did = Did::new("did:plc:abcdefghijklmnopqrstuvwx").unwrap();
        let data = cid_sha256(DAG_CBOR, b"\xa2ae\x80al\xf6");
        let c = Commit::sign(did.clone(), data, Tid::from_parts(1, 0), &key);
        let bytes = c.encode();
        let back = Commit::decode(&bytes).unwrap();
        assert_eq!(back, c);
        back.verify(&key.public()).unwrap();
        let mut forged = back.clone();
        forged.rev = Tid::from_parts(2, 0);
        assert!(forged.verify(&key.public()).is_err());
        let other = Keypair::generate(KeyType::K256);
        assert!(c.verify(&other.public()).is_err());
        // Field order on the wire: did, rev, sig, data, prev, version (length, then bytes).
        let v = dagcbor::decode_atproto(&bytes).unwrap();
        assert!(matches!(v.get("prev"), Some(Ipld::Null)));
    }
}
