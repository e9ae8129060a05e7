//! Many repositories on one node: account records and repository heads in SQLite, blocks in the
//! blockstore, and the collection index (records by author, collection, time; backlinks; full
//! text with FTS5) kept in the same SQLite transaction that moves a repository's head.
//!
//! Crash consistency: a commit's blocks are written first (one atomic batch), then one SQLite
//! transaction moves the head and updates the index. A crash in between leaves unreferenced
//! blocks and the previous head: the repository and its index always agree.
//!
//! Power-loss durability with one sync per commit: when the blockstore syncs its writes, a
//! commit's blocks go to it unsynced and the commit's SQLite transaction (the one synced write
//! of the commit) also carries them in `block_journal`. [`Accounts::checkpoint`] syncs the
//! blockstore and drops the journal rows it covers; opening the store puts back whatever the
//! journal still holds, so blocks a power cut took from the blockstore return before anything
//! reads them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use cid::Cid;
use parking_lot::Mutex;
use ues_ipld::storage::rusqlite::{self, OptionalExtension, params};
use ues_ipld::storage::{Blockstore, Kv, Migration, Sqlite};
use ues_ipld::{Ipld, json as atjson};

use crate::crypto::{KeyType, Keypair};
use crate::lexicon::{IndexSpec, IndexValue};
use crate::repo::{Action, CommitResult, Repo, RepoError, Write};
use crate::seal::{SealError, SealKey};
use crate::syntax::{Did, Handle, Nsid, RecordKey, TidGenerator};

/// SQLite schema of this module.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        id: "repo/0001_accounts_and_index",
        sql: "
CREATE TABLE account (
    did TEXT PRIMARY KEY,
    handle TEXT NOT NULL UNIQUE COLLATE NOCASE,
    signing_key_type TEXT NOT NULL,
    signing_key BLOB NOT NULL,
    head TEXT NOT NULL,
    rev TEXT NOT NULL,
    status TEXT NOT NULL DEFAULT 'active',
    created_at INTEGER NOT NULL DEFAULT (unixepoch('subsec') * 1000)
);
CREATE TABLE record (
    did TEXT NOT NULL,
    collection TEXT NOT NULL,
    rkey TEXT NOT NULL,
    cid TEXT NOT NULL,
    created_at TEXT,
    indexed_at INTEGER NOT NULL,
    rev TEXT NOT NULL,
    PRIMARY KEY (did, collection, rkey)
) WITHOUT ROWID;
CREATE INDEX record_by_collection_time ON record (collection, indexed_at);
CREATE INDEX record_by_author_time ON record (did, indexed_at);
CREATE TABLE backlink (
    src_did TEXT NOT NULL, src_collection TEXT NOT NULL, src_rkey TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (target, src_did, src_collection, src_rkey)
) WITHOUT ROWID;
CREATE INDEX backlink_by_src ON backlink (src_did, src_collection, src_rkey);
CREATE TABLE record_text (id INTEGER PRIMARY KEY, did TEXT NOT NULL, collection TEXT NOT NULL, rkey TEXT NOT NULL,
    UNIQUE (did, collection, rkey));
CREATE VIRTUAL TABLE record_fts USING fts5(body, tokenize = 'unicode61 remove_diacritics 2');
",
    },
    Migration {
        id: "repo/0002_blobs",
        sql: "
CREATE TABLE blob (
    did TEXT NOT NULL,
    cid TEXT NOT NULL,
    mime_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (did, cid)
) WITHOUT ROWID;
CREATE TABLE record_blob (
    did TEXT NOT NULL,
    path TEXT NOT NULL,
    cid TEXT NOT NULL,
    PRIMARY KEY (did, path, cid)
) WITHOUT ROWID;
CREATE INDEX record_blob_by_cid ON record_blob (did, cid);
",
    },
    Migration {
        id: "repo/0003_repo_blocks",
        sql: "
CREATE TABLE repo_block (
    did TEXT NOT NULL,
    cid TEXT NOT NULL,
    rev TEXT NOT NULL,
    PRIMARY KEY (did, cid)
) WITHOUT ROWID;
CREATE INDEX repo_block_by_rev ON repo_block (did, rev);
",
    },
    Migration {
        id: "repo/0004_lexicon_indexes",
        sql: "
CREATE TABLE record_index (
    collection TEXT NOT NULL,
    name TEXT NOT NULL,
    value NOT NULL,
    did TEXT NOT NULL,
    rkey TEXT NOT NULL,
    PRIMARY KEY (collection, name, value, did, rkey)
) WITHOUT ROWID;
CREATE INDEX record_index_by_record ON record_index (did, collection, rkey);
CREATE TABLE record_index_spec (collection TEXT PRIMARY KEY, specs TEXT NOT NULL);
",
    },
    Migration {
        id: "repo/0005_fts_queue",
        sql: "
CREATE TABLE fts_queue (
    id INTEGER PRIMARY KEY,
    did TEXT NOT NULL, collection TEXT NOT NULL, rkey TEXT NOT NULL, cid TEXT NOT NULL,
    body TEXT NOT NULL
);
",
    },
    // Which blocks each commit introduced, one appended row per commit (what `getRepo?since=`
    // exports); which blocks belong to which repository lives in the key-value store (see
    // `Accounts::open_with`). `repo_block` kept one random-key row per block: most of a
    // commit's SQLite page writes.
    Migration {
        id: "repo/0006_repo_commit",
        sql: "
CREATE TABLE repo_commit (did TEXT NOT NULL, rev TEXT NOT NULL, cids TEXT NOT NULL, PRIMARY KEY (did, rev)) WITHOUT ROWID;
INSERT INTO repo_commit SELECT did, rev, group_concat(cid, ' ') FROM repo_block GROUP BY did, rev;
",
    },
    // Signing keys sealed under the node key (`signing_key` then holds the sealed bytes; rows
    // from before are sealed when the store is opened), and the node's own secrets, sealed.
    Migration {
        id: "repo/0007_sealed_keys",
        sql: "
ALTER TABLE account ADD COLUMN signing_key_sealed INTEGER NOT NULL DEFAULT 0;
CREATE TABLE node_secret (name TEXT PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID;
",
    },
    // The blocks of commits whose blockstore writes are not yet synced (a CAR per commit), and
    // whose ownership entries they also restore.
    Migration {
        id: "repo/0008_block_journal",
        sql: "
CREATE TABLE block_journal (id INTEGER PRIMARY KEY, did TEXT NOT NULL, rev TEXT NOT NULL, blocks BLOB NOT NULL);
",
    },
];

/// Journal rows past which a commit checkpoints at once (a node checkpoints every second).
const JOURNAL_MAX_ROWS: u64 = 20_000;

/// Journal rows replayed per step when the store is opened.
const REPLAY_CHUNK: i64 = 500;

/// `node_secret` row of the node's did:plc rotation key (secp256k1, sealed).
const ROTATION_KEY_ROW: &str = "plc-rotation-key";

/// What a sealed account signing key is bound to: the account and the curve.
fn account_key_context(did: &str, key_type: &str) -> Vec<u8> {
    format!("ues/account-signing-key\0{did}\0{key_type}").into_bytes()
}

/// What the sealed rotation key is bound to.
const ROTATION_KEY_CONTEXT: &[u8] = b"ues/plc-rotation-key";

/// The stored name of a curve.
fn key_type_name(kind: KeyType) -> &'static str {
    match kind {
        KeyType::K256 => "k256",
        KeyType::P256 => "p256",
    }
}

/// Account rows sealed per transaction when plaintext keys are migrated.
const SEAL_BATCH: i64 = 1_000;

/// An error for each member of a group that failed as a whole (errors are not `Clone`): a
/// missing account stays `NotFound`, anything else becomes `CommitFailed` with its message.
fn same_error(e: &AccountError) -> AccountError {
    match e {
        AccountError::NotFound(d) => AccountError::NotFound(d.clone()),
        other => AccountError::CommitFailed(other.to_string()),
    }
}

/// Most write batches committed in one SQLite transaction by a group commit.
pub const MAX_GROUP: usize = 64;

/// A write batch waiting in its repository's queue, and where its answer goes.
struct Pending {
    writes: Vec<Write>,
    swap_commit: Option<Cid>,
    /// Refuse records that reference blobs this node does not hold (off for replicated writes,
    /// whose blobs live where they were uploaded).
    check_blobs: bool,
    /// Who asked, and which of `writes` are theirs (several when requests were merged).
    replies: Vec<(Reply, std::ops::Range<usize>)>,
}

type Reply = std::sync::mpsc::Sender<Result<CommitResult, AccountError>>;

/// Groups one committer commits at most per turn.
const MAX_ROUNDS: usize = 64;

/// How long a write waits at most for its group to be committed.
const WRITE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

/// How long a committer waits at most for writes on their way to join its group.
const GROUP_WAIT: std::time::Duration = std::time::Duration::from_micros(150);

thread_local! {
    /// How many further groups a committer on this thread takes once its own write is answered.
    static CARRY: std::cell::Cell<usize> = const { std::cell::Cell::new(1) };
}

/// Runs `f` with this thread's writes committing no other writer's group after their own: for
/// a write run on a latency-sensitive thread (an async worker), which should return as soon as
/// its own commit is stored.
pub fn committing_own_only<T>(f: impl FnOnce() -> T) -> T {
    let before = CARRY.replace(0);
    let out = f();
    CARRY.set(before);
    out
}

/// Most writes one merged commit carries.
const MAX_MERGED_WRITES: usize = 1_000;

impl Pending {
    /// Answers every request with `e` (a request alone gets `e` itself, its type intact).
    fn fail(self, e: AccountError) {
        if self.replies.len() == 1 {
            if let Some((reply, _)) = self.replies.into_iter().next() {
                let _ = reply.send(Err(e));
            }
            return;
        }
        for (reply, _) in self.replies {
            let _ = reply.send(Err(same_error(&e)));
        }
    }

    /// Answers every request of this (possibly merged) commit with its own operations.
    fn succeed(self, res: CommitResult) {
        let Pending { replies, .. } = self;
        if replies.len() == 1 {
            if let Some((reply, _)) = replies.into_iter().next() {
                let _ = reply.send(Ok(res));
            }
            return;
        }
        for (reply, range) in replies {
            let mut own = res.clone();
            own.ops = res.ops.get(range).map(<[_]>::to_vec).unwrap_or_default();
            let _ = reply.send(Ok(own));
        }
    }

    /// The requests of a merged commit, each on its own again.
    fn split(self) -> Vec<Pending> {
        let Pending { writes, swap_commit, check_blobs, replies } = self;
        replies
            .into_iter()
            .map(|(reply, range)| Pending {
                writes: writes.get(range.clone()).map(<[_]>::to_vec).unwrap_or_default(),
                swap_commit,
                check_blobs,
                replies: vec![(reply, 0..range.len())],
            })
            .collect()
    }
}

/// Record paths a batch of writes touches.
fn paths(writes: &[Write]) -> impl Iterator<Item = (&Nsid, &RecordKey)> {
    writes.iter().map(|w| match w {
        Write::Create { collection, rkey, .. }
        | Write::Update { collection, rkey, .. }
        | Write::Delete { collection, rkey, .. } => (collection, rkey),
    })
}

