//! Signed log entries: operations written by devices, the account's device authorizations, and
//! the rotations of its signing key.
//!
//! Both are canonical DAG-CBOR maps with one-letter keys (so a small edit stays small) and are
//! content-addressed by BLAKE3 of their encoding: the id is computed by whoever receives the
//! bytes, never taken from the wire.
//!
//! Operation: `{a: account DID, c: collection, d: device key, [e: set element],
//! g: Ed25519 signature, h: HLC, k: kind, [l: record CID], [n: counter delta], r: record key,
//! s: device sequence}`: the target AT-URI is `at://a/c/r`.
//! Authorization: `{a: DID, d: device key, g: account-key signature, h: HLC, k: 16 | 17,
//! [s: the last device sequence number a revocation accepts]}`.
//! Key rotation: `{a: DID, d: rotating device, g: signature by the outgoing key, h: HLC,
//! k: 18, l: CID of the rotation body}` (see [`crate::rotation`]).
//! Signatures cover the encoding without `g`.

use cid::Cid;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use ues_repo::crypto::{Keypair, PublicKey};
use ues_repo::ipld::Ipld;
use ues_repo::ipld::dagcbor::{self, CborError, DecodeOptions, Reader};
use ues_repo::syntax::{Did, Nsid, RecordKey};

use crate::hlc::Timestamp;
use crate::vv::DeviceId;

/// BLAKE3 of an entry's encoding.
pub type EntryId = [u8; 32];

/// Largest encoded entry accepted.
pub const MAX_ENTRY_BYTES: usize = 2048;
/// Largest set element.
pub const MAX_ELEMENT_BYTES: usize = 512;
/// Multicodec of DAG-CBOR (entries are stored as blocks with BLAKE3 CIDs).
pub const DAG_CBOR: u64 = 0x71;

/// What an operation does to its target record.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// The record's value becomes the block `cid` (a register: the latest write wins).
    Put(Cid),
    /// The record is deleted (a tombstone: older writes stay beaten).
    Delete,
    /// A counter record grows by the delta.
    Add(i64),
    /// An element joins a set record.
    SetAdd(String),
    /// An element leaves a set record.
    SetRemove(String),
}

impl OpKind {
    fn code(&self) -> u64 {
        match self {
            OpKind::Put(_) => 0,
            OpKind::Delete => 1,
            OpKind::Add(_) => 2,
            OpKind::SetAdd(_) => 3,
            OpKind::SetRemove(_) => 4,
        }
    }
}

/// A device's signed write to one record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Op {
    /// The account written to.
    pub did: Did,
    /// The writing device's Ed25519 key.
    pub device: DeviceId,
    /// The device's sequence number for this operation (1, 2, …): its dot.
    pub seq: u64,
    /// When, by the device's hybrid logical clock.
    pub hlc: Timestamp,
    /// What it does.
    pub kind: OpKind,
    /// The record's collection.
    pub collection: Nsid,
    /// The record's key.
    pub rkey: RecordKey,
    /// Ed25519 signature over the encoding without `g`.
    pub sig: [u8; 64],
}

/// The account's signed statement that a device may (or may no longer) write for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceAuth {
    /// The account.
    pub did: Did,
    /// The device's Ed25519 key.
    pub device: DeviceId,
    /// From when (authorize: the device's operations must be later) or from when no longer
    /// (revoke: its operations at or after this time are refused).
    pub hlc: Timestamp,
    /// A revocation rather than an authorization.
    pub revoke: bool,
    /// For a revocation: the last of the device's sequence numbers it accepts. The device
    /// picks its operations' clocks, so a revoked device could date new operations before its
    /// revocation; its sequence numbers it cannot reuse (equivocation), so later ones are
    /// refused whatever their clock.
    pub upto: Option<u64>,
    /// The account signing key's signature (secp256k1 or P-256, 64 bytes).
    pub sig: [u8; 64],
}

/// The account's signed move from its signing key to a new one, made when a device is
/// revoked; its body ([`crate::rotation::RotationBody`]) travels as a block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRotation {
    /// The account.
    pub did: Did,
    /// The device that rotated the key.
    pub device: DeviceId,
    /// When.
    pub hlc: Timestamp,
    /// The CID of the rotation body.
    pub body: Cid,
    /// The outgoing key's signature.
    pub sig: [u8; 64],
}

