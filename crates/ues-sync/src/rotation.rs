//! Signing-key rotation of a replicated account: what a revocation sets off on the node that
//! holds the DID's rotation key, so that the key a revoked device holds signs nothing anyone
//! accepts from then on.
//!
//! The rotation is a log entry (`k: 18`) signed by the outgoing key, naming a body block:
//! `{key: did:key of the new key, prev: did:key of the outgoing key, [plc: the signed PLC
//! operation that publishes the new key], seals: [{d: device key, s: sealed secret}]}`. The
//! new secret is sealed to each device that stays authorized, as libsodium's sealed boxes
//! (`crypto_box_seal`: an ephemeral X25519 key, XSalsa20-Poly1305) to the X25519 form of the
//! device's Ed25519 key, so only those devices open it, whoever relays the entry.
//!
//! A replica takes a rotation that moves its current key forward (signed by it, `prev` naming
//! it; the node checks the PLC operation against the DID's rotation keys before the key
//! changes), and an older one, already followed, as history: it tells which key signed the
//! account's earlier authorizations.

use std::collections::BTreeMap;

use cid::Cid;
use ed25519_dalek::{SigningKey, VerifyingKey};
use ues_repo::crypto::{KeyType, Keypair, PublicKey};
use ues_repo::ipld::Ipld;
use ues_repo::ipld::dagcbor::{self, DecodeOptions};

use crate::vv::DeviceId;

/// Largest rotation body read.
pub const MAX_ROTATION_BYTES: usize = 64 << 10;
/// Most devices a rotation seals the new key to.
pub const MAX_SEALS: usize = 256;
/// Largest PLC operation a rotation carries.
pub const MAX_PLC_OP_BYTES: usize = 8 << 10;

/// Why a rotation body was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed key rotation: {0}")]
pub struct RotationError(pub String);

fn bad(m: impl std::fmt::Display) -> RotationError {
    RotationError(m.to_string())
}

/// What a rotation says: the new key, the key it replaces, the PLC operation publishing it,
/// and the new secret sealed to each device that stays.
#[derive(Clone, PartialEq, Eq)]
pub struct RotationBody {
    /// The new signing key.
    pub key: PublicKey,
    /// The key it replaces (which signs the rotation entry).
    pub prev: PublicKey,
    /// The signed PLC operation (JSON) that makes `key` the DID's `atproto` verification
    /// method, when the DID is a did:plc whose operations the rotating node holds.
    pub plc: Option<String>,
    /// The new secret, sealed to each device that stays authorized.
    pub seals: BTreeMap<DeviceId, Vec<u8>>,
}

impl std::fmt::Debug for RotationBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RotationBody")
            .field("key", &self.key.did_key())
            .field("prev", &self.prev.did_key())
            .field("plc", &self.plc.is_some())
            .field("seals", &self.seals.len())
            .finish()
    }
}

/// The X25519 public key of a device's Ed25519 key (its Montgomery form).
fn x25519_public(device: &DeviceId) -> Option<crypto_box::PublicKey> {
    let v = VerifyingKey::from_bytes(device).ok()?;
    Some(crypto_box::PublicKey::from_bytes(v.to_montgomery().to_bytes()))
}

/// The X25519 secret of a device's Ed25519 key (the scalar its signatures use).
fn x25519_secret(device: &SigningKey) -> crypto_box::SecretKey {
    crypto_box::SecretKey::from_bytes(device.to_scalar_bytes())
}

impl RotationBody {
    /// A rotation from `prev` to `new`, its secret sealed to each of `devices`.
    pub fn new(
        prev: &PublicKey,
        new: &Keypair,
        plc: Option<String>,
        devices: impl IntoIterator<Item = DeviceId>,
    ) -> Result<Self, RotationError> {
        let secret = zeroize::Zeroizing::new(new.to_bytes());
        let mut seals = BTreeMap::new();
        for d in devices {
            let pk = x25519_public(&d).ok_or_else(|| bad("a device key is not an Ed25519 point"))?;
            let sealed = pk.seal(&mut rand::rngs::OsRng, &secret).map_err(|_| bad("sealing failed"))?;
            seals.insert(d, sealed);
            if seals.len() > MAX_SEALS {
                return Err(bad(format!("more than {MAX_SEALS} devices")));
            }
        }
        Ok(RotationBody { key: new.public(), prev: *prev, plc, seals })
    }

    /// The new key, when this body sealed it to `device`.
    pub fn open(&self, device: &SigningKey) -> Option<Keypair> {
        let sealed = self.seals.get(&device.verifying_key().to_bytes())?;
        let secret = zeroize::Zeroizing::new(x25519_secret(device).unseal(sealed).ok()?);
        let key = Keypair::from_bytes(self.key.key_type(), &secret).ok()?;
        (key.public() == self.key).then_some(key)
    }

    /// The canonical DAG-CBOR block and its CID.
    pub fn encode(&self) -> (Cid, Vec<u8>) {
        let mut m = BTreeMap::new();
        m.insert("key".to_string(), Ipld::String(self.key.did_key()));
        m.insert("prev".to_string(), Ipld::String(self.prev.did_key()));
        if let Some(op) = &self.plc {
            m.insert("plc".to_string(), Ipld::String(op.clone()));
        }
        let seals = self
            .seals
            .iter()
            .map(|(d, s)| {
                Ipld::Map(BTreeMap::from([
                    ("d".to_string(), Ipld::Bytes(d.to_vec())),
                    ("s".to_string(), Ipld::Bytes(s.clone())),
                ]))
            })
            .collect();
        m.insert("seals".to_string(), Ipld::List(seals));
        let bytes = dagcbor::encode(&Ipld::Map(m));
        (ues_repo::ipld::cid_sha256(crate::entry::DAG_CBOR, &bytes), bytes)
    }

