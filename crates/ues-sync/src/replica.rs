//! A replica: the verified operation log of some accounts, indexed in HLC order, and the
//! repositories materialized from it.
//!
//! The materialized state is a function of the set of entries alone: for every record the
//! operations on it are ordered by (HLC, device, id) — the account is the same for all of
//! them — a delete beats everything before it, the latest put wins, counters sum, sets keep
//! each element's latest add or remove. HLC order extends causal order (a device's clock has
//! observed every entry it applied before it writes), so a write never loses to one it had
//! seen. Equal sets give equal records and the equal MST root on every replica, whatever order
//! the entries came in.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use cid::Cid;
use ed25519_dalek::SigningKey;
use ues_repo::commit::Commit;
use ues_repo::crypto::{Keypair, PublicKey};
use ues_repo::ipld::storage::{self, BLAKE3, Blockstore, MemoryBlockstore};
use ues_repo::ipld::{Ipld, Mst, cid_sha256, dagcbor};
use ues_repo::lexicon::{Lexicons, MergeKind};
use ues_repo::syntax::{Did, Nsid, RecordKey, Tid};

use crate::entry::{DAG_CBOR, DeviceAuth, Entry, EntryError, EntryId, KeyRotation, Op, OpKind, entry_id, position};
use crate::hlc::{ClockError, Hlc, Timestamp};
use crate::rotation::{MAX_ROTATION_BYTES, RotationBody};
use crate::vv::{DeviceId, VersionVector};

/// Largest record block an operation may carry: the repository's own record limit, so that
/// what one side commits the other can take.
pub const MAX_RECORD_BYTES: usize = ues_repo::repo::MAX_RECORD_BYTES;
/// Operations held while their device's authorization has not arrived.
pub const MAX_PENDING: usize = 65_536;
/// Bytes (entries and their record blocks) held while authorizations have not arrived, over
/// all accounts: what arrives before its authorization costs memory until it does.
pub const MAX_PENDING_BYTES: usize = 16 << 20;
/// Of which one account's operations may hold at most this much.
pub const MAX_PENDING_ACCOUNT_BYTES: usize = 8 << 20;
/// And one device's (of one account) at most this much.
pub const MAX_PENDING_DEVICE_BYTES: usize = 4 << 20;
/// Refusals remembered (the oldest are forgotten first; counts are kept for all).
pub const REFUSAL_LOG: usize = 1_024;

/// Resolves an account's signing key (from its DID document, in the node).
pub trait AccountKeys: Send + Sync {
    /// The key that signs the account's commits and device authorizations.
    fn key(&self, did: &Did) -> Option<PublicKey>;

    /// Whether a rotation of the account's key, signed by its current key, may be followed:
    /// the node checks the PLC operation it carries against the DID's rotation keys (the
    /// device that held the outgoing key may not move the account to a key of its own).
    /// Without such a check, every rotation the current key signs is followed.
    fn check_rotation(&self, _did: &Did, _body: &RotationBody) -> Result<(), String> {
        Ok(())
    }
}

impl AccountKeys for HashMap<Did, PublicKey> {
    fn key(&self, did: &Did) -> Option<PublicKey> {
        self.get(did).copied()
    }
}

/// Why an entry was refused. Nothing a refused entry carried is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Not a well-formed entry, or a bad signature.
    #[error(transparent)]
    Entry(#[from] EntryError),
    /// The account's key is unknown, so its authorizations cannot be checked.
    #[error("unknown account {0}")]
    UnknownAccount(Did),
    /// The device is not authorized for the account at the operation's time (never
    /// authorized, not yet, or revoked).
    #[error("device {device} is not authorized for {did} at {at}")]
    Unauthorized {
        /// The account.
        did: Did,
        /// The device (hex).
        device: String,
        /// The operation's timestamp.
        at: Timestamp,
    },
    /// The timestamp is too far in the future.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// The device signed two different operations with the same sequence number.
    #[error("device {device} signed two operations with sequence number {seq}")]
    Equivocation {
        /// The device (hex).
        device: String,
        /// The reused sequence number.
        seq: u64,
    },
    /// A put whose record block was not sent.
    #[error("record block {0} missing")]
    MissingBlock(Cid),
    /// A record block that is not valid AT Protocol data or is too large.
    #[error("record block {0} is not valid: {1}")]
    BadBlock(Cid, String),
    /// Too many operations are waiting for authorizations.
    #[error("too many operations wait for device authorizations")]
    PendingFull,
    /// An authorization or key rotation signed by none of the account's keys this replica
    /// knows: the key may have rotated in an entry not received yet (not held against the
    /// sender; the entry comes again in a later session).
    #[error("signed by a key of {0} not known here (yet)")]
    UnknownSigner(Did),
    /// A rotation whose PLC operation does not publish its key under the DID's rotation keys.
    #[error("key rotation refused: {0}")]
    Rotation(String),
}

/// A refusal kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The refused entry's id.
    pub id: EntryId,
    /// Why.
    pub reason: Refused,
}

/// Errors of a replica's own operations (writes, storage).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicaError {
    /// The store failed.
    #[error(transparent)]
    Storage(#[from] storage::Error),
    /// The clock refused.
    #[error(transparent)]
    Clock(#[from] ClockError),
    /// This replica has no device key, or its device is not authorized for the account.
    #[error("this device may not write for {0}")]
    NotAuthorized(Did),
    /// The change does not fit how the collection's Lexicon says its records merge (a counter
    /// takes adds, a set takes element adds and removes, other records take puts).
    #[error("{collection} merges as {merge:?}; this change does not apply to it")]
    WrongMerge {
        /// The collection.
        collection: String,
        /// How its records merge.
        merge: MergeKind,
    },
    /// A write was refused by the replica's own checks.
    #[error(transparent)]
    Refused(Box<Refused>),
    /// Building the MST failed.
    #[error("mst: {0}")]
    Mst(String),
    /// A stored entry no longer decodes.
    #[error("stored entry is corrupt: {0}")]
    Corrupt(String),
}

impl From<Refused> for ReplicaError {
    fn from(r: Refused) -> Self {
        ReplicaError::Refused(Box::new(r))
    }
}

fn corrupt(cid: Cid, e: EntryError) -> ReplicaError {
    ReplicaError::Corrupt(format!("{cid}: {e}"))
}

/// Operations waiting for their device's authorization, by (account, device), with their size.
type Pending = HashMap<(u32, DeviceId), (Vec<(EntryId, Op, Signed)>, usize)>;

/// A change a device writes.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// Set the record to this value (AT Protocol data).
    Put(Ipld),
    /// Delete the record.
    Delete,
    /// Add to a counter record.
    Add(i64),
    /// Add an element to a set record.
    SetAdd(String),
    /// Remove an element from a set record.
    SetRemove(String),
}

/// An entry as it travels: its bytes and the record block it names (for puts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    /// Canonical entry bytes.
    pub bytes: Vec<u8>,
    /// The record block of a put.
    pub block: Option<(Cid, Vec<u8>)>,
}

/// An entry as received: its id, its decoding (done once), and the bytes with the record block
/// the batch carried for it.
#[derive(Debug, Clone)]
pub struct Received {
    /// BLAKE3 of the bytes.
    pub id: EntryId,
    /// The decoded entry, or why it does not decode.
    pub entry: Result<Entry, EntryError>,
    /// The bytes and record block.
    pub signed: Signed,
}

impl Received {
    /// Decodes an entry as it travels.
    pub fn new(signed: Signed) -> Self {
        Received { id: entry_id(&signed.bytes), entry: Entry::decode(&signed.bytes), signed }
    }

    /// The account the entry belongs to, when it decodes.
    pub fn did(&self) -> Option<&Did> {
        match &self.entry {
            Ok(Entry::Op(op)) => Some(&op.did),
            Ok(Entry::Auth(a)) => Some(&a.did),
            Ok(Entry::Rotate(r)) => Some(&r.did),
            Err(_) => None,
        }
    }
}

impl crate::proto::OpBatch {
    /// Adds an entry and its record block; returns the bytes added.
    pub fn push(&mut self, s: Signed) -> usize {
        let mut n = s.bytes.len();
        self.entries.push(s.bytes);
        if let Some((cid, data)) = s.block {
            n += data.len();
            self.blocks.push(crate::proto::Block { cid: cid.to_bytes(), data });
        }
        n
    }

    /// The entries, each decoded once, with the record block a put names attached.
    pub fn into_received(self) -> Vec<Received> {
        let mut blocks: HashMap<Vec<u8>, Vec<u8>> = self.blocks.into_iter().map(|b| (b.cid, b.data)).collect();
        self.entries
            .into_iter()
            .map(|bytes| {
                let id = entry_id(&bytes);
                let entry = Entry::decode(&bytes);
                let block = match &entry {
                    Ok(Entry::Op(Op { kind: OpKind::Put(cid), .. }))
                    | Ok(Entry::Rotate(KeyRotation { body: cid, .. })) => {
                        blocks.remove(&cid.to_bytes()).map(|d| (*cid, d))
                    }
                    _ => None,
                };
                Received { id, entry, signed: Signed { bytes, block } }
            })
            .collect()
    }
}

/// What applying a batch did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// New entries stored.
    pub applied: usize,
    /// Entries already held (replays of the same bytes are harmless).
    pub duplicates: usize,
    /// Operations waiting for their device's authorization.
    pub pending: usize,
    /// Operations beaten by a delete already held: collected on arrival, not stored.
    pub collected: usize,
    /// Refused entries, with reasons.
    pub refused: Vec<Refusal>,
    /// Ids of the new entries.
    pub new_ids: Vec<EntryId>,
}

/// Per-device knowledge: sequence numbers seen, as a contiguous prefix plus the ones above it.
#[derive(Debug, Clone, Default)]
struct Seen {
    contiguous: u64,
    above: BTreeSet<u64>,
}

impl Seen {
    fn add(&mut self, seq: u64) {
        if seq <= self.contiguous {
            return;
        }
        self.above.insert(seq);
        while self.above.remove(&(self.contiguous + 1)) {
            self.contiguous += 1;
        }
    }
}

#[derive(Debug, Clone, Default)]
struct DeviceState {
    authorized: Option<Timestamp>,
    revoked: Option<Timestamp>,
    /// The last sequence number a revocation accepts (the lowest, over revocations).
    upto: Option<u64>,
}