/// Merges consecutive requests into one commit where that changes nothing a client can tell
/// apart from separate commits: none asks for a commit swap, they agree on blob checks and
/// touch different records. Each request is still answered with its own operations; if a
/// merged commit is refused, its requests are retried one by one (so one bad request never
/// fails the others).
fn merge(batch: Vec<Pending>) -> Vec<Pending> {
    let mut out: Vec<Pending> = Vec::with_capacity(batch.len());
    let mut touched: std::collections::HashSet<(Nsid, RecordKey)> = std::collections::HashSet::new();
    for p in batch {
        let mine: Vec<(Nsid, RecordKey)> = paths(&p.writes).map(|(c, k)| (c.clone(), k.clone())).collect();
        let joinable = out.last().is_some_and(|last| {
            last.swap_commit.is_none()
                && p.swap_commit.is_none()
                && last.check_blobs == p.check_blobs
                && last.writes.len() + p.writes.len() <= MAX_MERGED_WRITES
                && mine.iter().all(|path| !touched.contains(path))
        });
        if !joinable {
            touched.clear();
        }
        if joinable && let Some(last) = out.last_mut() {
            let start = last.writes.len();
            let (reply, _) = p.replies.into_iter().next().expect("one reply per request");
            last.writes.extend(p.writes);
            last.replies.push((reply, start..last.writes.len()));
        } else {
            out.push(p);
        }
        touched.extend(mine);
    }
    out
}

/// Record texts moved into the full-text index per transaction by [`Accounts::index_text`].
pub const TEXT_BATCH: usize = 1_000;

/// How many of the most recent matches a search ranks.
pub const SEARCH_WINDOW: i64 = 1_000;

/// An account hosted here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// Its DID.
    pub did: Did,
    /// Its handle.
    pub handle: Handle,
    /// Head commit.
    pub head: Cid,
    /// Head revision.
    pub rev: String,
    /// `active`, `deactivated`, `takendown`, `deleted`.
    pub status: String,
}

/// A row of the collection index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexedRecord {
    /// Author.
    pub did: String,
    /// Collection.
    pub collection: String,
    /// Record key.
    pub rkey: String,
    /// Record CID.
    pub cid: String,
}

/// A position in [`Accounts::records_by_time`]: `indexed_at/did/collection/rkey` as text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimeCursor {
    /// When the record was indexed (Unix milliseconds).
    pub indexed_at: i64,
    /// Author.
    pub did: String,
    /// Collection.
    pub collection: String,
    /// Record key.
    pub rkey: String,
}

impl std::fmt::Display for TimeCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}/{}", self.indexed_at, self.did, self.collection, self.rkey)
    }
}

impl std::str::FromStr for TimeCursor {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let mut it = s.splitn(4, '/');
        let (Some(t), Some(did), Some(collection), Some(rkey)) = (it.next(), it.next(), it.next(), it.next()) else {
            return Err(());
        };
        Ok(Self {
            indexed_at: t.parse().map_err(drop)?,
            did: did.into(),
            collection: collection.into(),
            rkey: rkey.into(),
        })
    }
}

/// What a repository holds (see [`Accounts::holdings`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Holdings {
    /// Records indexed.
    pub records: u64,
    /// Distinct blobs its records reference.
    pub referenced_blobs: u64,
    /// Blobs stored for it.
    pub stored_blobs: u64,
}

/// Errors of the account store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccountError {
    /// No such account.
    #[error("account {0} not found")]
    NotFound(String),
    /// The handle or DID is taken.
    #[error("{0} is already taken")]
    Taken(String),
    /// A record references a blob this account has not uploaded.
    #[error("blob {0} not found: upload it before referencing it")]
    BlobNotFound(String),
    /// A group commit could not be stored (the SQLite transaction failed), or the account's key
    /// or head could not be read; the message says which. Nothing of it was committed.
    #[error("commit failed: {0}")]
    CommitFailed(String),
    /// The repository refused the operation (boxed: repository errors carry CIDs).
    #[error(transparent)]
    Repo(Box<RepoError>),
    /// SQLite failed.
    #[error(transparent)]
    Storage(#[from] ues_ipld::storage::Error),
    /// A stored key did not open with the node key (the wrong node key or passphrase, or
    /// altered rows). The key itself is never part of the error.
    #[error("account keys: {0}")]
    Seal(#[from] SealError),
}

impl From<RepoError> for AccountError {
    fn from(e: RepoError) -> Self {
        AccountError::Repo(Box::new(e))
    }
}

impl From<rusqlite::Error> for AccountError {
    fn from(e: rusqlite::Error) -> Self {
        AccountError::Storage(e.into())
    }
}

/// What a commit hook is told, inside the SQLite transaction that moves the head.
#[derive(Debug)]
pub enum RepoEvent<'a> {
    /// A new account with its first (empty) commit.
    Created {
        /// The account's DID.
        did: &'a Did,
        /// Its handle.
        handle: &'a Handle,
        /// The first commit.
        commit: &'a CommitResult,
    },
    /// The account's handle changed.
    Identity {
        /// The account.
        did: &'a Did,
        /// The new handle.
        handle: &'a Handle,
    },
    /// The account's hosting status changed (`active`, `deactivated`, `takendown`, ...).
    Status {
        /// The account.
        did: &'a Did,
        /// The new status.
        status: &'a str,
    },
    /// The repository was replaced wholesale (an import): consumers should resync.
    Synced {
        /// The account.
        did: &'a Did,
        /// The new head commit.
        head: &'a Cid,
        /// Its revision.
        rev: &'a str,
        /// The head commit's block.
        commit_block: &'a [u8],
    },
    /// A commit to an existing repository.
    Committed {
        /// The repository.
        did: &'a Did,
        /// The commit.
        commit: &'a CommitResult,
        /// The blocks a firehose event carries (new blocks plus covering proofs).
        blocks: &'a [(Cid, Vec<u8>)],
    },
}

/// A hook run inside the transaction of every commit, so that what it writes (a sequenced
/// firehose event) commits or rolls back with the head.
pub type CommitHook = Box<dyn Fn(&rusqlite::Transaction<'_>, &RepoEvent<'_>) -> rusqlite::Result<()> + Send + Sync>;

/// Accounts and repositories of one node.
pub struct Accounts<B> {
    blocks: B,
    db: Arc<Sqlite>,
    tids: TidGenerator,
    /// One writer per repository at a time: commits to one repo are serialised.
    locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
    /// Write batches waiting for their repository's lock (group commit).
    queues: Mutex<HashMap<String, Arc<Mutex<std::collections::VecDeque<Pending>>>>>,
    /// Parsed signing keys (parsing derives the public point: too slow to repeat per commit).
    keys: Mutex<HashMap<String, Keypair>>,
    /// Seals signing keys at rest.
    seal: SealKey,
    /// The node's did:plc rotation key: listed in the DIDs this node creates, never handed to
    /// another device.
    rotation: Keypair,
    /// Run inside every commit's transaction.
    hook: Option<CommitHook>,
    /// Secondary indexes record Lexicons declare, by collection.
    indexes: BTreeMap<String, Vec<IndexSpec>>,
    /// Block ownership: `o/<did>/<cid bytes>` -> revision, for every block of every repository.
    owners: Arc<dyn Kv>,
    /// Writes on their way (counted by the caller from the request's arrival): a committer
    /// waits briefly for them to join its group (see [`Accounts::expect_writers_from`]).
    on_the_way: Option<Arc<std::sync::atomic::AtomicUsize>>,
    /// Accounts by DID as last read or committed (every request and every commit looks its
    /// account up), and a generation every change of an account row bumps, so that a read
    /// that raced a change does not cache what it read. Bounded: cleared past [`MAX_CACHED`].
    cached: Mutex<(u64, HashMap<String, Account>)>,
    /// Commits carry their blocks in `block_journal` (the blockstore syncs its writes, and
    /// commits write to it unsynced instead).
    journal: bool,
    /// Journal rows written since the last checkpoint.
    journaled: std::sync::atomic::AtomicU64,
    /// One checkpoint at a time.
    checkpointing: Mutex<()>,
}

/// Accounts kept in [`Accounts`]' cache at most.
const MAX_CACHED: usize = 10_000;