impl KeyRotation {
    /// Builds and signs a rotation with the outgoing key.
    pub fn sign(outgoing: &Keypair, did: Did, device: DeviceId, hlc: Timestamp, body: Cid) -> KeyRotation {
        let mut r = KeyRotation { did, device, hlc, body, sig: [0; 64] };
        r.sig = outgoing.sign(&r.encode_inner(false));
        r
    }

    fn encode_inner(&self, with_sig: bool) -> Vec<u8> {
        let sig = with_sig.then_some(&self.sig);
        let mut out = account_entry_head(5, &self.did, &self.device, sig, self.hlc, 18);
        dagcbor::write_str(&mut out, "l");
        dagcbor::write_link(&mut out, &self.body);
        out
    }

    /// Checks the signature against the outgoing key.
    pub fn verify(&self, outgoing: &PublicKey) -> Result<(), EntryError> {
        outgoing.verify(&self.encode_inner(false), &self.sig).map_err(|_| EntryError::BadSignature)
    }
}

/// A log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A write.
    Op(Op),
    /// A device authorization or revocation.
    Auth(DeviceAuth),
    /// A rotation of the account's signing key.
    Rotate(KeyRotation),
}

/// Why entry bytes were refused before any signature was checked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EntryError {
    /// Over [`MAX_ENTRY_BYTES`].
    #[error("entry of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not canonical DAG-CBOR.
    #[error("malformed entry: {0}")]
    Cbor(#[from] CborError),
    /// Well-formed CBOR, wrong shape.
    #[error("malformed entry: {0}")]
    Shape(String),
    /// The signature does not verify.
    #[error("bad signature")]
    BadSignature,
}

fn shape(msg: impl Into<String>) -> EntryError {
    EntryError::Shape(msg.into())
}

impl Op {
    /// Builds and signs an operation.
    pub fn sign(
        key: &SigningKey,
        did: Did,
        seq: u64,
        hlc: Timestamp,
        collection: Nsid,
        rkey: RecordKey,
        kind: OpKind,
    ) -> Op {
        let mut op = Op { did, device: key.verifying_key().to_bytes(), seq, hlc, kind, collection, rkey, sig: [0; 64] };
        op.sig = key.sign(&op.encode_inner(false)).to_bytes();
        op
    }

    fn encode_inner(&self, with_sig: bool) -> Vec<u8> {
        let mut n = 7 + u64::from(with_sig);
        n += match self.kind {
            OpKind::Put(_) | OpKind::Add(_) | OpKind::SetAdd(_) | OpKind::SetRemove(_) => 1,
            OpKind::Delete => 0,
        };
        let mut out = Vec::with_capacity(200);
        dagcbor::write_head(&mut out, 5, n);
        dagcbor::write_str(&mut out, "a");
        dagcbor::write_str(&mut out, self.did.as_str());
        dagcbor::write_str(&mut out, "c");
        dagcbor::write_str(&mut out, self.collection.as_str());
        dagcbor::write_str(&mut out, "d");
        dagcbor::write_bytes(&mut out, &self.device);
        if let OpKind::SetAdd(e) | OpKind::SetRemove(e) = &self.kind {
            dagcbor::write_str(&mut out, "e");
            dagcbor::write_str(&mut out, e);
        }
        if with_sig {
            dagcbor::write_str(&mut out, "g");
            dagcbor::write_bytes(&mut out, &self.sig);
        }
        dagcbor::write_str(&mut out, "h");
        dagcbor::write_head(&mut out, 0, self.hlc.to_u64());
        dagcbor::write_str(&mut out, "k");
        dagcbor::write_head(&mut out, 0, self.kind.code());
        if let OpKind::Put(cid) = &self.kind {
            dagcbor::write_str(&mut out, "l");
            dagcbor::write_link(&mut out, cid);
        }
        if let OpKind::Add(delta) = self.kind {
            dagcbor::write_str(&mut out, "n");
            if delta >= 0 {
                dagcbor::write_head(&mut out, 0, delta as u64);
            } else {
                dagcbor::write_head(&mut out, 1, (-1 - i128::from(delta)) as u64);
            }
        }
        dagcbor::write_str(&mut out, "r");
        dagcbor::write_str(&mut out, self.rkey.as_str());
        dagcbor::write_str(&mut out, "s");
        dagcbor::write_head(&mut out, 0, self.seq);
        out
    }

    /// The signed bytes the signature covers (the map without `g`).
    pub fn unsigned_bytes(&self) -> Vec<u8> {
        self.encode_inner(false)
    }

    /// The target's AT-URI.
    pub fn uri(&self) -> String {
        format!("at://{}/{}/{}", self.did, self.collection, self.rkey)
    }