    /// Reads a body strictly: bounded, canonical, exactly these fields, valid keys.
    pub fn decode(bytes: &[u8]) -> Result<Self, RotationError> {
        if bytes.len() > MAX_ROTATION_BYTES {
            return Err(bad(format!("body of {} bytes", bytes.len())));
        }
        let Ipld::Map(mut m) = dagcbor::decode(bytes, &DecodeOptions::default()).map_err(bad)? else {
            return Err(bad("not a map"));
        };
        let key = |v: Option<Ipld>, name: &str| match v {
            Some(Ipld::String(s)) => PublicKey::from_did_key(&s).map_err(|e| bad(format!("{name}: {e}"))),
            _ => Err(bad(format!("no {name}"))),
        };
        let new = key(m.remove("key"), "key")?;
        let prev = key(m.remove("prev"), "prev")?;
        let plc = match m.remove("plc") {
            None => None,
            Some(Ipld::String(s)) if s.len() <= MAX_PLC_OP_BYTES => Some(s),
            Some(_) => return Err(bad("plc is not a PLC operation")),
        };
        let Some(Ipld::List(list)) = m.remove("seals") else { return Err(bad("no seals")) };
        if !m.is_empty() {
            return Err(bad("unknown fields"));
        }
        if list.len() > MAX_SEALS {
            return Err(bad(format!("more than {MAX_SEALS} seals")));
        }
        let mut seals = BTreeMap::new();
        for s in list {
            let Ipld::Map(mut s) = s else { return Err(bad("a seal is not a map")) };
            let (Some(Ipld::Bytes(d)), Some(Ipld::Bytes(sealed))) = (s.remove("d"), s.remove("s")) else {
                return Err(bad("a seal is not {d, s}"));
            };
            if !s.is_empty() {
                return Err(bad("a seal is not {d, s}"));
            }
            let d: DeviceId = d.as_slice().try_into().map_err(|_| bad("a device key is not 32 bytes"))?;
            // An ephemeral key, the tag and a secret of 32 bytes.
            if sealed.len() != crypto_box::SEALBYTES + 32 {
                return Err(bad("a sealed key has the wrong length"));
            }
            seals.insert(d, sealed);
        }
        if new == prev {
            return Err(bad("the new key is the old one"));
        }
        // Keys are secp256k1 or P-256 (what AT Protocol signs with); both decode above.
        let _: KeyType = new.key_type();
        let out = RotationBody { key: new, prev, plc, seals };
        // Canonical: re-encoding gives the same bytes (one body, one CID).
        if out.encode().1 != bytes {
            return Err(bad("not canonical"));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_sealed_devices_open_the_new_key_and_the_body_round_trips() {
        let old = Keypair::generate(KeyType::K256);
        let new = Keypair::generate(KeyType::K256);
        let stays = SigningKey::from_bytes(&[7; 32]);
        let also = SigningKey::from_bytes(&[8; 32]);
        let revoked = SigningKey::from_bytes(&[9; 32]);
        let body = RotationBody::new(
            &old.public(),
            &new,
            Some("{}".into()),
            [stays.verifying_key().to_bytes(), also.verifying_key().to_bytes()],
        )
        .unwrap();
        let (cid, bytes) = body.encode();
        let back = RotationBody::decode(&bytes).unwrap();
        assert_eq!(back, body);
        assert_eq!(ues_repo::ipld::cid_sha256(crate::entry::DAG_CBOR, &bytes), cid);
        assert_eq!(back.open(&stays).unwrap().public(), new.public());
        assert_eq!(back.open(&also).unwrap().public(), new.public());
        assert!(back.open(&revoked).is_none(), "a device the key was not sealed to opens nothing");
        // A seal moved to another device's slot opens nothing there.
        let mut moved = back.clone();
        let s = moved.seals.remove(&stays.verifying_key().to_bytes()).unwrap();
        moved.seals.insert(revoked.verifying_key().to_bytes(), s);
        assert!(moved.open(&revoked).is_none());
    }

    #[test]
    fn malformed_bodies_are_refused() {
        let old = Keypair::generate(KeyType::K256);
        let new = Keypair::generate(KeyType::K256);
        let body = RotationBody::new(&old.public(), &new, None, [[3u8; 32]].into_iter().filter(|_| false)).unwrap();
        let (_, bytes) = body.encode();
        RotationBody::decode(&bytes).unwrap();
        assert!(RotationBody::decode(&vec![0; MAX_ROTATION_BYTES + 1]).is_err());
        assert!(RotationBody::decode(&[0xa0]).is_err());
        let mut m = BTreeMap::new();
        m.insert("key".to_string(), Ipld::String(old.public().did_key()));
        m.insert("prev".to_string(), Ipld::String(old.public().did_key()));
        m.insert("seals".to_string(), Ipld::List(vec![]));
        assert!(RotationBody::decode(&dagcbor::encode(&Ipld::Map(m.clone()))).is_err(), "same key");
        m.insert("key".to_string(), Ipld::String(new.public().did_key()));
        m.insert("x".to_string(), Ipld::Null);
        assert!(RotationBody::decode(&dagcbor::encode(&Ipld::Map(m))).is_err(), "unknown field");
    }
}