impl DeviceState {
    fn valid_at(&self, t: Timestamp) -> bool {
        self.authorized.is_some_and(|a| t > a) && self.revoked.is_none_or(|r| t < r)
    }

    /// Whether the device's operation with this time and sequence number is valid: by its
    /// time, and not past what a revocation accepts, whatever its time.
    fn valid_op(&self, t: Timestamp, seq: u64) -> bool {
        self.valid_at(t) && self.upto.is_none_or(|u| seq <= u)
    }
}

#[derive(Debug, Clone)]
struct TargetOp {
    order: (u64, DeviceId, EntryId),
    /// The writing device's sequence number for it.
    seq: u64,
    kind: OpKind,
}

#[derive(Default)]
struct Account {
    devices: HashMap<DeviceId, DeviceState>,
    seen: HashMap<DeviceId, Seen>,
    dots: HashMap<(DeviceId, u64), EntryId>,
    targets: HashMap<String, Vec<TargetOp>>,
    records: BTreeMap<String, Cid>,
    max_hlc: Timestamp,
    /// The MST root over `records` as of the last [`Replica::root`], before the `stale` paths
    /// changed (`None`: to be built in full).
    root: Option<Cid>,
    /// Paths whose record changed since `root` was computed.
    stale: BTreeSet<String>,
    /// Paths whose record changed since the node's bridge last took them
    /// ([`Replica::take_changed`]).
    changed: BTreeSet<String>,
    /// Tombstones, collected once every device has acknowledged them (`tombstones.rs`).
    tombs: tombstones::Tombstones,
}

/// Where an entry sits in the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LogKey {
    /// Its 128-bit position (HLC, then id prefix).
    pub pos: u128,
    /// Its id.
    pub id: EntryId,
}

/// What the log keeps per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogVal {
    /// The account's index in this replica.
    pub did: u32,
    /// An authorization (they travel first).
    pub auth: bool,
}

/// One replica's log and materialized repositories.
pub struct Replica {
    blocks: Arc<dyn Blockstore>,
    keys: Arc<dyn AccountKeys>,
    clock: Hlc,
    device: Option<SigningKey>,
    log: BTreeMap<LogKey, LogVal>,
    dids: Vec<Did>,
    did_index: HashMap<Did, u32>,
    accounts: Vec<Account>,
    pending: Pending,
    pending_len: usize,
    pending_bytes: usize,
    pending_accounts: HashMap<u32, usize>,
    pending_ids: HashSet<EntryId>,
    refusals: VecDeque<Refusal>,
    refusal_counts: BTreeMap<&'static str, u64>,
    lexicons: Option<Arc<Lexicons>>,
    block_refs: HashMap<Cid, u32>,
    collected: u64,
    collected_tombstones: u64,
    /// Per account: its current key, once a rotation moved it (else `keys` says).
    rotated: HashMap<u32, PublicKey>,
    /// Per account: keys rotated away from, each with the time of its rotation (what it
    /// signed before then still verifies).
    superseded: HashMap<u32, Vec<(PublicKey, Timestamp)>>,
    /// Rotations followed and not yet taken by the node.
    rotations: Vec<Rotated>,
}

/// A rotation of an account's key this replica followed.
pub struct Rotated {
    /// The account.
    pub did: Did,
    /// What the rotation says.
    pub body: RotationBody,
    /// The new key, when the rotation sealed it to this replica's device.
    pub key: Option<Keypair>,
}

impl std::fmt::Debug for Rotated {
    // Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotated")
            .field("did", &self.did)
            .field("body", &self.body)
            .field("opened", &self.key.is_some())
            .finish()
    }
}

fn refusal_name(r: &Refused) -> &'static str {
    match r {
        Refused::Entry(EntryError::BadSignature) => "bad_signature",
        Refused::Entry(_) => "malformed",
        Refused::UnknownAccount(_) => "unknown_account",
        Refused::Unauthorized { .. } => "unauthorized",
        Refused::Clock(_) => "clock",
        Refused::Equivocation { .. } => "equivocation",
        Refused::MissingBlock(_) => "missing_block",
        Refused::BadBlock(..) => "bad_block",
        Refused::PendingFull => "pending_full",
        Refused::UnknownSigner(_) => "unknown_signer",
        Refused::Rotation(_) => "rotation",
    }
}

fn entry_cid(bytes: &[u8]) -> Cid {
    storage::cid_for(DAG_CBOR, BLAKE3, bytes).expect("BLAKE3 is supported")
}

impl Replica {
    /// A replica over `blocks` (entries are stored there as BLAKE3 blocks, record blocks as
    /// SHA-256 ones); the log is rebuilt from the stored entries. `device` is this replica's
    /// signing key when it writes.
    pub fn open(
        blocks: Arc<dyn Blockstore>,
        keys: Arc<dyn AccountKeys>,
        clock: Hlc,
        device: Option<SigningKey>,
    ) -> Result<Self, ReplicaError> {
        let mut r = Replica {
            blocks,
            keys,
            clock,
            device,
            log: BTreeMap::new(),
            dids: Vec::new(),
            did_index: HashMap::new(),
            accounts: Vec::new(),
            pending: HashMap::new(),
            pending_len: 0,
            pending_bytes: 0,
            pending_accounts: HashMap::new(),
            pending_ids: HashSet::new(),
            refusals: VecDeque::new(),
            refusal_counts: BTreeMap::new(),
            lexicons: None,
            block_refs: HashMap::new(),
            collected: 0,
            collected_tombstones: 0,
            rotated: HashMap::new(),
            superseded: HashMap::new(),
            rotations: Vec::new(),
        };
        let mut auths = Vec::new();
        let mut ops = Vec::new();
        let mut rotations = Vec::new();
        for item in r.blocks.iter() {
            let (cid, bytes) = item?;
            if cid.codec() != DAG_CBOR || cid.hash().code() != BLAKE3 {
                continue;
            }
            let entry = Entry::decode(&bytes).map_err(|e| corrupt(cid, e))?;
            let id = entry_id(&bytes);
            match entry {
                Entry::Auth(a) => auths.push((id, a)),
                Entry::Op(op) => ops.push((id, op)),
                Entry::Rotate(rot) => rotations.push((id, rot)),
            }
        }
        // Stored entries were verified when they arrived; rotations in the order they chain.
        rotations.sort_by_key(|(id, rot)| position(rot.hlc, id));
        for (id, rot) in rotations {
            let unreadable = |e: &dyn std::fmt::Display| ReplicaError::Corrupt(format!("{}: {e}", rot.body));
            let data = r.blocks.get(&rot.body)?.ok_or_else(|| unreadable(&"rotation body missing"))?;
            let body = RotationBody::decode(&data).map_err(|e| unreadable(&e))?;
            let forward = r.account_key(&rot.did).is_none_or(|k| k == body.prev);
            r.index_rotation(id, &rot, &body, forward);
            if forward {
                // The node installs what it has not yet (it may have stopped in between).
                let key = r.device.as_ref().and_then(|d| body.open(d));
                r.rotations.push(Rotated { did: rot.did, body, key });
            }
        }
        for (id, a) in auths {
            r.index_auth(id, &a);
        }
        ops.sort_by_key(|(id, op)| position(op.hlc, id));
        for (id, op) in ops {
            let _ = r.clock.observe(op.hlc);
            if !r.index_op(id, &op) {
                // Stored before the delete that beats it arrived, and not yet removed.
                r.blocks.delete(&entry_cid_from_id(&id))?;
            }
        }
        Ok(r)
    }

    /// An in-memory replica (tests, benchmarks).
    pub fn in_memory(keys: Arc<dyn AccountKeys>, clock: Hlc, device: Option<SigningKey>) -> Self {
        Self::open(Arc::new(MemoryBlockstore::new()), keys, clock, device).expect("an empty store opens")
    }

    /// Lexicons that say how collections merge: [`Replica::write`] then refuses changes that
    /// do not fit (applying remote entries never depends on them, so replicas with different
    /// Lexicons still converge).
    pub fn set_lexicons(&mut self, lexicons: Arc<Lexicons>) {
        self.lexicons = Some(lexicons);
    }

    /// This replica's device id, when it writes.
    pub fn device_id(&self) -> Option<DeviceId> {
        self.device.as_ref().map(|k| k.verifying_key().to_bytes())
    }

    /// The clock.
    pub fn clock(&self) -> &Hlc {
        &self.clock
    }

    /// The store entries and records live in.
    pub fn blocks(&self) -> &Arc<dyn Blockstore> {
        &self.blocks
    }

    fn did_idx(&mut self, did: &Did) -> u32 {
        if let Some(i) = self.did_index.get(did) {
            return *i;
        }
        let i = self.dids.len() as u32;
        self.dids.push(did.clone());
        self.did_index.insert(did.clone(), i);
        self.accounts.push(Account::default());
        i
    }

    /// The index of `did` in this replica, if it holds anything of it.
    pub(crate) fn did_lookup(&self, did: &Did) -> Option<u32> {
        self.did_index.get(did).copied()
    }

    /// The accounts this replica holds entries of.
    pub fn dids(&self) -> &[Did] {
        &self.dids
    }

    /// Entries in the log, over all accounts.
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether the log is empty.
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    /// The log in HLC order, with each entry's account index.
    pub(crate) fn log(&self) -> &BTreeMap<LogKey, LogVal> {
        &self.log
    }

    /// Whether the entry is held.
    pub fn contains(&self, id: &EntryId, hlc: Timestamp) -> bool {
        self.log.contains_key(&LogKey { pos: position(hlc, id), id: *id })
    }

    /// An entry as it travels (its bytes and, for a put, the record block).
    pub fn signed(&self, key: &LogKey) -> Result<Option<Signed>, ReplicaError> {
        let Some(bytes) = self.blocks.get(&entry_cid_from_id(&key.id))? else { return Ok(None) };
        let block = match Entry::decode(&bytes) {
            Ok(Entry::Op(Op { kind: OpKind::Put(cid), .. })) | Ok(Entry::Rotate(KeyRotation { body: cid, .. })) => {
                self.blocks.get(&cid)?.map(|data| (cid, data))
            }
            Ok(_) => None,
            Err(e) => return Err(corrupt(entry_cid_from_id(&key.id), e)),
        };
        Ok(Some(Signed { bytes, block }))
    }