    /// The record path inside the repository: `collection/rkey`.
    pub fn path(&self) -> String {
        format!("{}/{}", self.collection, self.rkey)
    }

    /// Checks the signature against the device key.
    pub fn verify(&self) -> Result<(), EntryError> {
        let key = VerifyingKey::from_bytes(&self.device).map_err(|_| EntryError::BadSignature)?;
        let sig = ed25519_dalek::Signature::from_bytes(&self.sig);
        key.verify_strict(&self.unsigned_bytes(), &sig).map_err(|_| EntryError::BadSignature)
    }
}

impl DeviceAuth {
    /// Builds and signs an authorization (or a revocation) with the account's signing key.
    pub fn sign(account: &Keypair, did: Did, device: DeviceId, hlc: Timestamp, revoke: bool) -> DeviceAuth {
        let mut a = DeviceAuth { did, device, hlc, revoke, upto: None, sig: [0; 64] };
        a.sig = account.sign(&a.encode_inner(false));
        a
    }

    /// Builds and signs a revocation that accepts the device's operations up to sequence
    /// number `upto` (and before `hlc`) and none after.
    pub fn sign_revocation(account: &Keypair, did: Did, device: DeviceId, hlc: Timestamp, upto: u64) -> DeviceAuth {
        let mut a = DeviceAuth { did, device, hlc, revoke: true, upto: Some(upto), sig: [0; 64] };
        a.sig = account.sign(&a.encode_inner(false));
        a
    }

    fn encode_inner(&self, with_sig: bool) -> Vec<u8> {
        let sig = with_sig.then_some(&self.sig);
        let kind = if self.revoke { 17 } else { 16 };
        let mut out =
            account_entry_head(4 + u64::from(self.upto.is_some()), &self.did, &self.device, sig, self.hlc, kind);
        if let Some(upto) = self.upto {
            dagcbor::write_str(&mut out, "s");
            dagcbor::write_head(&mut out, 0, upto);
        }
        out
    }

    /// Checks the signature against the account's key.
    pub fn verify(&self, account: &PublicKey) -> Result<(), EntryError> {
        account.verify(&self.encode_inner(false), &self.sig).map_err(|_| EntryError::BadSignature)
    }
}

/// The fields every account-signed entry (authorization, rotation) starts with, in canonical
/// order: `a`, `d`, `g` (when signed), `h`, `k`; `fields` counts the map's entries without `g`.
fn account_entry_head(
    fields: u64,
    did: &Did,
    device: &DeviceId,
    sig: Option<&[u8; 64]>,
    hlc: Timestamp,
    kind: u64,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(200);
    dagcbor::write_head(&mut out, 5, fields + u64::from(sig.is_some()));
    dagcbor::write_str(&mut out, "a");
    dagcbor::write_str(&mut out, did.as_str());
    dagcbor::write_str(&mut out, "d");
    dagcbor::write_bytes(&mut out, device);
    if let Some(sig) = sig {
        dagcbor::write_str(&mut out, "g");
        dagcbor::write_bytes(&mut out, sig);
    }
    dagcbor::write_str(&mut out, "h");
    dagcbor::write_head(&mut out, 0, hlc.to_u64());
    dagcbor::write_str(&mut out, "k");
    dagcbor::write_head(&mut out, 0, kind);
    out
}

