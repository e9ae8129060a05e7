//! One account's repository: records in an MST under a signed commit.
//!
//! Every batch of writes becomes one signed v3 commit with a fresh revision. The new blocks
//! (records, changed MST nodes, the commit) are stored in one atomic batch, so a crash leaves
//! the repository at the previous commit or the new one, never between.

use std::io::Read;

use cid::Cid;
use ues_ipld::car::{CarError, CarReader, CarWriter};
use ues_ipld::mst::{decode_node, verify_tree};
use ues_ipld::storage::{Blockstore, MemoryBlockstore};
use ues_ipld::{DAG_CBOR, Ipld, Mst, MstError, cid_sha256, dagcbor};

use crate::commit::{Commit, CommitError};
use crate::crypto::{Keypair, PublicKey};
use crate::syntax::{Did, Nsid, RecordKey, Tid};

/// Why a repository operation was refused. Nothing is written when one is returned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RepoError {
    /// A swap (compare-and-swap) check failed: the commit or record is not what the caller saw.
    #[error("invalid swap: {0}")]
    InvalidSwap(String),
    /// Create of a record that exists.
    #[error("record {0} already exists")]
    RecordExists(String),
    /// Update or delete of a record that does not exist.
    #[error("record {0} not found")]
    RecordNotFound(String),
    /// The record is not a map (AT Protocol records are objects).
    #[error("invalid record at {path}: {reason}")]
    InvalidRecord {
        /// The record path.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The imported repository belongs to another DID.
    #[error("repository is for {found}, expected {expected}")]
    WrongDid {
        /// The DID expected.
        expected: String,
        /// The DID in the commit.
        found: String,
    },
    /// A record the tree points to is missing from an import.
    #[error("{0} records are missing")]
    MissingRecords(usize),
    /// A block the repository needs is absent.
    #[error("block {0} is missing")]
    MissingBlock(Cid),
    /// The tree is malformed.
    #[error(transparent)]
    Mst(#[from] MstError),
    /// The commit is malformed or its signature does not verify.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The CAR stream is malformed.
    #[error(transparent)]
    Car(#[from] CarError),
    /// Storage failed.
    #[error(transparent)]
    Storage(#[from] ues_ipld::storage::Error),
}

/// One write in a batch.
#[derive(Debug, Clone)]
pub enum Write {
    /// Create a record; fails if it exists.
    Create {
        /// Collection.
        collection: Nsid,
        /// Record key.
        rkey: RecordKey,
        /// The record (a map).
        record: Ipld,
    },
    /// Create or replace a record; with `swap`, only if its current CID is that (`None`
    /// inside means "must not exist").
    Update {
        /// Collection.
        collection: Nsid,
        /// Record key.
        rkey: RecordKey,
        /// The record (a map).
        record: Ipld,
        /// Expected current CID.
        swap: Option<Option<Cid>>,
    },
    /// Delete a record; with `swap`, only if its current CID is that.
    Delete {
        /// Collection.
        collection: Nsid,
        /// Record key.
        rkey: RecordKey,
        /// Expected current CID.
        swap: Option<Cid>,
    },
}

/// What a write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Created.
    Create,
    /// Updated.
    Update,
    /// Deleted.
    Delete,
}

/// One applied operation, as firehose events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedOp {
    /// What happened.
    pub action: Action,
    /// `collection/rkey`.
    pub path: String,
    /// The new record CID (`None` for deletes).
    pub cid: Option<Cid>,
    /// The previous record CID (`None` for creates).
    pub prev: Option<Cid>,
}

/// The result of a commit.
#[derive(Debug, Clone)]
pub struct CommitResult {
    /// The new commit.
    pub commit: Commit,
    /// Its CID.
    pub cid: Cid,
    /// The MST root before this commit (`None` for the first commit).
    pub prev_data: Option<Cid>,
    /// The previous commit's revision.
    pub since: Option<Tid>,
    /// The operations.
    pub ops: Vec<AppliedOp>,
    /// Every block this commit added (records, MST nodes, the commit).
    pub blocks: Vec<(Cid, Vec<u8>)>,
}

/// A repository over a blockstore.
pub struct Repo<B> {
    store: B,
    head: Cid,
    commit: Commit,
}

fn path(collection: &Nsid, rkey: &RecordKey) -> String {
    format!("{collection}/{rkey}")
}

/// Largest record block, encoded (the sync specification's hard limit: relays drop commits that
/// carry a larger one, so a larger record could never leave this node).
pub const MAX_RECORD_BYTES: usize = 1_000_000;

fn record_block(path: &str, record: &Ipld) -> Result<(Cid, Vec<u8>), RepoError> {
    let invalid = |reason: String| RepoError::InvalidRecord { path: path.to_string(), reason };
    if !matches!(record, Ipld::Map(_)) {
        return Err(invalid("a record must be an object".into()));
    }
    // A value the decoder would refuse could be committed but never read back.
    if record.depth() > dagcbor::MAX_DEPTH {
        return Err(invalid(format!("nested deeper than {} levels", dagcbor::MAX_DEPTH)));
    }
    let bytes = dagcbor::encode(record);
    if bytes.len() > MAX_RECORD_BYTES {
        return Err(invalid(format!("{} bytes encoded; records are limited to {MAX_RECORD_BYTES}", bytes.len())));
    }
    Ok((cid_sha256(DAG_CBOR, &bytes), bytes))
}

impl<B: Blockstore> Repo<B> {
    /// Creates an empty repository with its first signed commit.
    pub fn create(store: B, did: Did, key: &Keypair, rev: Tid) -> Result<(Self, CommitResult), RepoError> {
        let mut mst = Mst::new(&store);
        let (data, mut blocks) = mst.root_and_blocks();
        let commit = Commit::sign(did, data, rev, key);
        let (cid, bytes) = commit.to_block();
        blocks.push((cid, bytes));
        store.put_many(&blocks)?;
        let result = CommitResult { commit: commit.clone(), cid, prev_data: None, since: None, ops: vec![], blocks };
        Ok((Self { store, head: cid, commit }, result))
    }

    /// Opens the repository whose head commit is `head`.
    pub fn load(store: B, head: Cid) -> Result<Self, RepoError> {
        let bytes = store.get(&head)?.ok_or(RepoError::MissingBlock(head))?;
        let commit = Commit::decode(&bytes)?;
        Ok(Self { store, head, commit })
    }

    /// The head commit's CID.
    pub fn head(&self) -> Cid {
        self.head
    }

    /// The head commit.
    pub fn commit(&self) -> &Commit {
        &self.commit
    }

    /// The underlying store.
    pub fn store(&self) -> &B {
        &self.store
    }

    /// The record tree at the head.
    pub fn mst(&self) -> Result<Mst<&B>, RepoError> {
        Ok(Mst::load(&self.store, self.commit.data)?)
    }

    /// A record and its CID.
    pub fn get_record(&self, collection: &Nsid, rkey: &RecordKey) -> Result<Option<(Cid, Ipld)>, RepoError> {
        let Some(cid) = self.mst()?.get(&path(collection, rkey))? else { return Ok(None) };
        let bytes = self.store.get(&cid)?.ok_or(RepoError::MissingBlock(cid))?;
        let value = dagcbor::decode_atproto(&bytes)
            .map_err(|e| RepoError::InvalidRecord { path: path(collection, rkey), reason: e.to_string() })?;
        Ok(Some((cid, value)))
    }

    /// Up to `limit` (rkey, CID) pairs of a collection after `cursor` (an rkey), in key order.
    pub fn list_records(
        &self,
        collection: &Nsid,
        cursor: Option<&RecordKey>,
        limit: usize,
    ) -> Result<Vec<(String, Cid)>, RepoError> {
        let prefix = format!("{collection}/");
        let after = cursor.map(|c| format!("{prefix}{c}"));
        let entries = self.mst()?.list_prefix(&prefix, after.as_deref(), limit)?;
        Ok(entries.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect())
    }

    /// Applies a batch atomically as one signed commit. With `swap_commit`, only if the head
    /// is that commit.
    pub fn apply_writes(
        &mut self,
        writes: &[Write],
        key: &Keypair,
        rev: Tid,
        swap_commit: Option<Cid>,
    ) -> Result<CommitResult, RepoError> {
        if let Some(expected) = swap_commit
            && expected != self.head
        {
            return Err(RepoError::InvalidSwap(format!("head is {}, not {expected}", self.head)));
        }
        let prev_data = self.commit.data;
        let mut mst = Mst::load(&self.store, prev_data)?;
        let mut blocks = Vec::new();
        let mut ops = Vec::with_capacity(writes.len());
        for w in writes {
            match w {
                Write::Create { collection, rkey, record } => {
                    let p = path(collection, rkey);
                    let (cid, bytes) = record_block(&p, record)?;
                    if mst.get(&p)?.is_some() {
                        return Err(RepoError::RecordExists(p));
                    }
                    mst.insert(&p, cid)?;
                    blocks.push((cid, bytes));
                    ops.push(AppliedOp { action: Action::Create, path: p, cid: Some(cid), prev: None });
                }
                Write::Update { collection, rkey, record, swap } => {
                    let p = path(collection, rkey);
                    let (cid, bytes) = record_block(&p, record)?;
                    let current = mst.get(&p)?;
                    if let Some(expected) = swap
                        && *expected != current
                    {
                        return Err(RepoError::InvalidSwap(format!("record {p} is {current:?}, not {expected:?}")));
                    }
                    mst.insert(&p, cid)?;
                    blocks.push((cid, bytes));
                    let action = if current.is_some() { Action::Update } else { Action::Create };
                    ops.push(AppliedOp { action, path: p, cid: Some(cid), prev: current });
                }
                Write::Delete { collection, rkey, swap } => {
                    let p = path(collection, rkey);
                    let current = mst.get(&p)?;
                    if let Some(expected) = swap
                        && Some(*expected) != current
                    {
                        return Err(RepoError::InvalidSwap(format!("record {p} is {current:?}, not {expected}")));
                    }
                    if current.is_none() {
                        return Err(RepoError::RecordNotFound(p));
                    }
                    mst.remove(&p)?;
                    ops.push(AppliedOp { action: Action::Delete, path: p, cid: None, prev: current });
                }
            }
        }
        let (data, nodes) = mst.root_and_blocks();
        blocks.extend(nodes);
        let since = Some(self.commit.rev.clone());
        let commit = Commit::sign(self.commit.did.clone(), data, rev, key);
        let (cid, bytes) = commit.to_block();
        blocks.push((cid, bytes));
        self.store.put_many(&blocks)?;
        self.head = cid;
        self.commit = commit.clone();
        Ok(CommitResult { commit, cid, prev_data: Some(prev_data), since, ops, blocks })
    }

    /// The blocks a `#commit` firehose event for `res` carries: the commit, the new records and
    /// MST nodes, and the nodes inverting the commit's operations reads (its inversion proof),
    /// nothing else: a consumer holding only these blocks can invert the commit back to
    /// `prev_data` and so check every operation.
    pub fn commit_event_blocks(&self, res: &CommitResult) -> Result<Vec<(Cid, Vec<u8>)>, RepoError> {
        // One operation per path, from its value before the commit to its value after.
        let mut by_path: std::collections::BTreeMap<&str, (Option<Cid>, Option<Cid>)> = Default::default();
        for o in &res.ops {
            by_path.entry(o.path.as_str()).and_modify(|e| e.1 = o.cid).or_insert((o.prev, o.cid));
        }
        let ops: Vec<ues_ipld::mst::RecordOp> = by_path
            .into_iter()
            .filter(|(_, (old, new))| old != new)
            .map(|(path, (old, new))| ues_ipld::mst::RecordOp { path: path.to_string(), old, new })
            .collect();
        let (back, proof) = ues_ipld::mst::invert(&self.store, res.commit.data, &ops)?;
        if let Some(prev) = res.prev_data
            && back != prev
        {
            return Err(RepoError::Mst(MstError::Malformed(format!(
                "inverting the commit's operations gave {back}, not its previous tree {prev}"
            ))));
        }
        let mut blocks = res.blocks.clone();
        let have: std::collections::HashSet<Cid> = blocks.iter().map(|b| b.0).collect();
        for cid in proof.into_iter().filter(|c| !have.contains(c)) {
            blocks.push((cid, self.store.get(&cid)?.ok_or(RepoError::MissingBlock(cid))?));
        }
        Ok(blocks)
    }

    /// Writes the whole repository as a CAR: the commit, then the tree depth-first with each
    /// node's records right after it (the streamable order).
    ///
    /// Reads are batched without giving up that order or constant memory: a node's child nodes
    /// are fetched together when the node is expanded (at most 256 levels × one node's
    /// children are held), and records are fetched [`EXPORT_WINDOW`] at a time with one
    /// multi-get, then written in their place.
    pub fn export_car<W: std::io::Write>(&self, out: W) -> Result<W, RepoError> {
        let mut car = CarWriter::new(out, &[self.head])?;
        let commit_bytes = self.store.get(&self.head)?.ok_or(RepoError::MissingBlock(self.head))?;
        car.write_block(&self.head, &commit_bytes)?;
        let max_entries = ues_ipld::MstLimits::default().max_entries;
        let root = self.store.get(&self.commit.data)?.ok_or(RepoError::MissingBlock(self.commit.data))?;
        // Work left, top of the stack first: a node (its bytes already fetched) or a record.
        let mut stack: Vec<(Item, usize)> = vec![(Item::Node(self.commit.data, root), 0)];
        // What is decided but not yet written, in output order: nodes with their bytes, records
        // by CID until their window is fetched.
        let mut plan: Vec<Item> = Vec::new();
        let mut pending_records = 0usize;
        while let Some((item, depth)) = stack.pop() {
            match item {
                Item::Record(cid) => {
                    plan.push(Item::Record(cid));
                    pending_records += 1;
                    if pending_records >= EXPORT_WINDOW {
                        self.flush_plan(&mut car, &mut plan)?;
                        pending_records = 0;
                    }
                }
                Item::Node(cid, bytes) => {
                    if depth > 256 {
                        return Err(MstError::Malformed("tree deeper than 256 layers".into()).into());
                    }
                    let wire = decode_node(&bytes, max_entries)?;
                    let children: Vec<Cid> =
                        wire.left.iter().chain(wire.entries.iter().filter_map(|e| e.2.as_ref())).copied().collect();
                    let mut fetched = self
                        .store
                        .get_many(&children)?
                        .into_iter()
                        .zip(&children)
                        .map(|(b, c)| b.ok_or(RepoError::MissingBlock(*c)));
                    // Children in output order: left, then each entry's record and right subtree.
                    let mut next: Vec<(Item, usize)> = Vec::with_capacity(children.len() + wire.entries.len());
                    if let Some(left) = wire.left {
                        next.push((Item::Node(left, fetched.next().expect("fetched")?), depth + 1));
                    }
                    for (_, value, right) in &wire.entries {
                        next.push((Item::Record(*value), depth));
                        if let Some(r) = right {
                            next.push((Item::Node(*r, fetched.next().expect("fetched")?), depth + 1));
                        }
                    }
                    plan.push(Item::Node(cid, bytes));
                    stack.extend(next.into_iter().rev());
                }
            }
        }
        self.flush_plan(&mut car, &mut plan)?;
        Ok(car.finish()?)
    }

    /// The CIDs of every MST node of the current tree (not the records).
    pub fn node_cids(&self) -> Result<Vec<Cid>, RepoError> {
        let max_entries = ues_ipld::MstLimits::default().max_entries;
        let mut out = Vec::new();
        let mut stack = vec![(self.commit.data, 0usize)];
        while let Some((cid, depth)) = stack.pop() {
            if depth > 256 {
                return Err(MstError::Malformed("tree deeper than 256 layers".into()).into());
            }
            let bytes = self.store.get(&cid)?.ok_or(RepoError::MissingBlock(cid))?;
            let wire = decode_node(&bytes, max_entries)?;
            stack.extend(
                wire.left.iter().chain(wire.entries.iter().filter_map(|e| e.2.as_ref())).map(|c| (*c, depth + 1)),
            );
            out.push(cid);
        }
        Ok(out)
    }

    /// Fetches the records of `plan` in one multi-get and writes everything in order.
    fn flush_plan<W: std::io::Write>(&self, car: &mut CarWriter<W>, plan: &mut Vec<Item>) -> Result<(), RepoError> {
        let records: Vec<Cid> =
            plan.iter().filter_map(|i| if let Item::Record(c) = i { Some(*c) } else { None }).collect();
        let mut fetched = self.store.get_many(&records)?.into_iter();
        for item in plan.drain(..) {
            match item {
                Item::Node(cid, bytes) => car.write_block(&cid, &bytes)?,
                Item::Record(cid) => {
                    let bytes = fetched.next().flatten().ok_or(RepoError::MissingBlock(cid))?;
                    car.write_block(&cid, &bytes)?;
                }
            }
        }
        Ok(())
    }
}

/// Records fetched per multi-get during a CAR export.
pub const EXPORT_WINDOW: usize = 1024;

/// One step of a CAR export.
enum Item {
    /// An MST node and its bytes.
    Node(Cid, Vec<u8>),
    /// A record, by CID.
    Record(Cid),
}

/// Imports a repository CAR for `did`, checked end to end before anything is stored: every
/// block against its CID, the commit's signature against `key`, the DID, the tree's structure,
/// and that every record is present. Then all blocks go into `store` in one atomic batch.
pub fn import_car<B: Blockstore>(store: B, car: impl Read, did: &Did, key: &PublicKey) -> Result<Repo<B>, RepoError> {
    let staging = MemoryBlockstore::new();
    let mut reader = CarReader::new(car)?;
    let root = *reader.roots().first().ok_or(CarError::Header("no root".into()))?;
    for block in &mut reader {
        let (cid, bytes) = block?;
        staging.put(&cid, &bytes)?;
    }
    let commit = Commit::decode(&staging.get(&root)?.ok_or(RepoError::MissingBlock(root))?)?;
    if &commit.did != did {
        return Err(RepoError::WrongDid { expected: did.to_string(), found: commit.did.to_string() });
    }
    commit.verify(key)?;
    let stats = verify_tree(&staging, commit.data)?;
    if stats.missing_records > 0 {
        return Err(RepoError::MissingRecords(stats.missing_records));
    }
    let blocks: Vec<(Cid, Vec<u8>)> = staging.iter().collect::<Result<_, _>>()?;
    store.put_many(&blocks)?;
    Repo::load(store, root)
}