/// Key of a block's ownership entry.
fn owner_key(did: &str, cid: &Cid) -> Vec<u8> {
    let mut k = format!("o/{did}/").into_bytes();
    k.extend_from_slice(&cid.to_bytes());
    k
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Concatenated string values of a record, for full-text search (`$type` and links excluded).
fn record_text(v: &Ipld, out: &mut String) {
    match v {
        Ipld::String(s) => {
            out.push_str(s);
            out.push('\n');
        }
        Ipld::List(items) => items.iter().for_each(|i| record_text(i, out)),
        Ipld::Map(m) => {
            m.iter().filter(|(k, _)| !k.starts_with('$') && *k != "createdAt").for_each(|(_, v)| record_text(v, out))
        }
        _ => {}
    }
}

/// Blobs a record references (typed or legacy form), anywhere inside it.
pub fn record_blobs(v: &Ipld, out: &mut Vec<atjson::BlobRef>) {
    if let Some(b) = atjson::BlobRef::from_ipld(v) {
        out.push(b);
        return;
    }
    match v {
        Ipld::List(items) => items.iter().for_each(|i| record_blobs(i, out)),
        Ipld::Map(m) => m.values().for_each(|v| record_blobs(v, out)),
        _ => {}
    }
}

/// AT-URIs and CIDs a record references (`uri` strings that are AT-URIs, `subject` DIDs, links).
fn record_refs(v: &Ipld, out: &mut Vec<String>) {
    match v {
        Ipld::String(s) if s.starts_with("at://") || s.starts_with("did:") => out.push(s.clone()),
        Ipld::List(items) => items.iter().for_each(|i| record_refs(i, out)),
        Ipld::Map(m) => m.values().for_each(|v| record_refs(v, out)),
        _ => {}
    }
}

impl<B: Blockstore> Accounts<B> {
    /// Opens the store (applying its migrations) with block ownership kept in memory and keys
    /// sealed under a node key that lives only as long as this process: for tests and tools. A
    /// node uses [`Accounts::open_with`], its RocksDB key-value store and its node key.
    pub fn open(blocks: B, db: Arc<Sqlite>, clock_id: u16) -> Result<Self, AccountError> {
        static PROCESS_KEY: std::sync::OnceLock<SealKey> = std::sync::OnceLock::new();
        let seal = PROCESS_KEY.get_or_init(SealKey::generate).clone();
        Self::open_with(blocks, Arc::new(ues_ipld::storage::MemoryKv::new()), db, clock_id, seal)
    }

    /// Opens the store (applying its migrations). `owners` records which repository each block
    /// belongs to (`getBlocks` serves only a repository's own blocks): a log-structured store
    /// absorbs those random-key writes far more cheaply than a B-tree. `clock_id` tells this
    /// node's TIDs apart. `seal` is the node key that seals signing keys at rest: keys stored
    /// in plaintext by an older node are sealed now, and a node key that does not open the
    /// stored ones is refused ([`AccountError::Seal`]).
    pub fn open_with(
        blocks: B,
        owners: Arc<dyn Kv>,
        db: Arc<Sqlite>,
        clock_id: u16,
        seal: SealKey,
    ) -> Result<Self, AccountError> {
        db.migrate(MIGRATIONS)?;
        let rotation = rotation_key(&db, &seal)?;
        seal_plaintext_keys(&db, &seal)?;
        // Data directories from before the ownership store: move `repo_block` rows over once.
        // In chunks of 10,000 rows, each deleted once its entries are written: memory stays
        // bounded and an interrupted move resumes at the next open.
        for _ in 0..1_000_000 {
            let chunk: Vec<(String, String, String)> = db.read(|c| {
                let mut st = c.prepare_cached("SELECT did, cid, rev FROM repo_block LIMIT 10000")?;
                let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()
            })?;
            if chunk.is_empty() {
                break;
            }
            let entries: Vec<(Vec<u8>, Vec<u8>)> = chunk
                .iter()
                .filter_map(|(d, c, r)| c.parse::<Cid>().ok().map(|cid| (owner_key(d, &cid), r.clone().into_bytes())))
                .collect();
            owners.put_many(&entries)?;
            db.write(|tx| {
                let mut st = tx.prepare_cached("DELETE FROM repo_block WHERE did = ?1 AND cid = ?2")?;
                for (d, c, _) in &chunk {
                    st.execute(params![d, c])?;
                }
                Ok::<_, AccountError>(())
            })?;
        }
        let journal = blocks.syncs_writes();
        let replayed = replay_journal(&blocks, owners.as_ref(), &db)?;
        if replayed > 0 {
            tracing::info!(commits = replayed, "blocks of commits since the last checkpoint put back from the journal");
        }
        Ok(Self {
            journal,
            journaled: std::sync::atomic::AtomicU64::new(0),
            checkpointing: Mutex::new(()),
            owners,
            blocks,
            db,
            tids: TidGenerator::new(clock_id),
            locks: Mutex::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            keys: Mutex::new(HashMap::new()),
            seal,
            rotation,
            hook: None,
            indexes: BTreeMap::new(),
            on_the_way: None,
            cached: Mutex::new((0, HashMap::new())),
        })
    }

    /// Records that `blocks` belong to `did` (introduced by revision `rev`), in the ownership
    /// store and, inside the commit's transaction, in `repo_commit`. Called before the
    /// transaction: a failed commit leaves ownership entries for blocks that are stored anyway.
    fn own(&self, did: &str, rev: &str, cids: impl Iterator<Item = Cid>) -> Result<String, AccountError> {
        let cids: Vec<Cid> = cids.collect();
        for chunk in cids.chunks(10_000) {
            let entries: Vec<(Vec<u8>, Vec<u8>)> =
                chunk.iter().map(|c| (owner_key(did, c), rev.as_bytes().to_vec())).collect();
            self.owners.put_many(&entries)?;
        }
        Ok(cids.iter().map(Cid::to_string).collect::<Vec<_>>().join(" "))
    }

    /// Whether `cid` is a block of `did`'s repository (current or past).
    pub fn owns_block(&self, did: &Did, cid: &Cid) -> Result<bool, AccountError> {
        Ok(self.owners.get(&owner_key(did.as_str(), cid))?.is_some())
    }

    /// How many blocks commits to `did`'s repository introduced.
    pub fn block_count(&self, did: &Did) -> Result<u64, AccountError> {
        let n: i64 = self.db.read(|c| {
            c.query_row(
                "SELECT coalesce(sum(length(cids) - length(replace(cids, ' ', '')) + 1), 0) FROM repo_commit WHERE did = ?1",
                [did.as_str()],
                |r| r.get(0),
            )
        })?;
        Ok(n as u64)
    }

    /// Maintains the secondary indexes record Lexicons declare ([`Lexicons::indexes`]). A
    /// collection whose declared indexes differ from the ones its stored rows were built with
    /// (a Lexicon gained, lost or changed an index since the last start) is rebuilt from its
    /// records now. Returns the collections rebuilt.
    ///
    /// [`Lexicons::indexes`]: crate::lexicon::Lexicons::indexes
    pub fn set_indexes(&mut self, indexes: BTreeMap<String, Vec<IndexSpec>>) -> Result<Vec<String>, AccountError> {
        let fingerprint = |specs: &[IndexSpec]| -> String {
            specs.iter().map(|s| format!("{}={}", s.name, s.path)).collect::<Vec<_>>().join(";")
        };
        let stored: BTreeMap<String, String> = self.db.read(|c| {
            let mut st = c.prepare_cached("SELECT collection, specs FROM record_index_spec")?;
            let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect::<rusqlite::Result<BTreeMap<_, _>>>()
        })?;
        self.indexes = indexes;
        let mut rebuilt = Vec::new();
        let collections: std::collections::BTreeSet<String> =
            stored.keys().chain(self.indexes.keys()).cloned().collect();
        for collection in collections {
            let now = self.indexes.get(&collection).map(|s| fingerprint(s)).unwrap_or_default();
            if stored.get(&collection).map(String::as_str).unwrap_or_default() != now {
                self.reindex(&collection)?;
                self.db.write(|tx| {
                    tx.execute(
                        "INSERT OR REPLACE INTO record_index_spec (collection, specs) VALUES (?1, ?2)",
                        params![collection, now],
                    )?;
                    Ok::<_, AccountError>(())
                })?;
                rebuilt.push(collection);
            }
        }
        Ok(rebuilt)
    }

    /// Rebuilds the declared secondary indexes of `collection` from the stored records (after a
    /// Lexicon gained an index). Returns how many records were read.
    pub fn reindex(&self, collection: &str) -> Result<usize, AccountError> {
        let rows: Vec<(String, String, String)> = self.db.read(|c| {
            let mut st = c.prepare_cached("SELECT did, rkey, cid FROM record WHERE collection = ?1")?;
            let rows = st.query_map([collection], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let specs = self.indexes.get(collection).map(Vec::as_slice).unwrap_or_default();
        self.db.write(|tx| {
            tx.execute("DELETE FROM record_index WHERE collection = ?1", [collection])?;
            Ok::<_, AccountError>(())
        })?;
        // In transactions of 1,000 records: memory stays bounded whatever the collection's size
        // (the index is derived data; an interrupted rebuild is redone at the next start).
        for chunk in rows.chunks(1_000) {
            let mut values = Vec::with_capacity(chunk.len());
            for (did, rkey, cid) in chunk {
                let bad = |reason: String| RepoError::InvalidRecord { path: format!("{collection}/{rkey}"), reason };
                let cid: Cid = cid.parse().map_err(|_| bad("stored CID does not parse".into()))?;
                let bytes = self.blocks.get(&cid)?.ok_or(RepoError::MissingBlock(cid))?;
                values.push((did, rkey, ues_ipld::dagcbor::decode_atproto(&bytes).map_err(|e| bad(e.to_string()))?));
            }
            self.db.write(|tx| {
                for (did, rkey, value) in &values {
                    index_values(tx, specs, did, collection, rkey, value)?;
                }
                Ok::<_, AccountError>(())
            })?;
        }
        Ok(rows.len())
    }

    /// Lets commits see how many writes are on their way: `count` is raised when a write
    /// request arrives (before it is parsed and validated) and lowered when it is queued here
    /// (or refused before). A committer waits up to [`GROUP_WAIT`] for those writes to join its
    /// group: under concurrent writes, requests arrive in waves (their
    /// clients were all answered by one commit), and without the wait the first of a wave
    /// commits alone and the rest make a second commit (measured with 8 writers: 2.6 writes per
    /// commit, where one commit per wave is the aim).
    pub fn expect_writers_from(&mut self, count: Arc<std::sync::atomic::AtomicUsize>) {
        self.on_the_way = Some(count);
    }

    /// Until no write is on its way or [`GROUP_WAIT`] has passed.
    fn gather(&self) {
        let Some(count) = &self.on_the_way else { return };
        let started = std::time::Instant::now();
        while count.load(std::sync::atomic::Ordering::Acquire) > 0 && started.elapsed() < GROUP_WAIT {
            std::thread::sleep(std::time::Duration::from_micros(20));
        }
    }

    /// Installs the hook run inside every commit's transaction.
    pub fn set_commit_hook(&mut self, hook: CommitHook) {
        self.hook = Some(hook);
    }

    /// A key derived from the node key for one use (`label` names it): what an application
    /// seals at rest with it opens only on a node holding the same node key.
    pub fn derive_seal(&self, label: &[u8]) -> SealKey {
        self.seal.derive(label)
    }

    /// The blockstore.
    pub fn blocks(&self) -> &B {
        &self.blocks
    }

    /// The index database.
    pub fn db(&self) -> &Arc<Sqlite> {
        &self.db
    }

    fn lock(&self, did: &str) -> Arc<Mutex<()>> {
        self.locks.lock().entry(did.to_string()).or_default().clone()
    }

    /// Creates an account with a fresh signing key and an empty repository.
    pub fn create(
        &self,
        did: Did,
        handle: Handle,
        key_type: KeyType,
    ) -> Result<(Account, Keypair, CommitResult), AccountError> {
        self.create_with_key(did, handle, Keypair::generate(key_type))
    }

    /// Creates an account with a given signing key (when the DID was derived from it, as a
    /// did:plc genesis operation's is) and an empty repository.
    pub fn create_with_key(
        &self,
        did: Did,
        handle: Handle,
        key: Keypair,
    ) -> Result<(Account, Keypair, CommitResult), AccountError> {
        let key_type = key.key_type();
        let taken: bool = self.db.read(|c| {
            c.query_row(
                "SELECT EXISTS(SELECT 1 FROM account WHERE did = ?1 OR handle = ?2)",
                params![did.as_str(), handle.as_str()],
                |r| r.get(0),
            )
        })?;
        if taken {
            return Err(AccountError::Taken(format!("{did} / {handle}")));
        }
        let (_, res) = Repo::create(&self.blocks, did.clone(), &key, self.tids.next())?;
        let cids = self.own(did.as_str(), res.commit.rev.as_str(), res.blocks.iter().map(|b| b.0))?;
        let kt = key_type_name(key_type);
        let sealed = self.seal.seal(&account_key_context(did.as_str(), kt), &zeroize::Zeroizing::new(key.to_bytes()));
        self.db.write(|tx| {
            tx.execute(
                "INSERT INTO account (did, handle, signing_key_type, signing_key, signing_key_sealed, head, rev) VALUES (?1, ?2, ?3, ?4, 1, ?5, ?6)",
                params![did.as_str(), handle.normalized().as_str(), kt, sealed, res.cid.to_string(), res.commit.rev.as_str()],
            )
            .map_err(|e| match e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                    AccountError::Taken(format!("{did} / {handle}"))
                }
                e => e.into(),
            })?;
            tx.prepare_cached("INSERT OR REPLACE INTO repo_commit (did, rev, cids) VALUES (?1, ?2, ?3)")?
                .execute(params![did.as_str(), res.commit.rev.as_str(), cids])?;
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Created { did: &did, handle: &handle.normalized(), commit: &res })?;
            }
            Ok::<_, AccountError>(())
        })?;
        let account = self.get(&did)?.expect("just inserted");
        Ok((account, key, res))
    }

    /// Changes an account's handle (refused if another account holds it).
    pub fn update_handle(&self, did: &Did, handle: &Handle) -> Result<(), AccountError> {
        let handle = handle.normalized();
        let _forget = self.forget_after(did);
        self.db.write(|tx| {
            let n = tx
                .execute("UPDATE account SET handle = ?1 WHERE did = ?2", params![handle.as_str(), did.as_str()])
                .map_err(|e| match e {
                    rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::ConstraintViolation => {
                        AccountError::Taken(handle.to_string())
                    }
                    e => e.into(),
                })?;
            if n == 0 {
                return Err(AccountError::NotFound(did.to_string()));
            }
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Identity { did, handle: &handle })?;
            }
            Ok(())
        })
    }

    /// Sets an account's hosting status (`active`, `deactivated`, `takendown`, `deleted`).
    /// Deletes an account: its row, its collection index, blob references and per-block
    /// revisions, in one transaction that also tells the commit hook (`#account` with status
    /// `deleted`). The repository's blocks stay in the content-addressed store, where other
    /// repositories may share them.
    pub fn delete(&self, did: &Did) -> Result<(), AccountError> {
        let lock = self.lock(did.as_str());
        let _guard = lock.lock();
        let forget = self.forget_after(did);
        self.db.write(|tx| {
            let d = did.as_str();
            if tx.execute("DELETE FROM account WHERE did = ?1", [d])? == 0 {
                return Err(AccountError::NotFound(d.to_string()));
            }
            clear_index(tx, d)?;
            tx.execute("DELETE FROM blob WHERE did = ?1", [d])?;
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Status { did, status: "deleted" })?;
            }
            Ok(())
        })?;
        drop(forget);
        // Its blocks no longer belong to any repository served here (bounded passes).
        let prefix = format!("o/{did}/").into_bytes();
        for _ in 0..100_000 {
            let keys = self.owners.scan_prefix(&prefix, 10_000)?;
            if keys.is_empty() {
                break;
            }
            keys.iter().try_for_each(|(k, _)| self.owners.delete(k))?;
        }
        self.keys.lock().remove(did.as_str());
        Ok(())
    }

    /// Sets an account's hosting status (`active`, `deactivated`, `takendown`, `suspended`),
    /// telling the commit hook (`#account`) in the same transaction.
    pub fn set_status(&self, did: &Did, status: &str) -> Result<(), AccountError> {
        let _forget = self.forget_after(did);
        self.db.write(|tx| {
            let n = tx.execute("UPDATE account SET status = ?1 WHERE did = ?2", params![status, did.as_str()])?;
            if n == 0 {
                return Err(AccountError::NotFound(did.to_string()));
            }
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Status { did, status })?;
            }
            Ok(())
        })
    }

    /// An account by DID.
    pub fn get(&self, did: &Did) -> Result<Option<Account>, AccountError> {
        self.find("did", did.as_str())
    }

    /// An account by handle (case-insensitive).
    pub fn by_handle(&self, handle: &Handle) -> Result<Option<Account>, AccountError> {
        self.find("handle", handle.as_str())
    }

    fn find(&self, column: &str, value: &str) -> Result<Option<Account>, AccountError> {
        let by_did = column == "did";
        let generation = {
            let cached = self.cached.lock();
            if by_did && let Some(a) = cached.1.get(value) {
                return Ok(Some(a.clone()));
            }
            cached.0
        };
        let found = self.find_stored(column, value)?;
        if let Some(a) = &found {
            let mut cached = self.cached.lock();
            // Unless an account row changed meanwhile (what was read may be older).
            if cached.0 == generation {
                if cached.1.len() >= MAX_CACHED {
                    cached.1.clear();
                }
                cached.1.insert(a.did.to_string(), a.clone());
            }
        }
        Ok(found)
    }

    /// Drops `did` from the account cache, and keeps reads that raced a change of its row
    /// from caching what they read.
    fn forget(&self, did: &Did) {
        let mut cached = self.cached.lock();
        cached.0 += 1;
        cached.1.remove(did.as_str());
    }

    /// [`Accounts::forget`] when the returned guard is dropped: after a change to the row is
    /// committed (or failed), however the change returns.
    fn forget_after<'a>(&'a self, did: &'a Did) -> impl Drop + 'a {
        struct Forget<'a, B: Blockstore>(&'a Accounts<B>, &'a Did);
        impl<B: Blockstore> Drop for Forget<'_, B> {
            fn drop(&mut self) {
                self.0.forget(self.1);
            }
        }
        Forget(self, did)
    }

    /// After a commit moved `did`'s head (its transaction committed): the cached account
    /// follows, and reads that raced the commit do not cache what they read.
    fn moved(&self, did: &Did, head: Cid, rev: &str) {
        let mut cached = self.cached.lock();
        cached.0 += 1;
        if let Some(a) = cached.1.get_mut(did.as_str()) {
            a.head = head;
            a.rev = rev.to_string();
        }
    }

    fn find_stored(&self, column: &str, value: &str) -> Result<Option<Account>, AccountError> {
        let sql = format!("SELECT did, handle, head, rev, status FROM account WHERE {column} = ?1");
        let row = self.db.read(|c| {
            c.prepare_cached(&sql)?
                .query_row([value], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, String>(4)?,
                    ))
                })
                .optional()
        })?;
        Ok(row.map(|(did, handle, head, rev, status)| Account {
            did: Did::new(did).expect("stored valid"),
            handle: Handle::new(handle).expect("stored valid"),
            head: head.parse().expect("stored valid"),
            rev,
            status,
        }))
    }

    /// Active accounts with at least one record in `collection`, after `cursor` (a DID), in DID
    /// order, at most `limit` (one primary-key probe per account).
    pub fn dids_with_collection(
        &self,
        collection: &str,
        cursor: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, AccountError> {
        Ok(self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT a.did FROM account a WHERE a.status = 'active' AND (?2 IS NULL OR a.did > ?2)
                 AND EXISTS (SELECT 1 FROM record r WHERE r.did = a.did AND r.collection = ?1)
                 ORDER BY a.did LIMIT ?3",
            )?;
            let rows = st.query_map(params![collection, cursor, limit as i64], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()
        })?)
    }

    /// How many accounts are hosted here (whatever their status).
    pub fn count(&self) -> Result<u64, AccountError> {
        let n: i64 = self.db.read(|c| c.query_row("SELECT COUNT(*) FROM account", [], |r| r.get(0)))?;
        Ok(n as u64)
    }

    /// When the account was created here (Unix milliseconds).
    pub fn created_at(&self, did: &Did) -> Result<Option<i64>, AccountError> {
        Ok(self.db.read(|c| {
            c.query_row("SELECT created_at FROM account WHERE did = ?1", [did.as_str()], |r| r.get(0)).optional()
        })?)
    }

    /// Accounts in DID order after `after`, at most `limit`, whatever their status.
    pub fn list(&self, after: Option<&str>, limit: usize) -> Result<Vec<Account>, AccountError> {
        let rows: Vec<(String, String, String, String, String)> = self.db.read(|c| {
            let mut s = c.prepare_cached(
                "SELECT did, handle, head, rev, status FROM account WHERE (?1 IS NULL OR did > ?1) ORDER BY did LIMIT ?2",
            )?;
            let rows = s.query_map(params![after, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })?;
            rows.collect::<Result<Vec<_>, _>>()
        })?;
        Ok(rows
            .into_iter()
            .map(|(did, handle, head, rev, status)| Account {
                did: Did::new(did).expect("stored valid"),
                handle: Handle::new(handle).expect("stored valid"),
                head: head.parse().expect("stored valid"),
                rev,
                status,
            })
            .collect())
    }

    /// The collections the account has records in, in order.
    pub fn collections(&self, did: &Did) -> Result<Vec<String>, AccountError> {
        Ok(self.db.read(|c| {
            let mut s =
                c.prepare_cached("SELECT DISTINCT collection FROM record WHERE did = ?1 ORDER BY collection")?;
            let rows = s.query_map([did.as_str()], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()
        })?)
    }

    /// What the repository holds, for `checkAccountStatus`: records indexed, distinct blobs its
    /// records reference, and blobs stored for it.
    pub fn holdings(&self, did: &Did) -> Result<Holdings, AccountError> {
        let count = |sql: &str| -> Result<u64, AccountError> {
            let n: i64 = self.db.read(|c| c.query_row(sql, [did.as_str()], |r| r.get(0)))?;
            Ok(n as u64)
        };
        Ok(Holdings {
            records: count("SELECT count(*) FROM record WHERE did = ?1")?,
            referenced_blobs: count("SELECT count(DISTINCT cid) FROM record_blob WHERE did = ?1")?,
            stored_blobs: count("SELECT count(*) FROM blob WHERE did = ?1")?,
        })
    }

    /// The account's signing key (opened from its sealed form).
    pub fn signing_key(&self, did: &Did) -> Result<Keypair, AccountError> {
        if let Some(k) = self.keys.lock().get(did.as_str()) {
            return Ok(k.clone());
        }
        let row: Option<(String, Vec<u8>, bool)> = self.db.read(|c| {
            c.query_row(
                "SELECT signing_key_type, signing_key, signing_key_sealed FROM account WHERE did = ?1",
                [did.as_str()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
        })?;
        let (kt, stored, sealed) = row.ok_or_else(|| AccountError::NotFound(did.to_string()))?;
        let kind = if kt == "p256" { KeyType::P256 } else { KeyType::K256 };
        // Rows are sealed when the store opens; one written unsealed since (by hand) is refused.
        if !sealed {
            return Err(SealError::Malformed.into());
        }
        let secret = self.seal.open(&account_key_context(did.as_str(), &kt), &stored)?;
        let key = Keypair::from_bytes(kind, &secret).map_err(|_| SealError::Malformed)?;
        self.keys.lock().insert(did.to_string(), key.clone());
        Ok(key)
    }

    /// Replaces the account's signing key (after a rotation), stored sealed, and signs the
    /// repository's head again with it (same tree, next revision), so that what the DID now
    /// names verifies the head at once. Tells the commit hook `#identity` (resolve the DID
    /// again) then `#sync` (the new head), in the same transaction.
    pub fn set_signing_key(&self, did: &Did, key: &Keypair) -> Result<(), AccountError> {
        let lock = self.lock(did.as_str());
        let _guard = lock.lock();
        let kt = key_type_name(key.key_type());
        let sealed = self.seal.seal(&account_key_context(did.as_str(), kt), &zeroize::Zeroizing::new(key.to_bytes()));
        let _forget = self.forget_after(did);
        let account = self.get(did)?.ok_or_else(|| AccountError::NotFound(did.to_string()))?;
        let data = Repo::load(&self.blocks, account.head)?.commit().data;
        let commit = crate::commit::Commit::sign(did.clone(), data, self.tids.next(), key);
        let (head, commit_block) = commit.to_block();
        self.blocks.put(&head, &commit_block)?;
        let rev = commit.rev.to_string();
        let cids = self.own(did.as_str(), &rev, std::iter::once(head))?;
        self.db.write(|tx| {
            let d = did.as_str();
            tx.execute(
                "UPDATE account SET signing_key_type = ?1, signing_key = ?2, signing_key_sealed = 1, head = ?3, rev = ?4 WHERE did = ?5",
                params![kt, sealed, head.to_string(), rev, d],
            )?;
            tx.prepare_cached("INSERT OR REPLACE INTO repo_commit (did, rev, cids) VALUES (?1, ?2, ?3)")?
                .execute(params![d, rev, cids])?;
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Identity { did, handle: &account.handle })?;
                hook(tx, &RepoEvent::Synced { did, head: &head, rev: &rev, commit_block: &commit_block })?;
            }
            Ok::<_, AccountError>(())
        })?;
        self.keys.lock().insert(did.to_string(), key.clone());
        self.moved(did, head, &rev);
        Ok(())
    }

    /// Tells the commit hook `#identity` for the account (its DID document changed elsewhere,
    /// in its PLC directory): consumers resolve it again.
    pub fn announce_identity(&self, did: &Did) -> Result<(), AccountError> {
        let account = self.get(did)?.ok_or_else(|| AccountError::NotFound(did.to_string()))?;
        self.db.write(|tx| {
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Identity { did, handle: &account.handle })?;
            }
            Ok::<_, AccountError>(())
        })
    }

    /// The node's did:plc rotation key (secp256k1). New DIDs list it as a rotation key and
    /// their signing key only as `verificationMethods.atproto`, so a device that holds an
    /// account's signing key cannot rotate the identity. It never leaves this node.
    pub fn plc_rotation_key(&self) -> &Keypair {
        &self.rotation
    }

    /// The account's repository at its head.
    pub fn repo(&self, did: &Did) -> Result<Repo<&B>, AccountError> {
        self.repo_over(did, &self.blocks)
    }

    /// The account's repository at its head, read and written through `store` (a view of the
    /// blockstore).
    fn repo_over<S: Blockstore>(&self, did: &Did, store: S) -> Result<Repo<S>, AccountError> {
        let account = self.get(did)?.ok_or_else(|| AccountError::NotFound(did.to_string()))?;
        Ok(Repo::load(store, account.head)?)
    }

    /// Applies a batch of writes as one commit, moves the head and updates the index.
    pub fn apply_writes(
        &self,
        did: &Did,
        writes: &[Write],
        swap_commit: Option<Cid>,
    ) -> Result<CommitResult, AccountError> {
        self.enqueue(did, writes, swap_commit, true)
    }

    /// As [`Accounts::apply_writes`], for writes another replica of the account already
    /// accepted (peer-to-peer replication): the blobs their records reference were uploaded
    /// there and need not be held here.
    pub fn apply_replicated(&self, did: &Did, writes: &[Write]) -> Result<CommitResult, AccountError> {
        self.enqueue(did, writes, None, false)
    }

    fn enqueue(
        &self,
        did: &Did,
        writes: &[Write],
        swap_commit: Option<Cid>,
        check_blobs: bool,
    ) -> Result<CommitResult, AccountError> {
        // Group commit: the request joins the repository's queue; whoever holds the repository's
        // lock commits everything queued (each request its own signed commit, in order) in one
        // SQLite transaction, so concurrent writers share one transaction's page writes.
        let (reply, answer) = std::sync::mpsc::channel();
        let queue = self.queue(did.as_str());
        let replies = vec![(reply, 0..writes.len())];
        queue.lock().push_back(Pending { writes: writes.to_vec(), swap_commit, check_blobs, replies });
        let lock = self.lock(did.as_str());
        // Either this request becomes the one that commits (the lock is free), or it waits for
        // its answer on its channel while another writer's group carries it: answers reach all
        // of a group's writers at once, instead of each waking in turn to take the lock.
        let deadline = std::time::Instant::now() + WRITE_WAIT;
        loop {
            if let Some(_guard) = lock.try_lock() {
                let mut mine = answer.try_recv().ok();
                let mut after_mine = 0;
                // Everything queued, ours included (unless an earlier committer took it); once
                // ours is answered, one more group at most, so this writer is not kept long.
                if mine.is_none() && CARRY.get() > 0 {
                    self.gather();
                }
                for _ in 0..MAX_ROUNDS {
                    if mine.is_some() {
                        if after_mine == CARRY.get() {
                            break;
                        }
                        after_mine += 1;
                    }
                    let batch: Vec<Pending> = {
                        let mut q = queue.lock();
                        let n = q.len().min(MAX_GROUP);
                        q.drain(..n).collect()
                    };
                    if batch.is_empty() {
                        break;
                    }
                    self.commit_group(did, batch);
                    if mine.is_none() {
                        mine = answer.try_recv().ok();
                    }
                }
                if let Some(done) = mine {
                    return done;
                }
            }
            match answer.recv_timeout(std::time::Duration::from_micros(200)) {
                Ok(done) => return done,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if std::time::Instant::now() < deadline => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(AccountError::CommitFailed("the queued write was not committed in time".into()));
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(AccountError::CommitFailed("the queued write was not committed".into()));
                }
            }
        }
    }

    fn queue(&self, did: &str) -> Arc<Mutex<std::collections::VecDeque<Pending>>> {
        self.queues.lock().entry(did.to_string()).or_default().clone()
    }

    /// Commits a group of queued write batches to one repository (its lock held): each is
    /// checked and signed as its own commit on top of the previous one; a refused batch is
    /// answered with its error and the others go on; the blocks of each are stored as it is
    /// built, then one SQLite transaction moves the head and indexes all of them.
    fn commit_group(&self, did: &Did, batch: Vec<Pending>) {
        let key = match self.signing_key(did) {
            Ok(k) => k,
            Err(e) => {
                batch.into_iter().for_each(|p| p.fail(same_error(&e)));
                return;
            }
        };
        // Blocks go to the store unsynced: the commit's transaction carries them when the
        // store would sync (see the module's documentation).
        let mut repo = match self.repo_over(did, ues_ipld::storage::Unsynced(&self.blocks)) {
            Ok(r) => r,
            Err(e) => {
                batch.into_iter().for_each(|p| p.fail(same_error(&e)));
                return;
            }
        };
        // Each built commit: its request(s), the result, the firehose event's blocks, its block list.
        type Built = (Pending, CommitResult, Vec<(Cid, Vec<u8>)>, String);
        let mut done: Vec<Built> = Vec::with_capacity(batch.len());
        let mut work: std::collections::VecDeque<Pending> = merge(batch).into();
        while let Some(p) = work.pop_front() {
            let built = (|| {
                if p.check_blobs {
                    self.check_blob_refs(did, &p.writes)?;
                }
                let res = repo.apply_writes(&p.writes, &key, self.tids.next(), p.swap_commit)?;
                let event_blocks = if self.hook.is_some() { repo.commit_event_blocks(&res)? } else { Vec::new() };
                let cids = res.blocks.iter().map(|b| b.0.to_string()).collect::<Vec<_>>().join(" ");
                Ok::<_, AccountError>((res, event_blocks, cids))
            })();
            match built {
                Ok((res, event_blocks, cids)) => done.push((p, res, event_blocks, cids)),
                // A refused merged commit: its requests again, one by one, in order.
                Err(_) if p.replies.len() > 1 => {
                    for (i, one) in p.split().into_iter().enumerate() {
                        work.insert(i, one);
                    }
                }
                Err(e) => p.fail(e),
            }
        }
        if done.is_empty() {
            return;
        }
        // Block ownership for the whole group in one store write.
        let owned: Vec<(Vec<u8>, Vec<u8>)> = done
            .iter()
            .flat_map(|(_, res, _, _)| {
                res.blocks.iter().map(|b| (owner_key(did.as_str(), &b.0), res.commit.rev.as_str().as_bytes().to_vec()))
            })
            .collect();
        let put_owned = |chunk: &[(Vec<u8>, Vec<u8>)]| {
            if self.journal { self.owners.put_many_unsynced(chunk) } else { self.owners.put_many(chunk) }
        };
        if let Err(e) = owned.chunks(10_000).try_for_each(put_owned) {
            let msg = e.to_string();
            done.into_iter().for_each(|(p, _, _, _)| p.fail(AccountError::CommitFailed(msg.clone())));
            return;
        }
        let now = now_ms();
        let written = self.db.write(|tx| {
            for (p, res, event_blocks, cids) in &done {
                self.index_commit(tx, did, &p.writes, res, cids, event_blocks, now)?;
                if self.journal {
                    journal_blocks(tx, did.as_str(), res)?;
                }
            }
            Ok::<_, AccountError>(())
        });
        match written {
            Ok(()) => {
                if let Some((_, last, _, _)) = done.last() {
                    self.moved(did, last.cid, last.commit.rev.as_str());
                }
                let rows = done.len() as u64;
                done.into_iter().for_each(|(p, res, _, _)| p.succeed(res));
                if self.journal
                    && self.journaled.fetch_add(rows, std::sync::atomic::Ordering::Relaxed) + rows > JOURNAL_MAX_ROWS
                    && let Err(e) = self.checkpoint()
                {
                    tracing::warn!("checkpointing the block journal failed (retried later): {e}");
                }
            }
            Err(e) => {
                self.forget(did);
                let msg = e.to_string();
                done.into_iter().for_each(|(p, _, _, _)| p.fail(AccountError::CommitFailed(msg.clone())));
            }
        }
    }

    /// Makes the blocks of every commit so far durable in the blockstore itself and drops their
    /// journal rows: one sync of the blockstore (and of the ownership store) for all of them.
    /// Returns how many rows it dropped. A node calls it every second; commits call it when the
    /// journal grows past [`JOURNAL_MAX_ROWS`].
    pub fn checkpoint(&self) -> Result<usize, AccountError> {
        if !self.journal {
            return Ok(0);
        }
        let _one = self.checkpointing.lock();
        let last: Option<i64> = self.db.read(|c| c.query_row("SELECT max(id) FROM block_journal", [], |r| r.get(0)))?;
        let Some(last) = last else { return Ok(0) };
        // Every row up to `last` was committed after its blocks were written: syncing now
        // covers them all.
        self.journaled.store(0, std::sync::atomic::Ordering::Relaxed);
        self.blocks.sync()?;
        self.owners.sync()?;
        let dropped = self
            .db
            .write(|tx| Ok::<_, AccountError>(tx.execute("DELETE FROM block_journal WHERE id <= ?1", [last])?))?;
        Ok(dropped)
    }

    /// Refuses records that reference a blob this account has not uploaded.
    fn check_blob_refs(&self, did: &Did, writes: &[Write]) -> Result<(), AccountError> {
        for w in writes {
            if let Write::Create { record, .. } | Write::Update { record, .. } = w {
                let mut refs = Vec::new();
                record_blobs(record, &mut refs);
                for b in refs {
                    let known: bool = self.db.read(|c| {
                        c.prepare_cached("SELECT EXISTS(SELECT 1 FROM blob WHERE did = ?1 AND cid = ?2)")?
                            .query_row(params![did.as_str(), b.cid.to_string()], |r| r.get(0))
                    })?;
                    if !known {
                        return Err(AccountError::BlobNotFound(b.cid.to_string()));
                    }
                }
            }
        }
        Ok(())
    }

    /// Inside the commit transaction: moves the head to `res` and updates the collection
    /// index, `repo_commit` and the commit hook for it.
    #[allow(clippy::too_many_arguments)]
    fn index_commit(
        &self,
        tx: &rusqlite::Transaction<'_>,
        did: &Did,
        writes: &[Write],
        res: &CommitResult,
        cids: &str,
        event_blocks: &[(Cid, Vec<u8>)],
        now: i64,
    ) -> Result<(), AccountError> {
        let records: HashMap<&str, &Ipld> = writes
            .iter()
            .filter_map(|w| match w {
                Write::Create { record, .. } | Write::Update { record, .. } => Some(record),
                Write::Delete { .. } => None,
            })
            .zip(res.ops.iter().filter(|o| o.action != Action::Delete))
            .map(|(rec, op)| (op.path.as_str(), rec))
            .collect();
        tx.prepare_cached("UPDATE account SET head = ?1, rev = ?2 WHERE did = ?3")?.execute(params![
            res.cid.to_string(),
            res.commit.rev.as_str(),
            did.as_str()
        ])?;
        for op in &res.ops {
            let (collection, rkey) = op.path.split_once('/').expect("paths are collection/rkey");
            // A create's path held nothing (the MST refused it otherwise): nothing to remove.
            if op.action != Action::Create {
                unindex(tx, did.as_str(), collection, rkey)?;
            }
            if let (Some(cid), true) = (op.cid, op.action != Action::Delete) {
                let record = records.get(op.path.as_str()).copied();
                index(tx, &self.indexes, did.as_str(), collection, rkey, &cid, record, res.commit.rev.as_str(), now)?;
            }
        }
        // Which blocks this commit introduced: what `getRepo?since=` exports.
        tx.prepare_cached("INSERT OR REPLACE INTO repo_commit (did, rev, cids) VALUES (?1, ?2, ?3)")?
            .execute(params![did.as_str(), res.commit.rev.as_str(), cids])?;
        if let Some(hook) = &self.hook {
            hook(tx, &RepoEvent::Committed { did, commit: res, blocks: event_blocks })?;
        }
        Ok(())
    }

    /// Writes a CAR rooted at the head holding the blocks commits after revision `since`
    /// introduced (the head commit always included), oldest first. `None` exports everything.
    pub fn export_car<W: std::io::Write>(&self, did: &Did, since: Option<&str>, out: W) -> Result<W, AccountError> {
        let repo = self.repo(did)?;
        let Some(since) = since else { return Ok(repo.export_car(out)?) };
        let rows: Vec<String> = self.db.read(|c| {
            let mut st = c.prepare_cached("SELECT cids FROM repo_commit WHERE did = ?1 AND rev > ?2 ORDER BY rev")?;
            let rows = st.query_map(params![did.as_str(), since], |r| r.get(0))?;
            rows.collect::<rusqlite::Result<Vec<String>>>()
        })?;
        // Each block once, in the order commits introduced them.
        let mut seen = std::collections::HashSet::new();
        let cids: Vec<&str> =
            rows.iter().flat_map(|r| r.split(' ')).filter(|c| !c.is_empty() && seen.insert(*c)).collect();
        let head = repo.head();
        let mut car = ues_ipld::car::CarWriter::new(out, &[head]).map_err(RepoError::from)?;
        let head_bytes = self.blocks.get(&head)?.ok_or(RepoError::MissingBlock(head))?;
        car.write_block(&head, &head_bytes).map_err(RepoError::from)?;
        for c in cids {
            let cid: Cid = c.parse().expect("stored valid");
            if cid == head {
                continue;
            }
            let bytes = self.blocks.get(&cid)?.ok_or(RepoError::MissingBlock(cid))?;
            car.write_block(&cid, &bytes).map_err(RepoError::from)?;
        }
        Ok(car.finish().map_err(RepoError::from)?)
    }

    /// Replaces an account's repository with a CAR (backup restore, account migration). The CAR
    /// is verified end to end (every block, the commit signature against the account's key, the
    /// DID, the tree, every record present) before anything is stored; then the collection index
    /// is rebuilt and the head moved in one transaction.
    pub fn import_repo(&self, did: &Did, car: impl std::io::Read) -> Result<Cid, AccountError> {
        let key = self.signing_key(did)?.public();
        self.import_repo_signed_by(did, car, &key)
    }

    /// [`Accounts::import_repo`] for a CAR whose commit another key signed (the key of the
    /// server an account is moving from, as its DID document names it): verified with `signer`
    /// (the caller then signs the head again with the account's own key).
    pub fn import_repo_signed_by(
        &self,
        did: &Did,
        car: impl std::io::Read,
        signer: &crate::crypto::PublicKey,
    ) -> Result<Cid, AccountError> {
        let lock = self.lock(did.as_str());
        let _guard = lock.lock();
        let _forget = self.forget_after(did);
        let repo = crate::repo::import_car(&self.blocks, car, did, signer)?;
        let entries = repo.mst()?.list(None, usize::MAX).map_err(RepoError::from)?;
        let mut records = Vec::with_capacity(entries.len());
        for (path, cid) in entries {
            let bytes = self.blocks.get(&cid)?.ok_or(RepoError::MissingBlock(cid))?;
            let value = ues_ipld::dagcbor::decode_atproto(&bytes)
                .map_err(|e| RepoError::InvalidRecord { path: path.clone(), reason: e.to_string() })?;
            records.push((path, cid, value));
        }
        let head = repo.head();
        let rev = repo.commit().rev.to_string();
        let commit_block = self.blocks.get(&head)?.ok_or(RepoError::MissingBlock(head))?;
        let nodes = repo.node_cids()?;
        let all = std::iter::once(head).chain(nodes).chain(records.iter().map(|r| r.1));
        let cids = self.own(did.as_str(), &rev, all)?;
        let now = now_ms();
        self.db.write(|tx| {
            let d = did.as_str();
            clear_index(tx, d)?;
            for (path, cid, value) in &records {
                let (collection, rkey) = path.split_once('/').expect("paths are collection/rkey");
                index(tx, &self.indexes, d, collection, rkey, cid, Some(value), &rev, now)?;
            }
            tx.prepare_cached("INSERT OR REPLACE INTO repo_commit (did, rev, cids) VALUES (?1, ?2, ?3)")?
                .execute(params![d, rev, cids])?;
            tx.execute("UPDATE account SET head = ?1, rev = ?2 WHERE did = ?3", params![head.to_string(), rev, d])?;
            if let Some(hook) = &self.hook {
                hook(tx, &RepoEvent::Synced { did, head: &head, rev: &rev, commit_block: &commit_block })?;
            }
            Ok::<_, AccountError>(())
        })?;
        Ok(head)
    }

    /// Records of a collection in one repository, by record key, after `cursor`, optionally
    /// newest key first.
    pub fn list_records(
        &self,
        did: &Did,
        collection: &Nsid,
        cursor: Option<&RecordKey>,
        limit: usize,
        reverse: bool,
    ) -> Result<Vec<IndexedRecord>, AccountError> {
        let (cmp, order) = if reverse { ("<", "DESC") } else { (">", "ASC") };
        let sql = format!(
            "SELECT did, collection, rkey, cid FROM record WHERE did = ?1 AND collection = ?2 AND (?3 IS NULL OR rkey {cmp} ?3) ORDER BY rkey {order} LIMIT ?4"
        );
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(&sql)?;
            let rows = st.query_map(
                params![did.as_str(), collection.as_str(), cursor.map(RecordKey::as_str), limit as i64],
                row_to_record,
            )?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows)
    }

    /// Full-text search over every record's strings, best match first (FTS5 bm25). Node-wide
    /// queries (this one, backlinks, declared indexes, records by time) show active accounts only:
    /// a taken-down, suspended or deactivated account's records are not served.
    ///
    /// Ranking is bounded: bm25 orders the [`SEARCH_WINDOW`] most recently indexed matches, so
    /// a query whose words appear in half the corpus costs the same as a rare one. For a social
    /// data server recent matches are the ones people look for.
    pub fn search(&self, query: &str, limit: usize) -> Result<Vec<IndexedRecord>, AccountError> {
        // Every committed record is searchable: text still queued is indexed first.
        while self.index_text(TEXT_BATCH)? == TEXT_BATCH {}
        // Quote each term so user input cannot inject FTS5 query syntax.
        let fts_query: String =
            // Control characters (NUL above all, which ends FTS5's query string) separate terms.
            query
                .split(|c: char| c.is_whitespace() || c.is_control())
                .filter(|t| !t.is_empty())
                .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
                .collect::<Vec<_>>()
                .join(" ");
        if fts_query.is_empty() {
            return Ok(vec![]);
        }
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT t.did, t.collection, t.rkey, r.cid FROM (
                     SELECT rowid, score FROM (
                         SELECT rowid, bm25(record_fts) AS score FROM record_fts WHERE record_fts MATCH ?1
                         ORDER BY rowid DESC LIMIT ?3
                     ) ORDER BY score LIMIT ?2
                 ) m
                 JOIN record_text t ON t.id = m.rowid
                 JOIN record r ON r.did = t.did AND r.collection = t.collection AND r.rkey = t.rkey
                 JOIN account a ON a.did = r.did AND a.status = 'active'
                 ORDER BY m.score",
            )?;
            let rows = st.query_map(params![fts_query, limit as i64, SEARCH_WINDOW], row_to_record)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows)
    }

    /// Moves up to `max` queued record texts into the full-text index, in one transaction.
    /// Returns how many were indexed. The node runs this in the background a few times a
    /// second; [`Accounts::search`] runs it first, so searches never miss a committed record.
    pub fn index_text(&self, max: usize) -> Result<usize, AccountError> {
        self.db.write(|tx| {
            // The batch leaves the queue whatever happens to each row; rows whose record was
            // since deleted or replaced are skipped (the queue has no per-record index for the
            // commit path to keep up to date).
            type Row = (i64, String, String, String, String, Option<bool>);
            let rows: Vec<Row> = {
                let mut st = tx.prepare_cached(
                    "SELECT q.id, q.did, q.collection, q.rkey, q.body, r.cid = q.cid FROM fts_queue q
                     LEFT JOIN record r ON r.did = q.did AND r.collection = q.collection AND r.rkey = q.rkey
                     ORDER BY q.id LIMIT ?1",
                )?;
                let rows = st.query_map([max as i64], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
                })?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            if let Some(last) = rows.last() {
                tx.prepare_cached("DELETE FROM fts_queue WHERE id <= ?1")?.execute([last.0])?;
            }
            for (_, did, collection, rkey, body, _) in rows.iter().filter(|r| r.5 == Some(true)) {
                // A record changed and changed back can be queued twice with its current CID.
                let added = tx
                    .prepare_cached("INSERT OR IGNORE INTO record_text (did, collection, rkey) VALUES (?1, ?2, ?3)")?
                    .execute(params![did, collection, rkey])?;
                if added == 0 {
                    continue;
                }
                let id = tx.last_insert_rowid();
                tx.prepare_cached("INSERT INTO record_fts (rowid, body) VALUES (?1, ?2)")?
                    .execute(params![id, body])?;
            }
            Ok::<_, AccountError>(rows.len())
        })
    }

    /// Records that reference `target` (an AT-URI or DID).
    pub fn backlinks(&self, target: &str, limit: usize) -> Result<Vec<IndexedRecord>, AccountError> {
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT b.src_did, b.src_collection, b.src_rkey, r.cid FROM backlink b
                 JOIN record r ON r.did = b.src_did AND r.collection = b.src_collection AND r.rkey = b.src_rkey
                 JOIN account a ON a.did = r.did AND a.status = 'active'
                 WHERE b.target = ?1 LIMIT ?2",
            )?;
            let rows = st.query_map(params![target, limit as i64], row_to_record)?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows)
    }

    /// Records of `collection` whose declared index `name` holds `value` (every account), in
    /// (author, record key) order after `cursor` (the last result's `did/rkey`).
    pub fn query_index(
        &self,
        collection: &str,
        name: &str,
        value: &IndexValue,
        cursor: Option<(&str, &str)>,
        limit: usize,
    ) -> Result<Vec<IndexedRecord>, AccountError> {
        let (cd, ck) = cursor.unwrap_or(("", ""));
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT i.did, i.collection, i.rkey, r.cid FROM record_index i
                 JOIN record r ON r.did = i.did AND r.collection = i.collection AND r.rkey = i.rkey
                 JOIN account a ON a.did = r.did AND a.status = 'active'
                 WHERE i.collection = ?1 AND i.name = ?2 AND i.value = ?3 AND (i.did, i.rkey) > (?4, ?5)
                 ORDER BY i.did, i.rkey LIMIT ?6",
            )?;
            let rows = match value {
                IndexValue::Text(s) => {
                    st.query_map(params![collection, name, s, cd, ck, limit as i64], row_to_record)?
                }
                IndexValue::Integer(n) => {
                    st.query_map(params![collection, name, n, cd, ck, limit as i64], row_to_record)?
                }
            };
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows)
    }

    /// Records by when this node indexed them, newest first: of one author and/or one
    /// collection (either may be `None`), indexed in `[since_ms, until_ms)` (Unix milliseconds),
    /// after `cursor` (the last result of the previous page, as returned: records indexed in the
    /// same millisecond are told apart by author, collection and key, so paging loses none).
    pub fn records_by_time(
        &self,
        did: Option<&str>,
        collection: Option<&str>,
        (since_ms, until_ms): (i64, i64),
        cursor: Option<&TimeCursor>,
        limit: usize,
    ) -> Result<Vec<(IndexedRecord, TimeCursor)>, AccountError> {
        let c0 = cursor.cloned().unwrap_or(TimeCursor { indexed_at: until_ms, ..TimeCursor::default() });
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT did, collection, rkey, cid, indexed_at FROM record r
                 WHERE (?1 IS NULL OR did = ?1) AND (?2 IS NULL OR collection = ?2)
                   AND EXISTS (SELECT 1 FROM account a WHERE a.did = r.did AND a.status = 'active')
                   AND indexed_at >= ?3 AND indexed_at < ?4
                   AND (indexed_at, did, collection, rkey) < (?5, ?6, ?7, ?8)
                 ORDER BY indexed_at DESC, did DESC, collection DESC, rkey DESC LIMIT ?9",
            )?;
            let args = params![
                did,
                collection,
                since_ms,
                until_ms,
                c0.indexed_at,
                c0.did,
                c0.collection,
                c0.rkey,
                limit as i64
            ];
            let rows = st.query_map(args, |r| {
                let rec = row_to_record(r)?;
                let cur = TimeCursor {
                    indexed_at: r.get(4)?,
                    did: rec.did.clone(),
                    collection: rec.collection.clone(),
                    rkey: rec.rkey.clone(),
                };
                Ok((rec, cur))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows)
    }

    /// The account's records written after revision `rev`, among its `limit` newest (newest
    /// first), each with when it was indexed (Unix milliseconds): what a reader that has seen
    /// the repository up to `rev` has not seen yet (read-after-write).
    pub fn records_after_rev(
        &self,
        did: &Did,
        rev: &str,
        limit: usize,
    ) -> Result<Vec<(IndexedRecord, i64)>, AccountError> {
        let rows = self.db.read(|c| {
            let mut st = c.prepare_cached(
                "SELECT did, collection, rkey, cid, indexed_at, rev FROM record WHERE did = ?1
                 ORDER BY indexed_at DESC LIMIT ?2",
            )?;
            let rows = st.query_map(params![did.as_str(), limit as i64], |r| {
                Ok((row_to_record(r)?, r.get::<_, i64>(4)?, r.get::<_, String>(5)?))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        Ok(rows.into_iter().filter(|(_, _, r)| r.as_str() > rev).map(|(rec, at, _)| (rec, at)).collect())
    }

    /// Converts a JSON record (as XRPC clients send it) to IPLD, checking the data model.
    pub fn record_from_json(value: &serde_json::Value) -> Result<Ipld, atjson::JsonError> {
        atjson::record_from_json(value)
    }
}

/// The node's rotation key: opened from `node_secret`, or made and stored sealed on first
/// open. Opening it is also the check that `seal` is the node key this database was sealed
/// under.
fn rotation_key(db: &Sqlite, seal: &SealKey) -> Result<Keypair, AccountError> {
    let stored: Option<Vec<u8>> = db.read(|c| {
        c.query_row("SELECT value FROM node_secret WHERE name = ?1", [ROTATION_KEY_ROW], |r| r.get(0)).optional()
    })?;
    if let Some(sealed) = stored {
        let secret = seal.open(ROTATION_KEY_CONTEXT, &sealed)?;
        return Keypair::from_bytes(KeyType::K256, &secret).map_err(|_| SealError::Malformed.into());
    }
    let key = Keypair::generate(KeyType::K256);
    let sealed = seal.seal(ROTATION_KEY_CONTEXT, &zeroize::Zeroizing::new(key.to_bytes()));
    db.write(|tx| {
        tx.execute("INSERT INTO node_secret (name, value) VALUES (?1, ?2)", params![ROTATION_KEY_ROW, sealed])?;
        Ok::<_, AccountError>(())
    })?;
    tracing::info!(rotation_key = %key.public().did_key(), "did:plc rotation key made for this node");
    Ok(key)
}

/// Seals the signing keys an older node stored in plaintext, then compacts the database so
/// the plaintext does not linger in free pages or the WAL. Logs how many it sealed.
fn seal_plaintext_keys(db: &Sqlite, seal: &SealKey) -> Result<usize, AccountError> {
    let mut sealed = 0;
    loop {
        let n = db.write(|tx| {
            let rows: Vec<(String, String, Vec<u8>)> = {
                let mut st = tx.prepare_cached(
                    "SELECT did, signing_key_type, signing_key FROM account WHERE signing_key_sealed = 0 LIMIT ?1",
                )?;
                let rows = st.query_map([SEAL_BATCH], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                rows.collect::<rusqlite::Result<Vec<_>>>()?
            };
            let n = rows.len();
            for (did, kt, plain) in rows {
                let plain = zeroize::Zeroizing::new(plain);
                let value = seal.seal(&account_key_context(&did, &kt), &plain);
                tx.prepare_cached("UPDATE account SET signing_key = ?1, signing_key_sealed = 1 WHERE did = ?2")?
                    .execute(params![value, did])?;
            }
            Ok::<_, AccountError>(n)
        })?;
        sealed += n;
        if n < SEAL_BATCH as usize {
            break;
        }
    }
    if sealed > 0 {
        db.compact()?;
        tracing::warn!(
            accounts = sealed,
            "account signing keys were stored in plaintext; now sealed under the node key"
        );
    }
    Ok(sealed)
}

/// Removes every row of one account's repository from the collection index (records, text,
/// backlinks, blob references, declared indexes, per-block revisions).
fn clear_index(tx: &rusqlite::Transaction<'_>, did: &str) -> rusqlite::Result<()> {
    tx.execute("DELETE FROM record_fts WHERE rowid IN (SELECT id FROM record_text WHERE did = ?1)", [did])?;
    for table in [
        "fts_queue WHERE did",
        "record_text WHERE did",
        "record WHERE did",
        "backlink WHERE src_did",
        "record_blob WHERE did",
        "repo_commit WHERE did",
        "record_index WHERE did",
    ] {
        tx.execute(&format!("DELETE FROM {table} = ?1"), [did])?;
    }
    Ok(())
}

/// Removes a record's rows from the collection index (record, backlinks, text, blob refs).
fn unindex(tx: &rusqlite::Transaction<'_>, did: &str, collection: &str, rkey: &str) -> rusqlite::Result<()> {
    let key = params![did, collection, rkey];
    tx.prepare_cached("DELETE FROM record WHERE did = ?1 AND collection = ?2 AND rkey = ?3")?.execute(key)?;
    tx.prepare_cached("DELETE FROM backlink WHERE src_did = ?1 AND src_collection = ?2 AND src_rkey = ?3")?
        .execute(key)?;
    tx.prepare_cached("DELETE FROM record_index WHERE did = ?1 AND collection = ?2 AND rkey = ?3")?.execute(key)?;
    tx.prepare_cached("DELETE FROM record_blob WHERE did = ?1 AND path = ?2")?
        .execute(params![did, format!("{collection}/{rkey}")])?;
    let old_text: Option<i64> = tx
        .prepare_cached("SELECT id FROM record_text WHERE did = ?1 AND collection = ?2 AND rkey = ?3")?
        .query_row(key, |r| r.get(0))
        .optional()?;
    if let Some(id) = old_text {
        tx.prepare_cached("DELETE FROM record_fts WHERE rowid = ?1")?.execute([id])?;
        tx.prepare_cached("DELETE FROM record_text WHERE id = ?1")?.execute([id])?;
    }
    Ok(())
}

/// Adds a record to the collection index: its row, the AT-URIs/DIDs it references, its text for
/// full-text search, and the blobs it references.
#[allow(clippy::too_many_arguments)]
fn index(
    tx: &rusqlite::Transaction<'_>,
    indexes: &BTreeMap<String, Vec<IndexSpec>>,
    did: &str,
    collection: &str,
    rkey: &str,
    cid: &Cid,
    record: Option<&Ipld>,
    rev: &str,
    now: i64,
) -> rusqlite::Result<()> {
    let created_at = record.and_then(|r| r.get("createdAt")).and_then(Ipld::as_str);
    tx.prepare_cached(
        "INSERT INTO record (did, collection, rkey, cid, created_at, indexed_at, rev) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![did, collection, rkey, cid.to_string(), created_at, now, rev])?;
    let Some(rec) = record else { return Ok(()) };
    let mut refs = Vec::new();
    record_refs(rec, &mut refs);
    for target in refs {
        tx.prepare_cached("INSERT OR IGNORE INTO backlink VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![did, collection, rkey, target])?;
    }
    let mut text = String::new();
    record_text(rec, &mut text);
    // The text waits in a queue (one appended row) for `index_text`, which adds many records to
    // FTS5 in one transaction: far fewer pages written than one FTS5 insert per commit.
    if !text.is_empty() {
        tx.prepare_cached("INSERT INTO fts_queue (did, collection, rkey, cid, body) VALUES (?1, ?2, ?3, ?4, ?5)")?
            .execute(params![did, collection, rkey, cid.to_string(), text])?;
    }
    if let Some(specs) = indexes.get(collection) {
        index_values(tx, specs, did, collection, rkey, rec)?;
    }
    let mut blobs = Vec::new();
    record_blobs(rec, &mut blobs);
    for b in blobs {
        tx.prepare_cached("INSERT OR IGNORE INTO record_blob (did, path, cid) VALUES (?1, ?2, ?3)")?
            .execute(params![did, format!("{collection}/{rkey}"), b.cid.to_string()])?;
    }
    Ok(())
}

/// Adds a record's values to the secondary indexes its Lexicon declares.
fn index_values(
    tx: &rusqlite::Transaction<'_>,
    specs: &[IndexSpec],
    did: &str,
    collection: &str,
    rkey: &str,
    record: &Ipld,
) -> rusqlite::Result<()> {
    for spec in specs {
        for value in spec.values(record) {
            let mut st = tx.prepare_cached("INSERT OR IGNORE INTO record_index VALUES (?1, ?2, ?3, ?4, ?5)")?;
            match value {
                IndexValue::Text(s) => st.execute(params![collection, spec.name, s, did, rkey])?,
                IndexValue::Integer(n) => st.execute(params![collection, spec.name, n, did, rkey])?,
            };
        }
    }
    Ok(())
}

fn row_to_record(r: &rusqlite::Row<'_>) -> rusqlite::Result<IndexedRecord> {
    Ok(IndexedRecord { did: r.get(0)?, collection: r.get(1)?, rkey: r.get(2)?, cid: r.get(3)? })
}

/// Records per account and collection (of one account, or of all), read on `conn`: a
/// transaction of the node's database, so a caller can pair the counts with whatever else it
/// reads in that transaction.
pub fn record_counts(conn: &rusqlite::Connection, did: Option<&str>) -> rusqlite::Result<Vec<(String, String, u64)>> {
    let mut s = conn.prepare_cached(
        "SELECT did, collection, count(*) FROM record WHERE ?1 IS NULL OR did = ?1 GROUP BY did, collection",
    )?;
    let rows = s.query_map([did], |r| Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64)))?;
    rows.collect()
}

/// A record as the node's index lists it (what an application rebuilding from the node's data
/// needs; the record itself is a block of the account's repository).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// The collection.
    pub collection: String,
    /// The record key.
    pub rkey: String,
    /// The record's CID.
    pub cid: String,
    /// When this node indexed it (Unix milliseconds).
    pub indexed_at: i64,
}

/// The records of one account in `collections`, oldest indexed first, read on `conn` (a
/// transaction of the node's database, like [`record_counts`]).
pub fn records_in(conn: &rusqlite::Connection, did: &str, collections: &[&str]) -> rusqlite::Result<Vec<StoredRecord>> {
    let mut s = conn.prepare_cached(
        "SELECT collection, rkey, cid, indexed_at FROM record WHERE did = ?1 AND collection = ?2 ORDER BY indexed_at, rkey",
    )?;
    let mut out = Vec::new();
    for c in collections {
        let rows = s.query_map(params![did, c], |r| {
            Ok(StoredRecord { collection: r.get(0)?, rkey: r.get(1)?, cid: r.get(2)?, indexed_at: r.get(3)? })
        })?;
        for r in rows {
            out.push(r?);
        }
    }
    out.sort_by(|a, b| (a.indexed_at, &a.rkey).cmp(&(b.indexed_at, &b.rkey)));
    Ok(out)
}

/// Every account's DID, handle and status (`active`, `deactivated`, ...), read on `conn`.
pub fn account_dids(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, String, String)>> {
    let mut s = conn.prepare_cached("SELECT did, handle, status FROM account ORDER BY did")?;
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    rows.collect()
}

/// Inside a commit's transaction: the commit's blocks, kept until a checkpoint has synced them
/// in the blockstore.
fn journal_blocks(tx: &rusqlite::Transaction<'_>, did: &str, res: &CommitResult) -> Result<(), AccountError> {
    let mut car = ues_ipld::car::CarWriter::new(Vec::with_capacity(4096), &[res.cid]).map_err(RepoError::from)?;
    for (cid, bytes) in &res.blocks {
        car.write_block(cid, bytes).map_err(RepoError::from)?;
    }
    let blob = car.finish().map_err(RepoError::from)?;
    tx.prepare_cached("INSERT INTO block_journal (did, rev, blocks) VALUES (?1, ?2, ?3)")?.execute(params![
        did,
        res.commit.rev.as_str(),
        blob
    ])?;
    Ok(())
}

/// Puts the blocks (and ownership entries) of every journaled commit back into the blockstore,
/// syncs it and drops the rows: after a power cut the blockstore may have lost writes the
/// journal's synced transactions still hold. Blocks are content-addressed, so putting back
/// one that survived changes nothing. Returns how many commits were replayed.
fn replay_journal<B: Blockstore>(blocks: &B, owners: &dyn Kv, db: &Sqlite) -> Result<usize, AccountError> {
    let mut replayed = 0usize;
    let mut after = 0i64;
    loop {
        let rows: Vec<(i64, String, String, Vec<u8>)> = db.read(|c| {
            let mut st =
                c.prepare_cached("SELECT id, did, rev, blocks FROM block_journal WHERE id > ?1 ORDER BY id LIMIT ?2")?;
            // The blocks column as whatever bytes it holds: a damaged row is reported below.
            let bytes = |v: rusqlite::types::ValueRef<'_>| match v {
                rusqlite::types::ValueRef::Blob(b) | rusqlite::types::ValueRef::Text(b) => b.to_vec(),
                _ => Vec::new(),
            };
            let rows = st.query_map(params![after, REPLAY_CHUNK], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, bytes(r.get_ref(3)?)))
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()
        })?;
        let Some(last) = rows.last().map(|r| r.0) else { break };
        for (_, did, rev, car) in &rows {
            // Every block is checked against its CID on the way. A row that does not read back
            // (damaged on disk) is reported and skipped: the blocks it held may be missing from
            // the repository (reads of them fail, typed), the rest of the node keeps working.
            let found = (|| {
                let mut reader = ues_ipld::car::CarReader::new(&car[..])?;
                let mut found = Vec::new();
                while let Some(block) = reader.next_block()? {
                    found.push(block);
                }
                Ok::<_, ues_ipld::car::CarError>(found)
            })();
            let found = match found {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(%did, %rev, "a journaled commit's blocks do not read back; skipped: {e}");
                    continue;
                }
            };
            let owned: Vec<(Vec<u8>, Vec<u8>)> =
                found.iter().map(|(cid, _)| (owner_key(did, cid), rev.as_bytes().to_vec())).collect();
            blocks.put_many_unsynced(&found)?;
            owners.put_many_unsynced(&owned)?;
        }
        replayed += rows.len();
        after = last;
    }
    if replayed > 0 {
        blocks.sync()?;
        owners.sync()?;
        db.write(|tx| Ok::<_, AccountError>(tx.execute("DELETE FROM block_journal WHERE id <= ?1", [after])?))?;
    }
    Ok(replayed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ues_ipld::storage::{MemoryBlockstore, MemoryKv, SqliteConfig};

    fn open(dir: &tempfile::TempDir, seal: &SealKey) -> Result<Accounts<MemoryBlockstore>, AccountError> {
        let db = Arc::new(Sqlite::open(dir.path().join("index.sqlite"), &SqliteConfig::default())?);
        Accounts::open_with(MemoryBlockstore::new(), Arc::new(MemoryKv::new()), db, 1, seal.clone())
    }

    /// Every byte SQLite keeps on disk for the index: the database, its WAL and shared memory.
    fn disk_bytes(dir: &tempfile::TempDir) -> Vec<u8> {
        ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm"]
            .iter()
            .flat_map(|f| std::fs::read(dir.path().join(f)).unwrap_or_default())
            .collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    fn stored_key(accounts: &Accounts<MemoryBlockstore>, did: &Did) -> Vec<u8> {
        accounts
            .db()
            .read(|c| c.query_row("SELECT signing_key FROM account WHERE did = ?1", [did.as_str()], |r| r.get(0)))
            .unwrap()
    }

    #[test]
    fn keys_are_sealed_at_rest_and_a_wrong_node_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let node_key = SealKey::generate();
        let accounts = open(&dir, &node_key).unwrap();
        let did = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
        let (_, key, _) = accounts.create(did.clone(), Handle::new("a.test").unwrap(), KeyType::K256).unwrap();
        let rotation = accounts.plc_rotation_key().clone();
        assert_ne!(rotation.public(), key.public(), "the rotation key is not the signing key");
        let stored = stored_key(&accounts, &did);
        assert!(crate::seal::is_sealed(&stored, 32), "stored as a sealed blob ({} bytes)", stored.len());
        for secret in [key.to_bytes(), rotation.to_bytes()] {
            assert!(!contains(&stored, &secret));
            assert!(!contains(&disk_bytes(&dir), &secret), "no plaintext key on disk");
        }
        drop(accounts);

        assert!(matches!(open(&dir, &SealKey::generate()), Err(AccountError::Seal(SealError::WrongKey))));

        let again = open(&dir, &node_key).unwrap();
        assert_eq!(again.signing_key(&did).unwrap().to_bytes(), key.to_bytes());
        assert_eq!(again.plc_rotation_key().to_bytes(), rotation.to_bytes(), "the same rotation key");

        // A sealed key moved onto another account's row does not open there.
        let other = Did::new("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
        again.create(other.clone(), Handle::new("b.test").unwrap(), KeyType::K256).unwrap();
        again
            .db()
            .write(|tx| {
                tx.execute("UPDATE account SET signing_key = ?1 WHERE did = ?2", params![stored, other.as_str()])?;
                Ok::<_, AccountError>(())
            })
            .unwrap();
        let fresh = open(&dir, &node_key).unwrap();
        assert!(matches!(fresh.signing_key(&other), Err(AccountError::Seal(SealError::WrongKey))));
        assert!(!format!("{:?}", fresh.signing_key(&other)).contains(&hex_of(&key.to_bytes())));
    }

    fn hex_of(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn plaintext_keys_of_an_older_node_are_sealed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let did = Did::new("did:plc:cccccccccccccccccccccccc").unwrap();
        let key = Keypair::generate(KeyType::P256);
        {
            // The schema and row an older node left: the key's 32 bytes as they are.
            let db = Sqlite::open(dir.path().join("index.sqlite"), &SqliteConfig::default()).unwrap();
            db.migrate(&MIGRATIONS[..6]).unwrap();
            db.write(|tx| {
                tx.execute(
                    "INSERT INTO account (did, handle, signing_key_type, signing_key, head, rev) VALUES (?1, 'c.test', 'p256', ?2, 'bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm', '3k')",
                    params![did.as_str(), key.to_bytes()],
                )?;
                Ok::<_, AccountError>(())
            })
            .unwrap();
            assert!(contains(&disk_bytes(&dir), &key.to_bytes()), "the old node's plaintext is on disk");
        }
        let node_key = SealKey::generate();
        let accounts = open(&dir, &node_key).unwrap();
        assert!(crate::seal::is_sealed(&stored_key(&accounts, &did), 32));
        assert!(!contains(&disk_bytes(&dir), &key.to_bytes()), "no plaintext left in pages or the WAL");
        assert_eq!(accounts.signing_key(&did).unwrap().public(), key.public());
        drop(accounts);
        // Sealed once: a second open finds nothing to migrate and the same key.
        let again = open(&dir, &node_key).unwrap();
        assert_eq!(again.signing_key(&did).unwrap().public(), key.public());
    }
}