    /// Authorizes (or revokes) a device for an account, signed with the account's key, and
    /// applies it here.
    pub fn authorize(
        &mut self,
        account: &Keypair,
        did: &Did,
        device: DeviceId,
        revoke: bool,
    ) -> Result<Signed, ReplicaError> {
        let now = self.clock.now()?;
        let auth = if revoke {
            // The device's operations seen here so far are the last it may write.
            DeviceAuth::sign_revocation(account, did.clone(), device, now, self.version_vector(did).get(&device))
        } else {
            DeviceAuth::sign(account, did.clone(), device, now, false)
        };
        let signed = Signed { bytes: Entry::Auth(auth).encode(), block: None };
        let report = self.apply(vec![signed.clone()]);
        if let Some(r) = report.refused.into_iter().next() {
            return Err(r.reason.into());
        }
        Ok(signed)
    }

    /// Whether [`Replica::write`] would take this change for any account: it fits how the
    /// collection merges, and a put's record is one the replica accepts (at most [`MAX_RECORD_BYTES`] of valid
    /// AT Protocol data). Checking first lets a caller refuse a change before anything else
    /// commits it.
    pub fn check_change(&self, collection: &Nsid, change: &Change) -> Result<(), ReplicaError> {
        if let Some(lex) = &self.lexicons {
            let merge = lex.merge_kind(collection.as_str());
            let fits = matches!(
                (change, merge),
                (Change::Delete, _)
                    | (Change::Put(_), MergeKind::Lww)
                    | (Change::Add(_), MergeKind::Counter)
                    | (Change::SetAdd(_) | Change::SetRemove(_), MergeKind::Set)
            );
            if !fits {
                return Err(ReplicaError::WrongMerge { collection: collection.to_string(), merge });
            }
        }
        if let Change::Put(value) = change {
            let bytes = dagcbor::encode(value);
            check_record_block(&cid_sha256(DAG_CBOR, &bytes), &bytes)?;
        }
        Ok(())
    }

    /// Whether [`Replica::write`] would take this change for `did` now: as
    /// [`Replica::check_change`], and this replica's device may write for the account.
    pub fn check_write(&self, did: &Did, collection: &Nsid, change: &Change) -> Result<(), ReplicaError> {
        let Some(dev) = self.device_id() else { return Err(ReplicaError::NotAuthorized(did.clone())) };
        if !self.is_authorized(did, &dev) {
            return Err(ReplicaError::NotAuthorized(did.clone()));
        }
        self.check_change(collection, change)
    }

    /// Writes a change as this replica's device, applies it, and returns it for sending.
    pub fn write(
        &mut self,
        did: &Did,
        collection: Nsid,
        rkey: RecordKey,
        change: Change,
    ) -> Result<Signed, ReplicaError> {
        let key = self.device.clone().ok_or_else(|| ReplicaError::NotAuthorized(did.clone()))?;
        self.check_change(&collection, &change)?;
        let dev = key.verifying_key().to_bytes();
        let idx = self.did_lookup(did).ok_or_else(|| ReplicaError::NotAuthorized(did.clone()))?;
        let hlc = self.clock.now()?;
        let acct = &self.accounts[idx as usize];
        let seq = acct.seen.get(&dev).map_or(0, |s| s.contiguous.max(s.above.last().copied().unwrap_or(0))) + 1;
        if !acct.devices.get(&dev).is_some_and(|d| d.valid_op(hlc, seq)) {
            return Err(ReplicaError::NotAuthorized(did.clone()));
        }
        let (kind, block) = match change {
            Change::Put(value) => {
                let bytes = dagcbor::encode(&value);
                let cid = cid_sha256(DAG_CBOR, &bytes);
                (OpKind::Put(cid), Some((cid, bytes)))
            }
            Change::Delete => (OpKind::Delete, None),
            Change::Add(n) => (OpKind::Add(n), None),
            Change::SetAdd(e) => (OpKind::SetAdd(e), None),
            Change::SetRemove(e) => (OpKind::SetRemove(e), None),
        };
        let op = Op::sign(&key, did.clone(), seq, hlc, collection, rkey, kind);
        let signed = Signed { bytes: Entry::Op(op).encode(), block };
        let report = self.apply(vec![signed.clone()]);
        if let Some(r) = report.refused.into_iter().next() {
            return Err(r.reason.into());
        }
        Ok(signed)
    }

    /// Verifies and applies entries (authorizations first). Idempotent and commutative:
    /// applying the same entries again, or in any order, gives the same state.
    pub fn apply(&mut self, batch: Vec<Signed>) -> ApplyReport {
        self.apply_received(batch.into_iter().map(Received::new).collect())
    }

    /// As [`Replica::apply`], for entries already decoded ([`crate::proto::OpBatch::into_received`]).
    pub fn apply_received(&mut self, batch: Vec<Received>) -> ApplyReport {
        let mut report = ApplyReport::default();
        let mut decoded = Vec::with_capacity(batch.len());
        for r in batch {
            match r.entry {
                Ok(e) => decoded.push((r.id, e, r.signed)),
                Err(e) => self.refuse(&mut report, r.id, e.into()),
            }
        }
        // Key rotations first, then authorizations (which the new key may sign), so operations
        // of a device authorized in the same batch pass.
        decoded.sort_by_key(|(_, e, _)| match e {
            Entry::Rotate(_) => 0,
            Entry::Auth(_) => 1,
            Entry::Op(_) => 2,
        });
        let sigs = verify_ops_parallel(&decoded);
        for ((id, entry, signed), sig_ok) in decoded.into_iter().zip(sigs) {
            if self.contains(&id, entry.hlc()) {
                report.duplicates += 1;
                continue;
            }
            let res = match entry {
                Entry::Auth(a) => self.accept_auth(id, a, &signed, &mut report),
                Entry::Rotate(r) => self.accept_rotation(id, r, &signed, &mut report),
                Entry::Op(op) => self.accept_op(id, op, signed, sig_ok, &mut report),
            };
            if let Err(reason) = res {
                self.refuse(&mut report, id, reason);
            }
        }
        // The batch's operations were stored unsynced: one sync makes them all durable.
        if report.applied > 0
            && let Err(e) = self.blocks.sync()
        {
            tracing::error!("syncing the replica's store failed: {e}");
        }
        report
    }

    /// Stores and indexes entries this node has already verified (its own exports, generated
    /// benchmark logs) without checking signatures again. Malformed entries are skipped.
    pub fn apply_verified(&mut self, entries: impl IntoIterator<Item = Signed>) -> usize {
        let mut blocks = Vec::new();
        let mut n = 0;
        for s in entries {
            let id = entry_id(&s.bytes);
            let Ok(entry) = Entry::decode(&s.bytes) else { continue };
            if self.contains(&id, entry.hlc()) {
                continue;
            }
            let _ = self.clock.observe(entry.hlc());
            let stored = match &entry {
                Entry::Auth(a) => {
                    self.index_auth(id, a);
                    true
                }
                Entry::Rotate(r) => {
                    let Some(body) = s.block.as_ref().and_then(|(_, data)| RotationBody::decode(data).ok()) else {
                        continue;
                    };
                    let forward = self.account_key(&r.did).is_none_or(|k| k == body.prev);
                    self.index_rotation(id, r, &body, forward);
                    true
                }
                Entry::Op(op) => self.index_op(id, op),
            };
            if !stored {
                continue;
            }
            blocks.push((entry_cid(&s.bytes), s.bytes));
            if let Some(b) = s.block {
                blocks.push(b);
            }
            n += 1;
            if blocks.len() >= 4096 {
                let _ = self.blocks.put_many(&std::mem::take(&mut blocks));
            }
        }
        let _ = self.blocks.put_many(&blocks);
        n
    }

    fn refuse(&mut self, report: &mut ApplyReport, id: EntryId, reason: Refused) {
        tracing::debug!(id = %hex_id(&id), %reason, "sync entry refused");
        *self.refusal_counts.entry(refusal_name(&reason)).or_default() += 1;
        if self.refusals.len() == REFUSAL_LOG {
            self.refusals.pop_front();
        }
        self.refusals.push_back(Refusal { id, reason: reason.clone() });
        report.refused.push(Refusal { id, reason });
    }