impl Entry {
    /// The canonical encoding (what the id hashes).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Entry::Op(op) => op.encode_inner(true),
            Entry::Auth(a) => a.encode_inner(true),
            Entry::Rotate(r) => r.encode_inner(true),
        }
    }

    /// The entry's timestamp (its place in the log).
    pub fn hlc(&self) -> Timestamp {
        match self {
            Entry::Op(op) => op.hlc,
            Entry::Auth(a) => a.hlc,
            Entry::Rotate(r) => r.hlc,
        }
    }

    /// The account the entry belongs to.
    pub fn did(&self) -> &Did {
        match self {
            Entry::Op(op) => &op.did,
            Entry::Auth(a) => &a.did,
            Entry::Rotate(r) => &r.did,
        }
    }

    /// Decodes strictly: canonical DAG-CBOR, exactly the fields the kind has, valid
    /// identifiers, bounded sizes. Signatures are not checked here.
    pub fn decode(bytes: &[u8]) -> Result<Entry, EntryError> {
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(EntryError::TooLarge(bytes.len()));
        }
        let mut r = Reader::new(bytes);
        let n = r.map_len()?;
        if n > 11 {
            return Err(shape("too many fields"));
        }
        let mut f = Fields::default();
        let mut prev: Option<&str> = None;
        for _ in 0..n {
            let k = r.key(prev)?;
            match k {
                "a" => f.a = Some(r.str()?.to_string()),
                "c" => f.c = Some(r.str()?.to_string()),
                "d" => f.d = Some(fixed::<32>(r.bytes()?, "d")?),
                "e" => f.e = Some(r.str()?.to_string()),
                "g" => f.g = Some(fixed::<64>(r.bytes()?, "g")?),
                "h" => f.h = Some(r.uint()?),
                "k" => f.k = Some(r.uint()?),
                "l" => f.l = Some(r.link()?),
                "n" => {
                    f.n = Some(match r.value(&DecodeOptions::default(), 0)? {
                        Ipld::Integer(i) => i64::try_from(i).map_err(|_| shape("counter delta out of range"))?,
                        other => return Err(shape(format!("n is a {}", other.kind_name()))),
                    })
                }
                "r" => f.r = Some(r.str()?.to_string()),
                "s" => f.s = Some(r.uint()?),
                other => return Err(shape(format!("unknown field {other:?}"))),
            }
            prev = Some(k);
        }
        r.finish()?;
        f.build()
    }
}

fn fixed<const N: usize>(b: &[u8], field: &str) -> Result<[u8; N], EntryError> {
    b.try_into().map_err(|_| shape(format!("{field} must be {N} bytes, not {}", b.len())))
}

#[derive(Default)]
struct Fields {
    a: Option<String>,
    c: Option<String>,
    d: Option<[u8; 32]>,
    e: Option<String>,
    g: Option<[u8; 64]>,
    h: Option<u64>,
    k: Option<u64>,
    l: Option<Cid>,
    n: Option<i64>,
    r: Option<String>,
    s: Option<u64>,
}

impl Fields {
    fn build(self) -> Result<Entry, EntryError> {
        let kind = self.k.ok_or_else(|| shape("missing k"))?;
        let device = self.d.ok_or_else(|| shape("missing d"))?;
        let sig = self.g.ok_or_else(|| shape("missing g"))?;
        let hlc = self.h.ok_or_else(|| shape("missing h"))?;
        if hlc == u64::MAX {
            return Err(shape("h out of range"));
        }
        let hlc = Timestamp::from_u64(hlc);
        if kind == 18 {
            if self.c.is_some() || self.e.is_some() || self.n.is_some() || self.r.is_some() || self.s.is_some() {
                return Err(shape("unexpected field in a key rotation"));
            }
            let did = Did::new(self.a.ok_or_else(|| shape("missing a"))?).map_err(|e| shape(e.to_string()))?;
            let body = self.l.ok_or_else(|| shape("missing l"))?;
            return Ok(Entry::Rotate(KeyRotation { did, device, hlc, body, sig }));
        }
        if kind >= 16 {
            if kind > 17 || self.c.is_some() || self.e.is_some() || self.l.is_some() || self.n.is_some() {
                return Err(shape("unexpected field in an authorization"));
            }
            // Only a revocation names a last sequence number.
            if self.r.is_some() || (self.s.is_some() && kind == 16) {
                return Err(shape("unexpected field in an authorization"));
            }
            let did = Did::new(self.a.ok_or_else(|| shape("missing a"))?).map_err(|e| shape(e.to_string()))?;
            return Ok(Entry::Auth(DeviceAuth { did, device, hlc, revoke: kind == 17, upto: self.s, sig }));
        }
        let did = Did::new(self.a.ok_or_else(|| shape("missing a"))?).map_err(|e| shape(e.to_string()))?;
        let kind = match (kind, self.l, self.n, self.e) {
            (0, Some(cid), None, None) => OpKind::Put(cid),
            (1, None, None, None) => OpKind::Delete,
            (2, None, Some(n), None) => OpKind::Add(n),
            (3 | 4, None, None, Some(e)) => {
                if e.len() > MAX_ELEMENT_BYTES {
                    return Err(shape("set element too long"));
                }
                if kind == 3 { OpKind::SetAdd(e) } else { OpKind::SetRemove(e) }
            }
            _ => return Err(shape(format!("fields do not match kind {kind}"))),
        };
        let collection = Nsid::new(self.c.ok_or_else(|| shape("missing c"))?).map_err(|e| shape(e.to_string()))?;
        let rkey = RecordKey::new(self.r.ok_or_else(|| shape("missing r"))?).map_err(|e| shape(e.to_string()))?;
        let seq = self.s.ok_or_else(|| shape("missing s"))?;
        if seq == 0 {
            return Err(shape("sequence numbers start at 1"));
        }
        Ok(Entry::Op(Op { did, device, seq, hlc, kind, collection, rkey, sig }))
    }
}