    /// The most recent refusals.
    pub fn refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refusals.iter()
    }

    /// Refusals counted by reason since the replica opened.
    pub fn refusal_counts(&self) -> &BTreeMap<&'static str, u64> {
        &self.refusal_counts
    }

    fn accept_auth(
        &mut self,
        id: EntryId,
        a: DeviceAuth,
        signed: &Signed,
        report: &mut ApplyReport,
    ) -> Result<(), Refused> {
        let key = self.account_key(&a.did).ok_or_else(|| Refused::UnknownAccount(a.did.clone()))?;
        if a.verify(&key).is_err() {
            // Signed before a rotation by the key it replaced, or by a key this replica learns
            // of only when the rotation arrives.
            let old = self.did_lookup(&a.did).and_then(|i| self.superseded.get(&i));
            if !old.is_some_and(|old| old.iter().any(|(k, until)| a.hlc < *until && a.verify(k).is_ok())) {
                return Err(Refused::UnknownSigner(a.did.clone()));
            }
        }
        self.clock.check(a.hlc)?;
        self.blocks
            .put(&entry_cid(&signed.bytes), &signed.bytes)
            .map_err(|e| Refused::BadBlock(entry_cid(&signed.bytes), e.to_string()))?;
        let _ = self.clock.observe(a.hlc);
        let idx = self.index_auth(id, &a);
        report.applied += 1;
        report.new_ids.push(id);
        // A revocation purges what the device wrote from then on; an authorization releases
        // the operations that waited for it.
        if a.revoke {
            self.purge_revoked(idx, a.device);
        } else if let Some((waiting, bytes)) = self.pending.remove(&(idx, a.device)) {
            self.pending_len -= waiting.len();
            self.pending_bytes -= bytes;
            if let Some(n) = self.pending_accounts.get_mut(&idx) {
                *n -= bytes;
                if *n == 0 {
                    self.pending_accounts.remove(&idx);
                }
            }
            for (wid, op, s) in waiting {
                self.pending_ids.remove(&wid);
                if self.contains(&wid, op.hlc) {
                    continue;
                }
                if let Err(reason) = self.accept_op(wid, op, s, None, report) {
                    self.refuse(report, wid, reason);
                }
            }
        }
        Ok(())
    }

    fn index_auth(&mut self, id: EntryId, a: &DeviceAuth) -> u32 {
        let idx = self.did_idx(&a.did);
        self.log.insert(LogKey { pos: position(a.hlc, &id), id }, LogVal { did: idx, auth: true });
        let acct = &mut self.accounts[idx as usize];
        let d = acct.devices.entry(a.device).or_default();
        let slot = if a.revoke { &mut d.revoked } else { &mut d.authorized };
        *slot = Some(slot.map_or(a.hlc, |t| t.min(a.hlc)));
        if let Some(u) = a.upto {
            d.upto = Some(d.upto.map_or(u, |old| old.min(u)));
        }
        idx
    }

    /// The account's current key: the latest rotation's, else what the node says.
    pub fn account_key(&self, did: &Did) -> Option<PublicKey> {
        self.did_lookup(did).and_then(|i| self.rotated.get(&i).copied()).or_else(|| self.keys.key(did))
    }

    fn accept_rotation(
        &mut self,
        id: EntryId,
        r: KeyRotation,
        signed: &Signed,
        report: &mut ApplyReport,
    ) -> Result<(), Refused> {
        let current = self.account_key(&r.did).ok_or_else(|| Refused::UnknownAccount(r.did.clone()))?;
        let Some((cid, data)) = signed.block.as_ref().filter(|(c, _)| *c == r.body) else {
            return Err(Refused::MissingBlock(r.body));
        };
        if data.len() > MAX_ROTATION_BYTES {
            return Err(Refused::BadBlock(*cid, format!("larger than {MAX_ROTATION_BYTES} bytes")));
        }
        storage::verify_block(cid, data).map_err(|e| Refused::BadBlock(*cid, e.to_string()))?;
        let body = RotationBody::decode(data).map_err(|e| Refused::BadBlock(*cid, e.to_string()))?;
        self.clock.check(r.hlc)?;
        let forward = body.prev == current;
        if forward {
            r.verify(&current)?;
            self.keys.check_rotation(&r.did, &body).map_err(Refused::Rotation)?;
        } else {
            // An earlier rotation, already followed: history, if it leads to a key known here.
            let known = body.key == current
                || self
                    .did_lookup(&r.did)
                    .and_then(|i| self.superseded.get(&i))
                    .is_some_and(|old| old.iter().any(|(k, _)| *k == body.key));
            if !known {
                return Err(Refused::UnknownSigner(r.did.clone()));
            }
            r.verify(&body.prev)?;
        }
        self.blocks
            .put_many(&[(entry_cid(&signed.bytes), signed.bytes.clone()), (*cid, data.clone())])
            .map_err(|e| Refused::BadBlock(entry_cid(&signed.bytes), e.to_string()))?;
        let _ = self.clock.observe(r.hlc);
        self.index_rotation(id, &r, &body, forward);
        report.applied += 1;
        report.new_ids.push(id);
        if forward {
            tracing::info!(did = %r.did, key = %body.key.did_key(), "the account's signing key rotated");
            let key = self.device.as_ref().and_then(|d| body.open(d));
            self.rotations.push(Rotated { did: r.did, body, key });
        }
        Ok(())
    }

    fn index_rotation(&mut self, id: EntryId, r: &KeyRotation, body: &RotationBody, forward: bool) {
        let idx = self.did_idx(&r.did);
        self.log.insert(LogKey { pos: position(r.hlc, &id), id }, LogVal { did: idx, auth: true });
        let old = self.superseded.entry(idx).or_default();
        if !old.iter().any(|(k, _)| *k == body.prev) {
            old.push((body.prev, r.hlc));
        }
        if forward {
            self.rotated.insert(idx, body.key);
        }
    }

    /// Rotates the account's signing key from `outgoing` to `new` (after a revocation): the
    /// new secret sealed to every device that may write now, the rotation signed by the
    /// outgoing key, and every standing authorization and revocation signed again by the new
    /// key at its own time (so a device that joins later learns them from the new key alone).
    /// Applies them here; returns them to send.
    pub fn rotate(
        &mut self,
        outgoing: &Keypair,
        did: &Did,
        new: &Keypair,
        plc: Option<String>,
    ) -> Result<Vec<Signed>, ReplicaError> {
        let idx = self.did_lookup(did).ok_or_else(|| ReplicaError::NotAuthorized(did.clone()))?;
        let me = self.device_id();
        let now = self.next_time();
        let devices: Vec<(DeviceId, DeviceState)> =
            self.accounts[idx as usize].devices.iter().map(|(d, s)| (*d, s.clone())).collect();
        // This device too: the rotation it stores is what it recovers the key from, should it
        // stop before the key is stored with the account.
        let staying = devices.iter().filter(|(_, s)| s.valid_at(now)).map(|(d, _)| *d);
        let body = RotationBody::new(&outgoing.public(), new, plc, staying)
            .map_err(|e| ReplicaError::from(Refused::Rotation(e.to_string())))?;
        let (cid, data) = body.encode();
        let rotation = KeyRotation::sign(outgoing, did.clone(), me.unwrap_or([0; 32]), self.clock.now()?, cid);
        let mut out = vec![Signed { bytes: Entry::Rotate(rotation).encode(), block: Some((cid, data)) }];
        for (d, s) in devices {
            if let Some(t) = s.authorized {
                out.push(Signed {
                    bytes: Entry::Auth(DeviceAuth::sign(new, did.clone(), d, t, false)).encode(),
                    block: None,
                });
            }
            if let Some(t) = s.revoked {
                let a = match s.upto {
                    Some(u) => DeviceAuth::sign_revocation(new, did.clone(), d, t, u),
                    None => DeviceAuth::sign(new, did.clone(), d, t, true),
                };
                out.push(Signed { bytes: Entry::Auth(a).encode(), block: None });
            }
        }
        let report = self.apply(out.clone());
        if let Some(r) = report.refused.into_iter().next() {
            return Err(r.reason.into());
        }
        Ok(out)
    }

    /// The rotations followed since the last call.
    pub fn take_rotations(&mut self) -> Vec<Rotated> {
        std::mem::take(&mut self.rotations)
    }

    fn accept_op(
        &mut self,
        id: EntryId,
        op: Op,
        signed: Signed,
        sig_ok: Option<bool>,
        report: &mut ApplyReport,
    ) -> Result<(), Refused> {
        match sig_ok {
            Some(true) => {}
            Some(false) => return Err(EntryError::BadSignature.into()),
            None => op.verify()?,
        }
        // Too far ahead: refused, and the clock is left alone.
        self.clock.check(op.hlc)?;
        // Nothing is kept, not even an account slot, for an account this replica has no key of.
        if self.keys.key(&op.did).is_none() {
            return Err(Refused::UnknownAccount(op.did.clone()));
        }
        // The record block is checked before the operation is held anywhere, even while waiting.
        let block = match (&op.kind, &signed.block) {
            (OpKind::Put(cid), Some((c, data))) if c == cid => {
                check_record_block(cid, data)?;
                Some(true)
            }
            (OpKind::Put(cid), _) if !self.blocks.has(cid).unwrap_or(false) => Some(false),
            _ => None,
        };
        let idx = self.did_idx(&op.did);
        let acct = &self.accounts[idx as usize];
        let Some(dev) = acct.devices.get(&op.device) else {
            // Its authorization may still be on its way: hold it, boundedly.
            if let (OpKind::Put(cid), Some(false)) = (&op.kind, block) {
                return Err(Refused::MissingBlock(*cid));
            }
            return self.park(idx, id, op, signed, report);
        };
        if !dev.valid_op(op.hlc, op.seq) {
            return Err(Refused::Unauthorized { did: op.did.clone(), device: hex::encode(op.device), at: op.hlc });
        }
        if let Some(other) = acct.dots.get(&(op.device, op.seq))
            && *other != id
        {
            return Err(Refused::Equivocation { device: hex::encode(op.device), seq: op.seq });
        }
        if self.beaten(idx, &op.path(), (op.hlc.to_u64(), op.device, id)) {
            // A delete already held beats it: seen, and collected at once.
            let _ = self.clock.observe(op.hlc);
            self.index_op(id, &op);
            report.collected += 1;
            return Ok(());
        }
        if self.accounts[idx as usize].dots.get(&(op.device, op.seq)) == Some(&id) {
            // Held once and collected since (a tombstone every device acknowledged, or what a
            // delete beat): a replica that has not collected it yet sent it again.
            report.duplicates += 1;
            return Ok(());
        }
        tombstones::check_ack_op(&op, signed.block.as_ref())?;
        if let OpKind::Put(cid) = &op.kind {
            match (block, &signed.block) {
                (Some(true), Some((_, data))) => {
                    // Synced once for the whole batch (`apply_received`).
                    self.blocks
                        .put_many_unsynced(&[(*cid, data.clone())])
                        .map_err(|e| Refused::BadBlock(*cid, e.to_string()))?;
                }
                (Some(false), _) => return Err(Refused::MissingBlock(*cid)),
                _ => {}
            }
        }
        let ecid = entry_cid(&signed.bytes);
        self.blocks
            .put_many_unsynced(&[(ecid, signed.bytes.clone())])
            .map_err(|e| Refused::BadBlock(ecid, e.to_string()))?;
        let _ = self.clock.observe(op.hlc);
        self.index_op(id, &op);
        report.applied += 1;
        report.new_ids.push(id);
        Ok(())
    }

    /// Holds an operation (already checked: signature, clock, record block) until its device's
    /// authorization arrives, within the count and byte bounds overall, per account and per
    /// device.
    fn park(&mut self, idx: u32, id: EntryId, op: Op, signed: Signed, report: &mut ApplyReport) -> Result<(), Refused> {
        if self.pending_ids.contains(&id) {
            report.duplicates += 1;
            return Ok(());
        }
        let size = signed.bytes.len() + signed.block.as_ref().map_or(0, |(_, d)| d.len());
        let key = (idx, op.device);
        let device_bytes = self.pending.get(&key).map_or(0, |(_, b)| *b);
        let account_bytes = self.pending_accounts.get(&idx).copied().unwrap_or(0);
        if self.pending_len >= MAX_PENDING
            || self.pending_bytes + size > MAX_PENDING_BYTES
            || account_bytes + size > MAX_PENDING_ACCOUNT_BYTES
            || device_bytes + size > MAX_PENDING_DEVICE_BYTES
        {
            return Err(Refused::PendingFull);
        }
        self.pending_ids.insert(id);
        let slot = self.pending.entry(key).or_default();
        slot.0.push((id, op, signed));
        slot.1 += size;
        self.pending_len += 1;
        self.pending_bytes += size;
        *self.pending_accounts.entry(idx).or_default() += size;
        report.pending += 1;
        Ok(())
    }

    /// Indexes an accepted operation; returns false when a delete already held beats it (it
    /// is collected on arrival: counted as seen, not stored).
    fn index_op(&mut self, id: EntryId, op: &Op) -> bool {
        let idx = self.did_idx(&op.did);
        let path = op.path();
        let acct = &mut self.accounts[idx as usize];
        acct.dots.insert((op.device, op.seq), id);
        acct.seen.entry(op.device).or_default().add(op.seq);
        acct.max_hlc = acct.max_hlc.max(op.hlc);
        if self.beaten(idx, &path, (op.hlc.to_u64(), op.device, id)) {
            self.collected += 1;
            return false;
        }
        self.log.insert(LogKey { pos: position(op.hlc, &id), id }, LogVal { did: idx, auth: false });
        if let OpKind::Put(c) = &op.kind {
            *self.block_refs.entry(*c).or_default() += 1;
        }
        let acct = &mut self.accounts[idx as usize];
        let ops = acct.targets.entry(path.clone()).or_default();
        ops.push(TargetOp { order: (op.hlc.to_u64(), op.device, id), seq: op.seq, kind: op.kind.clone() });
        self.recompute(idx, &path);
        true
    }

    /// Removes what a revoked device wrote at or after its revocation, everywhere.
    fn purge_revoked(&mut self, idx: u32, device: DeviceId) {
        let acct = &mut self.accounts[idx as usize];
        let Some(state) = acct.devices.get(&device).cloned() else { return };
        // Operations past the sequence number the revocation accepts go whatever their time.
        let past: HashSet<EntryId> = match state.upto {
            Some(u) => acct.dots.iter().filter(|((d, seq), _)| *d == device && *seq > u).map(|(_, id)| *id).collect(),
            None => HashSet::new(),
        };
        let mut touched = Vec::new();
        let mut removed = Vec::new();
        for (path, ops) in acct.targets.iter_mut() {
            let before = ops.len();
            ops.retain(|o| {
                let keep = o.order.1 != device
                    || (state.valid_at(Timestamp::from_u64(o.order.0)) && !past.contains(&o.order.2));
                if !keep {
                    removed.push((o.order.0, o.order.2, o.kind.clone()));
                }
                keep
            });
            if ops.len() != before {
                touched.push(path.clone());
            }
        }
        acct.dots.retain(|_, id| !removed.iter().any(|(_, r, _)| r == id));
        for (hlc, id, kind) in &removed {
            self.log.remove(&LogKey { pos: position(Timestamp::from_u64(*hlc), id), id: *id });
            let _ = self.blocks.delete(&entry_cid_from_id(id));
            if let OpKind::Put(c) = kind {
                self.release(*c);
            }
        }
        for path in touched {
            self.recompute(idx, &path);
        }
    }

    fn recompute(&mut self, idx: u32, path: &str) {
        let acct = &mut self.accounts[idx as usize];
        let mut dead = Vec::new();
        let ack = tombstones::is_ack_path(path);
        let value = match acct.targets.get_mut(path) {
            // A device's acknowledgements are no record: only its latest counts.
            Some(ops) if ack => {
                ops.sort_by_key(|a| a.order);
                dead = ops.drain(..ops.len().saturating_sub(1)).collect();
                None
            }
            Some(ops) => {
                ops.sort_by_key(|a| a.order);
                // What the latest delete beats can never count again: collect it.
                if let Some(d) = ops.iter().rposition(|o| o.kind == OpKind::Delete) {
                    dead = ops.drain(..d).collect();
                }
                match ops.first() {
                    Some(d) if d.kind == OpKind::Delete => acct.tombs.held(path, (d.order.1, d.seq)),
                    _ => acct.tombs.not_held(path),
                }
                materialize(path, ops)
            }
            None => None,
        };
        if ack {
            self.read_ack(idx, path);
        }
        let acct = &mut self.accounts[idx as usize];
        let old = acct.records.get(path).copied();
        let new = match value {
            Some(Value::Cid(cid)) => Some(cid),
            Some(Value::Block(bytes)) => {
                let cid = cid_sha256(DAG_CBOR, &bytes);
                let _ = self.blocks.put(&cid, &bytes);
                Some(cid)
            }
            None => None,
        };
        match new {
            Some(cid) => acct.records.insert(path.to_string(), cid),
            None => acct.records.remove(path),
        };
        if old != new {
            acct.stale.insert(path.to_string());
            acct.changed.insert(path.to_string());
            if let Some(c) = new {
                *self.block_refs.entry(c).or_default() += 1;
            }
            if let Some(c) = old {
                self.release(c);
            }
        }
        for o in dead {
            self.log.remove(&LogKey { pos: position(Timestamp::from_u64(o.order.0), &o.order.2), id: o.order.2 });
            let _ = self.blocks.delete(&entry_cid_from_id(&o.order.2));
            if let OpKind::Put(c) = o.kind {
                self.release(c);
            }
            self.collected += 1;
        }
    }

    /// Drops one reference to a record block; the block goes with the last.
    fn release(&mut self, cid: Cid) {
        if let Some(n) = self.block_refs.get_mut(&cid) {
            *n -= 1;
            if *n == 0 {
                self.block_refs.remove(&cid);
                let _ = self.blocks.delete(&cid);
            }
        }
    }

    /// Whether an operation on `path` would be beaten by a delete already held (so it is
    /// collected on arrival instead of stored).
    fn beaten(&self, idx: u32, path: &str, order: (u64, DeviceId, EntryId)) -> bool {
        self.accounts[idx as usize]
            .targets
            .get(path)
            .is_some_and(|ops| ops.iter().any(|o| o.kind == OpKind::Delete && o.order > order))
    }

    /// Whether this operation is accounted for without being held: a delete held here beats
    /// it (so it was, or would be, collected).
    pub fn beaten_by_delete(&self, id: &EntryId, op: &Op) -> bool {
        self.did_lookup(&op.did).is_some_and(|idx| self.beaten(idx, &op.path(), (op.hlc.to_u64(), op.device, *id)))
    }

    /// Entries collected so far: operations (and the record blocks only they used) beaten by
    /// a later delete.
    pub fn collected(&self) -> u64 {
        self.collected
    }

    /// The materialized records of an account: path → record CID.
    pub fn records(&self, did: &Did) -> Option<&BTreeMap<String, Cid>> {
        self.did_lookup(did).map(|i| &self.accounts[i as usize].records)
    }

    /// Whether the record at `path` is absent because the replica holds a delete of it (rather
    /// than because it never held the record): only such a delete may remove a record from a
    /// repository the replica is brought to.
    pub fn holds_delete(&self, did: &Did, path: &str) -> bool {
        self.did_lookup(did).is_some_and(|i| {
            let acct = &self.accounts[i as usize];
            !acct.records.contains_key(path)
                && acct.targets.get(path).is_some_and(|ops| ops.iter().any(|o| o.kind == OpKind::Delete))
        })
    }

    /// The account's device authorizations and revocations as they travel (at most `limit`,
    /// oldest first), for a new device to learn who may sync the account before its first
    /// session.
    pub fn authorizations(&self, did: &Did, limit: usize) -> Result<Vec<Signed>, ReplicaError> {
        let Some(idx) = self.did_lookup(did) else { return Ok(Vec::new()) };
        let Some(key) = self.account_key(did) else { return Ok(Vec::new()) };
        let mut out = Vec::new();
        for (k, _) in self.log.iter().filter(|(_, v)| v.auth && v.did == idx) {
            if out.len() == limit {
                break;
            }
            // Those the current key signed (a rotation signs the standing ones again).
            if let Some(s) = self.signed(k)?
                && matches!(Entry::decode(&s.bytes), Ok(Entry::Auth(a)) if a.verify(&key).is_ok())
            {
                out.push(s);
            }
        }
        Ok(out)
    }

    /// The account's version vector: for each device, the highest sequence number of its
    /// operations this replica has seen (operations a delete beat may have been collected
    /// since, so the log can hold fewer).
    pub fn version_vector(&self, did: &Did) -> VersionVector {
        let mut vv = VersionVector::new();
        if let Some(i) = self.did_lookup(did) {
            for (d, s) in &self.accounts[i as usize].seen {
                vv.set(*d, s.contiguous.max(s.above.last().copied().unwrap_or(0)));
            }
        }
        vv
    }

    /// A time no earlier than this replica's next write.
    fn next_time(&self) -> Timestamp {
        let after_last = Timestamp::from_u64(self.clock.last().to_u64().saturating_add(1));
        after_last.max(Timestamp { wall_ms: crate::hlc::system_ms(), logical: 0 })
    }

    /// Whether `device` may write for `did` now (authorized, not revoked).
    pub fn is_authorized(&self, did: &Did, device: &DeviceId) -> bool {
        let Some(i) = self.did_lookup(did) else { return false };
        let now = self.next_time();
        self.accounts[i as usize].devices.get(device).is_some_and(|d| d.valid_at(now))
    }

    /// Whether `device` may write now for any account this replica holds (a peer that is
    /// one is a known replica of some account, not a stranger).
    pub fn is_device_of_any(&self, device: &DeviceId) -> bool {
        let now = self.next_time();
        self.accounts.iter().any(|a| a.devices.get(device).is_some_and(|d| d.valid_at(now)))
    }

    /// The devices of an account: id and whether each may write now.
    pub fn devices(&self, did: &Did) -> Vec<(DeviceId, bool)> {
        let Some(i) = self.did_lookup(did) else { return Vec::new() };
        let now = self.next_time();
        let mut out: Vec<_> = self.accounts[i as usize].devices.iter().map(|(d, s)| (*d, s.valid_at(now))).collect();
        out.sort();
        out
    }

    /// Operations waiting for authorizations.
    pub fn pending_len(&self) -> usize {
        self.pending_len
    }

    /// Bytes (entries and record blocks) of the operations waiting for authorizations.
    pub fn pending_bytes(&self) -> usize {
        self.pending_bytes
    }

    /// The root CID of the account's materialized MST. Kept up to date incrementally: the
    /// paths changed since the last call are applied to the last root's tree (O(changes ·
    /// log n) nodes read and written); the whole tree is built only the first time after
    /// the replica opens (or if the last root's nodes do not read back).
    pub fn root(&mut self, did: &Did) -> Result<Cid, ReplicaError> {
        let i = self.did_lookup(did).ok_or_else(|| ReplicaError::NotAuthorized(did.clone()))? as usize;
        let acct = &mut self.accounts[i];
        if let Some(r) = acct.root {
            if acct.stale.is_empty() {
                return Ok(r);
            }
            match update_root(&self.blocks, r, &acct.records, &acct.stale) {
                Ok(root) => {
                    acct.stale.clear();
                    acct.root = Some(root);
                    return Ok(root);
                }
                Err(e) => tracing::warn!(%did, error = %e, "the replica's tree is built again in full"),
            }
        }
        let entries = acct.records.iter().map(|(k, v)| (k.clone(), *v));
        let mut mst = Mst::from_sorted(self.blocks.clone(), entries).map_err(|e| ReplicaError::Mst(e.to_string()))?;
        let root = mst.root().map_err(|e| ReplicaError::Mst(e.to_string()))?;
        acct.stale.clear();
        acct.root = Some(root);
        Ok(root)
    }

    /// The paths whose record changed since the last call (or since [`Replica::clear_changed`]),
    /// for the bridge that brings a repository to the replica one change at a time.
    pub fn take_changed(&mut self, did: &Did) -> BTreeSet<String> {
        self.did_lookup(did).map(|i| std::mem::take(&mut self.accounts[i as usize].changed)).unwrap_or_default()
    }

    /// Puts back paths taken with [`Replica::take_changed`] that were not brought over.
    pub fn restore_changed(&mut self, did: &Did, paths: BTreeSet<String>) {
        if let Some(i) = self.did_lookup(did) {
            self.accounts[i as usize].changed.extend(paths);
        }
    }

    /// Forgets the changed paths (the repository is known to equal the replica).
    pub fn clear_changed(&mut self, did: &Did) {
        if let Some(i) = self.did_lookup(did) {
            self.accounts[i as usize].changed.clear();
        }
    }

    /// The account's repository as a signed v3 commit over the materialized MST. The
    /// revision comes from the latest operation's HLC and ECDSA signing is deterministic
    /// (RFC 6979), so replicas holding the account key and equal logs produce equal commits.
    pub fn commit(&mut self, did: &Did, account: &Keypair) -> Result<Commit, ReplicaError> {
        let data = self.root(did)?;
        let i = self.did_lookup(did).expect("root found it") as usize;
        let t = self.accounts[i].max_hlc;
        let rev = Tid::from_parts(t.wall_ms * 1000 + u64::from(t.logical).min(999), 0);
        Ok(Commit::sign(did.clone(), data, rev, account))
    }
}

/// The root of the tree `root` with the `stale` paths set to what `records` holds now.
fn update_root(
    blocks: &Arc<dyn Blockstore>,
    root: Cid,
    records: &BTreeMap<String, Cid>,
    stale: &BTreeSet<String>,
) -> Result<Cid, ues_repo::ipld::MstError> {
    let mut mst = Mst::load(blocks.clone(), root)?;
    for path in stale {
        match records.get(path) {
            Some(cid) => {
                mst.insert(path, *cid)?;
            }
            None => {
                mst.remove(path)?;
            }
        }
    }
    mst.root()
}

/// Operation signatures of a batch checked on every core (each one `verify_strict`, exactly as
/// alone: batching never changes what is accepted). `None` for authorizations and small
/// batches, which are checked in line.
fn verify_ops_parallel(decoded: &[(EntryId, Entry, Signed)]) -> Vec<Option<bool>> {
    const MIN_PARALLEL: usize = 64;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    if decoded.len() < MIN_PARALLEL || threads < 2 {
        return vec![None; decoded.len()];
    }
    let chunk = decoded.len().div_ceil(threads);
    std::thread::scope(|s| {
        let parts: Vec<_> = decoded
            .chunks(chunk)
            .map(|part| {
                s.spawn(move || {
                    part.iter()
                        .map(|(_, e, _)| match e {
                            Entry::Op(op) => Some(op.verify().is_ok()),
                            Entry::Auth(_) | Entry::Rotate(_) => None,
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let all: Vec<Option<bool>> = parts.into_iter().flat_map(|h| h.join().unwrap_or_default()).collect();
        // A checking thread that died leaves every entry to be checked in line.
        if all.len() == decoded.len() { all } else { vec![None; decoded.len()] }
    })
}

/// Checks a record block as the replica does before holding it: at most
/// [`MAX_RECORD_BYTES`], its CID, and valid AT Protocol data (DAG-CBOR within the decoder's
/// nesting limit).
pub fn check_record_block(cid: &Cid, data: &[u8]) -> Result<(), Refused> {
    if data.len() > MAX_RECORD_BYTES {
        return Err(Refused::BadBlock(*cid, format!("larger than {MAX_RECORD_BYTES} bytes")));
    }
    storage::verify_block(cid, data).map_err(|e| Refused::BadBlock(*cid, e.to_string()))?;
    dagcbor::decode_atproto(data).map_err(|e| Refused::BadBlock(*cid, e.to_string()))?;
    Ok(())
}

fn hex_id(id: &EntryId) -> String {
    hex::encode(&id[..8])
}

/// The BLAKE3 CID of an entry with this id.
pub fn entry_cid_from_id(id: &EntryId) -> Cid {
    let mh = multihash::Multihash::<64>::wrap(BLAKE3, id).expect("32-byte digest");
    Cid::new_v1(DAG_CBOR, mh)
}

enum Value {
    Cid(Cid),
    Block(Vec<u8>),
}

/// A record's value from its operations, sorted by (HLC, device, id).
fn materialize(path: &str, ops: &[TargetOp]) -> Option<Value> {
    let start = ops.iter().rposition(|o| o.kind == OpKind::Delete).map_or(0, |i| i + 1);
    let live = &ops[start..];
    if let Some(cid) = live.iter().rev().find_map(|o| if let OpKind::Put(c) = &o.kind { Some(*c) } else { None }) {
        return Some(Value::Cid(cid));
    }
    let collection = path.split('/').next().unwrap_or_default().to_string();
    let mut typed = BTreeMap::from([("$type".to_string(), Ipld::String(collection))]);
    if live.iter().any(|o| matches!(o.kind, OpKind::Add(_))) {
        let sum: i128 = live.iter().map(|o| if let OpKind::Add(n) = o.kind { i128::from(n) } else { 0 }).sum();
        let sum = sum.clamp(i128::from(i64::MIN), i128::from(i64::MAX));
        typed.insert("count".into(), Ipld::Integer(sum));
        return Some(Value::Block(dagcbor::encode(&Ipld::Map(typed))));
    }
    if live.is_empty() {
        return None;
    }
    let mut members: BTreeMap<&str, bool> = BTreeMap::new();
    for o in live {
        match &o.kind {
            OpKind::SetAdd(e) => {
                members.insert(e, true);
            }
            OpKind::SetRemove(e) => {
                members.insert(e, false);
            }
            _ => {}
        }
    }
    let list = members.into_iter().filter(|(_, present)| *present).map(|(e, _)| Ipld::String(e.to_string()));
    typed.insert("members".into(), Ipld::List(list.collect()));
    Some(Value::Block(dagcbor::encode(&Ipld::Map(typed))))
}

mod tombstones;
pub use tombstones::ACK_COLLECTION;

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use ues_repo::crypto::KeyType;

    use super::*;

    pub(crate) struct World {
        pub account: Keypair,
        pub did: Did,
        pub keys: Arc<HashMap<Did, PublicKey>>,
    }

    pub(crate) fn world() -> World {
        let account = Keypair::generate(KeyType::K256);
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let keys = Arc::new(HashMap::from([(did.clone(), account.public())]));
        World { account, did, keys }
    }

    fn replica(w: &World, dev: u8, now: Arc<AtomicU64>) -> Replica {
        let clock = Hlc::with_physical(60_000, move || now.load(Ordering::SeqCst));
        Replica::in_memory(w.keys.clone(), clock, Some(SigningKey::from_bytes(&[dev; 32])))
    }

    fn post(text: &str) -> Change {
        Change::Put(Ipld::Map(BTreeMap::from([
            ("$type".into(), Ipld::String("app.bsky.feed.post".into())),
            ("text".into(), Ipld::String(text.into())),
        ])))
    }

    fn nsid() -> Nsid {
        Nsid::new("app.bsky.feed.post").unwrap()
    }

    #[test]
    fn writes_need_an_authorization_and_a_revocation_purges_later_writes() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now.clone());
        let dev = a.device_id().unwrap();
        assert!(matches!(
            a.write(&w.did, nsid(), RecordKey::new("a").unwrap(), post("x")),
            Err(ReplicaError::NotAuthorized(_))
        ));
        let auth = a.authorize(&w.account, &w.did, dev, false).unwrap();
        let first = a.write(&w.did, nsid(), RecordKey::new("a").unwrap(), post("x")).unwrap();
        assert_eq!(a.records(&w.did).unwrap().len(), 1);

        // Another replica gets the op before the authorization: it waits, then applies.
        let mut b = replica(&w, 2, now.clone());
        let r = b.apply(vec![first.clone()]);
        assert_eq!((r.applied, r.pending), (0, 1));
        let r = b.apply(vec![auth.clone()]);
        assert_eq!(r.applied, 2);
        assert_eq!(b.root(&w.did).unwrap(), a.root(&w.did).unwrap());

        now.fetch_add(10, Ordering::SeqCst);
        let second = a.write(&w.did, nsid(), RecordKey::new("b").unwrap(), post("y")).unwrap();
        let at = Entry::decode(&second.bytes).unwrap().hlc();
        let revoke = DeviceAuth::sign(&w.account, w.did.clone(), dev, at, true);
        let revoke = Signed { bytes: Entry::Auth(revoke).encode(), block: None };
        // The op written at the revocation's time is purged on A and refused on B.
        let rr = a.apply(vec![revoke.clone()]);
        assert_eq!(rr.applied, 1, "{rr:?}");
        assert_eq!(a.records(&w.did).unwrap().len(), 1);
        b.apply(vec![revoke]);
        let r = b.apply(vec![second]);
        assert!(matches!(r.refused[0].reason, Refused::Unauthorized { .. }));
        assert_eq!(b.root(&w.did).unwrap(), a.root(&w.did).unwrap());
        assert_eq!(a.len(), b.len());
    }

    /// A revocation names the last sequence number it accepts: a revoked device that dates a
    /// new operation before its revocation is refused all the same, and one already applied
    /// is purged when the revocation arrives.
    #[test]
    fn a_revocation_refuses_later_sequence_numbers_whatever_their_clock() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now.clone());
        let dev = a.device_id().unwrap();
        let auth = a.authorize(&w.account, &w.did, dev, false).unwrap();
        let first = a.write(&w.did, nsid(), RecordKey::new("a").unwrap(), post("x")).unwrap();
        let Entry::Op(op1) = Entry::decode(&first.bytes).unwrap() else { panic!() };
        now.fetch_add(1_000, Ordering::SeqCst);
        // Signed by the account on a replica that has seen the device's first operation.
        let mut c = replica(&w, 3, now.clone());
        c.apply(vec![auth.clone(), first.clone()]);
        let revoke = c.authorize(&w.account, &w.did, dev, true).unwrap();
        let Entry::Auth(r) = Entry::decode(&revoke.bytes).unwrap() else { panic!() };
        assert_eq!((r.revoke, r.upto), (true, Some(1)));
        // The revoked device dates its second operation just after its first.
        let key = SigningKey::from_bytes(&[1; 32]);
        let backdated = Op::sign(
            &key,
            w.did.clone(),
            2,
            Timestamp { wall_ms: op1.hlc.wall_ms, logical: op1.hlc.logical + 1 },
            nsid(),
            RecordKey::new("b").unwrap(),
            OpKind::Delete,
        );
        let backdated = Signed { bytes: Entry::Op(backdated).encode(), block: None };
        let mut b = replica(&w, 2, now.clone());
        b.apply(vec![auth.clone(), first.clone(), revoke.clone()]);
        let rep = b.apply(vec![backdated.clone()]);
        assert!(matches!(rep.refused[0].reason, Refused::Unauthorized { .. }), "{rep:?}");
        // Applied before the revocation arrived: purged by it.
        let mut d = replica(&w, 4, now);
        d.apply(vec![auth, first, backdated]);
        assert_eq!(d.len(), 3);
        d.apply(vec![revoke]);
        assert_eq!(d.len(), b.len());
        assert_eq!(d.root(&w.did).unwrap(), b.root(&w.did).unwrap());
    }

    /// Keys that refuse every rotation (a node whose PLC check fails).
    struct NoRotation(Arc<HashMap<Did, PublicKey>>);

    impl AccountKeys for NoRotation {
        fn key(&self, did: &Did) -> Option<PublicKey> {
            self.0.key(did)
        }

        fn check_rotation(&self, _: &Did, _: &RotationBody) -> Result<(), String> {
            Err("the PLC operation does not chain".into())
        }
    }

    /// A revocation's rotation moves every replica to the new key: the devices that stay open
    /// it, the revoked one cannot; authorizations the old key signed before stay valid, the
    /// old key's later ones do not; a device that joins later takes the history in any order;
    /// a replica whose check refuses the rotation keeps its key.
    #[test]
    fn a_rotation_moves_every_replica_to_a_key_the_revoked_device_never_gets() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now.clone());
        let mut b = replica(&w, 2, now.clone());
        let mut c = replica(&w, 3, now.clone());
        let (da, db, dc) = (a.device_id().unwrap(), b.device_id().unwrap(), c.device_id().unwrap());
        let mut log = vec![
            a.authorize(&w.account, &w.did, da, false).unwrap(),
            a.authorize(&w.account, &w.did, db, false).unwrap(),
            a.authorize(&w.account, &w.did, dc, false).unwrap(),
        ];
        c.apply(log.clone());
        let by_c = c.write(&w.did, nsid(), RecordKey::new("c").unwrap(), post("from c")).unwrap();
        a.apply(vec![by_c.clone()]);
        now.fetch_add(1_000, Ordering::SeqCst);
        log.push(by_c);
        log.push(a.authorize(&w.account, &w.did, dc, true).unwrap());
        let new = Keypair::generate(KeyType::K256);
        let rotation = a.rotate(&w.account, &w.did, &new, None).unwrap();
        assert_eq!(a.account_key(&w.did), Some(new.public()));
        let mine = a.take_rotations();
        assert_eq!(mine.len(), 1);
        assert_eq!(mine[0].key.as_ref().map(Keypair::public), Some(new.public()), "sealed to itself too");
        // Only the authorizations the new key signed again are handed to a new device.
        let handed = a.authorizations(&w.did, 100).unwrap();
        assert_eq!(handed.len(), 4, "a, b and c authorized, c revoked");
        assert!(
            handed
                .iter()
                .all(|s| matches!(Entry::decode(&s.bytes), Ok(Entry::Auth(x)) if x.verify(&new.public()).is_ok()))
        );

        // B follows and opens the new key; C (revoked) follows and cannot.
        let mut all = log.clone();
        all.extend(rotation.clone());
        let r = b.apply(all.clone());
        assert!(r.refused.is_empty(), "{r:?}");
        assert_eq!(b.account_key(&w.did), Some(new.public()));
        assert_eq!(b.take_rotations()[0].key.as_ref().map(Keypair::public), Some(new.public()));
        c.apply(all.clone());
        assert!(c.take_rotations()[0].key.is_none(), "the revoked device gets no key");

        // The old key now authorizes nothing new: its signature after the rotation is refused
        // (without holding it against the sender).
        now.fetch_add(1_000, Ordering::SeqCst);
        let late = DeviceAuth::sign(&w.account, w.did.clone(), [7; 32], b.clock().now().unwrap(), false);
        let r = b.apply(vec![Signed { bytes: Entry::Auth(late).encode(), block: None }]);
        assert!(matches!(r.refused[0].reason, Refused::UnknownSigner(_)), "{r:?}");
        // Nor another rotation by the old key.
        let evil = Keypair::generate(KeyType::K256);
        let mut rogue = replica(&w, 3, now.clone());
        rogue.apply(log.clone());
        let forged = rogue.rotate(&w.account, &w.did, &evil, None).unwrap();
        let r = b.apply(forged);
        assert!(r.refused.iter().all(|x| matches!(x.reason, Refused::UnknownSigner(_))), "{r:?}");
        assert_eq!(b.account_key(&w.did), Some(new.public()));

        // A device that knows only the new key (handed over) takes the old history, whatever
        // the order: what the old key signed before the rotation waits for the rotation.
        let keys = Arc::new(HashMap::from([(w.did.clone(), new.public())]));
        let clock = Hlc::with_physical(60_000, {
            let now = now.clone();
            move || now.load(Ordering::SeqCst)
        });
        let mut d = Replica::in_memory(keys, clock, Some(SigningKey::from_bytes(&[4; 32])));
        d.apply(handed);
        let r = d.apply(log.clone());
        assert!(r.refused.iter().all(|x| matches!(x.reason, Refused::UnknownSigner(_))), "{r:?}");
        d.apply(all.clone());
        assert_eq!(d.len(), b.len());
        assert_eq!(d.root(&w.did).unwrap(), b.root(&w.did).unwrap());
        assert!(d.take_rotations().is_empty(), "history moves no key");

        // A replica whose check refuses the rotation keeps the old key.
        let clock = Hlc::with_physical(60_000, move || now.load(Ordering::SeqCst));
        let mut e =
            Replica::in_memory(Arc::new(NoRotation(w.keys.clone())), clock, Some(SigningKey::from_bytes(&[5; 32])));
        let r = e.apply(rotation);
        assert!(matches!(r.refused[0].reason, Refused::Rotation(_)), "{r:?}");
        assert_eq!(e.account_key(&w.did), Some(w.account.public()));
    }

    #[test]
    fn forged_replayed_and_equivocating_entries_are_refused() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now.clone());
        let dev = a.device_id().unwrap();
        let auth = a.authorize(&w.account, &w.did, dev, false).unwrap();
        let op = a.write(&w.did, nsid(), RecordKey::new("a").unwrap(), post("x")).unwrap();
        let mut b = replica(&w, 2, now.clone());
        b.apply(vec![auth.clone()]);

        // A flipped bit anywhere: refused (signature or shape), nothing stored.
        for i in 0..op.bytes.len() {
            let mut bad = op.clone();
            bad.bytes[i] ^= 0x01;
            let r = b.apply(vec![bad]);
            assert_eq!(r.applied, 0, "byte {i}");
            assert!(r.refused.len() + r.pending == 1, "byte {i}: {r:?}");
        }
        assert_eq!(b.len(), 1);
        // The record block swapped for another: refused.
        let mut swapped = op.clone();
        swapped.block = Some((swapped.block.as_ref().unwrap().0, b"\xa0".to_vec()));
        assert!(matches!(b.apply(vec![swapped]).refused[0].reason, Refused::BadBlock(..)));
        let mut missing = op.clone();
        missing.block = None;
        assert!(matches!(b.apply(vec![missing]).refused[0].reason, Refused::MissingBlock(_)));

        let r = b.apply(vec![op.clone(), op.clone()]);
        assert_eq!((r.applied, r.duplicates), (1, 1), "a replay is a no-op");
        // Same device, same sequence number, different content.
        let key = SigningKey::from_bytes(&[1; 32]);
        let Entry::Op(orig) = Entry::decode(&op.bytes).unwrap() else { panic!() };
        let twin = Op::sign(
            &key,
            w.did.clone(),
            orig.seq,
            Timestamp { wall_ms: orig.hlc.wall_ms, logical: orig.hlc.logical + 1 },
            nsid(),
            RecordKey::new("z").unwrap(),
            OpKind::Delete,
        );
        let r = b.apply(vec![Signed { bytes: Entry::Op(twin).encode(), block: None }]);
        assert!(matches!(r.refused[0].reason, Refused::Equivocation { .. }));
        // An authorization signed by another key (which may be a rotated key not seen yet:
        // refused, and not held against the sender).
        let forged =
            DeviceAuth::sign(&Keypair::generate(KeyType::K256), w.did.clone(), [9; 32], a.clock().last(), false);
        let r = b.apply(vec![Signed { bytes: Entry::Auth(forged).encode(), block: None }]);
        assert!(matches!(r.refused[0].reason, Refused::UnknownSigner(_)));
        // From too far in the future.
        let future = Op::sign(
            &key,
            w.did.clone(),
            99,
            Timestamp { wall_ms: now.load(Ordering::SeqCst) + 3_600_000, logical: 0 },
            nsid(),
            RecordKey::new("f").unwrap(),
            OpKind::Delete,
        );
        let r = b.apply(vec![Signed { bytes: Entry::Op(future).encode(), block: None }]);
        assert!(matches!(r.refused[0].reason, Refused::Clock(ClockError::TooFarAhead { .. })));
        assert_eq!(b.len(), 2);
        assert!(b.refusal_counts().values().sum::<u64>() >= 5);
    }

    /// A stranger's operations cost nothing: for an account without a key not even an account
    /// slot; for a known account, operations of unknown devices wait only within the byte
    /// bounds, and only after their record block checked out.
    #[test]
    fn strangers_operations_are_checked_and_bounded_before_they_wait() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut b = replica(&w, 2, now.clone());
        let at = Timestamp { wall_ms: now.load(Ordering::SeqCst), logical: 0 };
        let big = |dev: u8, did: &Did, seq: u64, bad_block: bool| {
            let key = SigningKey::from_bytes(&[dev; 32]);
            let value = Ipld::Map(BTreeMap::from([
                ("$type".into(), Ipld::String("app.bsky.feed.post".into())),
                ("text".into(), Ipld::String("x".repeat(900_000))),
            ]));
            let bytes = dagcbor::encode(&value);
            let cid = cid_sha256(DAG_CBOR, &bytes);
            let op = Op::sign(
                &key,
                did.clone(),
                seq,
                at,
                nsid(),
                RecordKey::new(format!("r{seq}")).unwrap(),
                OpKind::Put(cid),
            );
            let block = if bad_block { b"\xa1\x61\x61\x01".to_vec() } else { bytes };
            Signed { bytes: Entry::Op(op).encode(), block: Some((cid, block)) }
        };
        let stranger = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        for seq in 1..=5 {
            let r = b.apply(vec![big(9, &stranger, seq, false)]);
            assert!(matches!(r.refused[0].reason, Refused::UnknownAccount(_)));
        }
        assert!(b.dids().is_empty(), "no account slot for an unknown account");
        // A bad block is refused, not parked.
        let r = b.apply(vec![big(9, &w.did, 1, true)]);
        assert!(matches!(r.refused[0].reason, Refused::BadBlock(..)), "{r:?}");
        assert_eq!(b.pending_len(), 0);
        // One device: 4 MiB at most; the account: 8 MiB; whatever the count.
        let mut full = 0;
        for dev in 10..14u8 {
            for seq in 1..=8 {
                let r = b.apply(vec![big(dev, &w.did, seq, false)]);
                full += r.refused.iter().filter(|x| x.reason == Refused::PendingFull).count();
            }
        }
        assert!(b.pending_bytes() <= MAX_PENDING_ACCOUNT_BYTES, "{}", b.pending_bytes());
        assert!(b.pending_bytes() > MAX_PENDING_ACCOUNT_BYTES / 2);
        assert!(full > 0);
        let r = b.apply(vec![big(10, &w.did, 1, false)]);
        assert_eq!(r.duplicates, 1, "a replay of a waiting operation is a no-op");
        assert_eq!(b.len(), 0);
    }

    #[test]
    fn a_large_batch_checked_in_parallel_refuses_exactly_the_forged_entry() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now.clone());
        let auth = a.authorize(&w.account, &w.did, a.device_id().unwrap(), false).unwrap();
        let mut batch = vec![auth];
        for i in 0..200 {
            batch.push(a.write(&w.did, nsid(), RecordKey::new(format!("r{i}")).unwrap(), post("x")).unwrap());
        }
        // Flip one byte of the signature of entry 100 (the signature sits before "h").
        let victim = &mut batch[100].bytes;
        let at = victim.windows(2).position(|w| w == [0x61, 0x67]).unwrap() + 5;
        victim[at] ^= 1;
        let mut b = replica(&w, 2, now);
        let r = b.apply(batch);
        assert_eq!(r.applied, 200, "{:?}", r.refused);
        assert_eq!(r.refused.len(), 1);
        assert!(matches!(r.refused[0].reason, Refused::Entry(EntryError::BadSignature)));
    }

    #[test]
    fn counters_and_sets_merge_by_type() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now.clone());
        let mut b = replica(&w, 2, now.clone());
        let auths = vec![
            a.authorize(&w.account, &w.did, a.device_id().unwrap(), false).unwrap(),
            a.authorize(&w.account, &w.did, b.device_id().unwrap(), false).unwrap(),
        ];
        b.apply(auths);
        let c = Nsid::new("dev.ues.test.counter").unwrap();
        let s = Nsid::new("dev.ues.test.set").unwrap();
        let k = RecordKey::new("self").unwrap();
        let mut sent = Vec::new();
        sent.push(a.write(&w.did, c.clone(), k.clone(), Change::Add(5)).unwrap());
        let mut back = Vec::new();
        back.push(b.write(&w.did, c.clone(), k.clone(), Change::Add(-2)).unwrap());
        sent.push(a.write(&w.did, s.clone(), k.clone(), Change::SetAdd("x".into())).unwrap());
        back.push(b.write(&w.did, s.clone(), k.clone(), Change::SetAdd("y".into())).unwrap());
        now.fetch_add(5, Ordering::SeqCst);
        back.push(b.write(&w.did, s.clone(), k.clone(), Change::SetRemove("x".into())).unwrap());
        a.apply(back);
        b.apply(sent);
        assert_eq!(a.root(&w.did).unwrap(), b.root(&w.did).unwrap());
        let counter = a.records(&w.did).unwrap()["dev.ues.test.counter/self"];
        let value = dagcbor::decode_atproto(&a.blocks().get(&counter).unwrap().unwrap()).unwrap();
        assert_eq!(value.get("count"), Some(&Ipld::Integer(3)));
        let set = a.records(&w.did).unwrap()["dev.ues.test.set/self"];
        let value = dagcbor::decode_atproto(&a.blocks().get(&set).unwrap().unwrap()).unwrap();
        assert_eq!(value.get("members"), Some(&Ipld::List(vec![Ipld::String("y".into())])));
    }

    #[test]
    fn a_lexicon_decides_which_changes_a_collection_takes() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let mut a = replica(&w, 1, now);
        a.authorize(&w.account, &w.did, a.device_id().unwrap(), false).unwrap();
        let mut lex = Lexicons::new();
        for (id, merge) in [("dev.ues.test.likes", "counter"), ("dev.ues.test.tags", "set")] {
            let doc = serde_json::json!({"lexicon": 1, "id": id, "defs": {"main": {"type": "record", "key": "any", "merge": merge, "record": {"type": "object", "properties": {}}}}});
            lex.add(&doc).unwrap();
        }
        let bad = serde_json::json!({"lexicon": 1, "id": "dev.ues.test.bad", "defs": {"main": {"type": "record", "key": "any", "merge": "max", "record": {"type": "object", "properties": {}}}}});
        assert!(lex.add(&bad).is_err());
        a.set_lexicons(Arc::new(lex));
        let k = || RecordKey::new("self").unwrap();
        let likes = Nsid::new("dev.ues.test.likes").unwrap();
        let tags = Nsid::new("dev.ues.test.tags").unwrap();
        a.write(&w.did, likes.clone(), k(), Change::Add(1)).unwrap();
        assert!(matches!(
            a.write(&w.did, likes.clone(), k(), post("x")),
            Err(ReplicaError::WrongMerge { merge: MergeKind::Counter, .. })
        ));
        a.write(&w.did, tags.clone(), k(), Change::SetAdd("rust".into())).unwrap();
        assert!(matches!(a.write(&w.did, tags, k(), Change::Add(1)), Err(ReplicaError::WrongMerge { .. })));
        assert!(matches!(
            a.write(&w.did, nsid(), k(), Change::Add(1)),
            Err(ReplicaError::WrongMerge { merge: MergeKind::Lww, .. })
        ));
        a.write(&w.did, likes, k(), Change::Delete).unwrap();
    }

    #[test]
    fn reopening_rebuilds_the_log_and_the_state() {
        let w = world();
        let now = Arc::new(AtomicU64::new(crate::hlc::system_ms()));
        let store: Arc<dyn Blockstore> = Arc::new(MemoryBlockstore::new());
        let clock = {
            let n = now.clone();
            Hlc::with_physical(60_000, move || n.load(Ordering::SeqCst))
        };
        let mut a =
            Replica::open(store.clone(), w.keys.clone(), clock, Some(SigningKey::from_bytes(&[1; 32]))).unwrap();
        a.authorize(&w.account, &w.did, a.device_id().unwrap(), false).unwrap();
        for i in 0..20 {
            a.write(&w.did, nsid(), RecordKey::new(format!("r{i}")).unwrap(), post("x")).unwrap();
        }
        a.write(&w.did, nsid(), RecordKey::new("r3").unwrap(), Change::Delete).unwrap();
        let root = a.root(&w.did).unwrap();
        let commit = a.commit(&w.did, &w.account).unwrap();
        commit.verify(&w.account.public()).unwrap();
        let clock = {
            let n = now.clone();
            Hlc::with_physical(60_000, move || n.load(Ordering::SeqCst))
        };
        let mut again = Replica::open(store, w.keys.clone(), clock, Some(SigningKey::from_bytes(&[1; 32]))).unwrap();
        assert_eq!(again.len(), a.len());
        assert_eq!(again.root(&w.did).unwrap(), root);
        assert_eq!(again.commit(&w.did, &w.account).unwrap(), commit, "deterministic commit");
        // The device continues its sequence.
        again.write(&w.did, nsid(), RecordKey::new("r99").unwrap(), post("x")).unwrap();
        assert_eq!(again.version_vector(&w.did).get(&again.device_id().unwrap()), 22);
    }
}