/// The id of encoded entry bytes.
pub fn entry_id(bytes: &[u8]) -> EntryId {
    *blake3::hash(bytes).as_bytes()
}

/// The 128-bit log position of an entry: its HLC, then the first 8 bytes of its id.
pub fn position(hlc: Timestamp, id: &EntryId) -> u128 {
    let mut p = [0u8; 16];
    p[..8].copy_from_slice(&hlc.to_u64().to_be_bytes());
    p[8..].copy_from_slice(&id[..8]);
    u128::from_be_bytes(p)
}

#[cfg(test)]
mod tests {
    use ues_repo::crypto::KeyType;

    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn did() -> Did {
        Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap()
    }

    fn cid() -> Cid {
        ues_repo::ipld::cid_sha256(0x71, b"record")
    }

    #[test]
    fn every_kind_round_trips_and_verifies() {
        let t = Timestamp { wall_ms: 1_700_000_000_000, logical: 3 };
        for kind in [
            OpKind::Put(cid()),
            OpKind::Delete,
            OpKind::Add(-5),
            OpKind::Add(i64::MIN),
            OpKind::SetAdd("x".into()),
            OpKind::SetRemove("y".into()),
        ] {
            let op = Op::sign(
                &key(1),
                did(),
                7,
                t,
                Nsid::new("app.bsky.feed.post").unwrap(),
                RecordKey::new("3k").unwrap(),
                kind,
            );
            let bytes = Entry::Op(op.clone()).encode();
            // The encoding is canonical DAG-CBOR.
            assert_eq!(dagcbor::encode(&dagcbor::decode(&bytes, &DecodeOptions::default()).unwrap()), bytes);
            assert_eq!(Entry::decode(&bytes).unwrap(), Entry::Op(op.clone()));
            op.verify().unwrap();
        }
        let account = Keypair::generate(KeyType::K256);
        let a = DeviceAuth::sign(&account, Did::new("did:plc:abc").unwrap(), [2; 32], t, true);
        let bytes = Entry::Auth(a.clone()).encode();
        assert_eq!(Entry::decode(&bytes).unwrap(), Entry::Auth(a.clone()));
        a.verify(&account.public()).unwrap();
        assert!(a.verify(&Keypair::generate(KeyType::K256).public()).is_err());
        let r = KeyRotation::sign(&account, Did::new("did:plc:abc").unwrap(), [2; 32], t, cid());
        let bytes = Entry::Rotate(r.clone()).encode();
        assert_eq!(dagcbor::encode(&dagcbor::decode(&bytes, &DecodeOptions::default()).unwrap()), bytes);
        assert_eq!(Entry::decode(&bytes).unwrap(), Entry::Rotate(r.clone()));
        r.verify(&account.public()).unwrap();
        assert!(r.verify(&Keypair::generate(KeyType::K256).public()).is_err());
    }

    #[test]
    fn a_small_put_is_small() {
        let t = Timestamp { wall_ms: 1_700_000_000_000, logical: 0 };
        let op = Op::sign(
            &key(1),
            did(),
            1,
            t,
            Nsid::new("app.bsky.feed.post").unwrap(),
            RecordKey::new("3kabcdefghijk").unwrap(),
            OpKind::Put(cid()),
        );
        let n = Entry::Op(op).encode().len();
        assert!(n < 260, "{n} bytes");
    }

    #[test]
    fn malformed_entries_are_refused() {
        assert!(matches!(Entry::decode(&[0xa0]), Err(EntryError::Shape(_))));
        assert!(matches!(Entry::decode(&[0xff]), Err(EntryError::Cbor(_))));
        assert!(matches!(Entry::decode(&vec![0; 3000]), Err(EntryError::TooLarge(_))));
        let t = Timestamp { wall_ms: 1, logical: 0 };
        let op =
            Op::sign(&key(1), did(), 1, t, Nsid::new("a.b.c").unwrap(), RecordKey::new("k").unwrap(), OpKind::Delete);
        let mut bytes = Entry::Op(op).encode();
        bytes.push(0);
        assert!(matches!(Entry::decode(&bytes), Err(EntryError::Cbor(_))), "trailing bytes");
    }
}
