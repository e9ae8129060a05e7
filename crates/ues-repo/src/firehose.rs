//! Events of another server's firehose (`com.atproto.sync.subscribeRepos`), read and checked as
//! a relay checks them before anything in them is believed.
//!
//! [`decode_frame`] reads one binary frame (a DAG-CBOR `{op, t}` header, then its body) within
//! [`FrameLimits`]. [`verify_commit`] checks a `#commit` against the account's signing key and
//! what the reader already holds of the repository: its blocks hash to their CIDs, the commit is
//! the repository's and signed by the key, its `rev` is newer and its `since` is the revision
//! held (else the reader missed commits and must fetch the repository again), each operation's
//! record is among the blocks, and inverting the operations on the event's blocks alone gives
//! `prevData`, the tree the reader held (so the operations are all that changed).

use cid::Cid;
use ues_ipld::Ipld;
use ues_ipld::car::CarReader;
use ues_ipld::dagcbor::{self, DecodeOptions, Reader};
use ues_ipld::mst::{RecordOp, invert};
use ues_ipld::storage::{Blockstore, MemoryBlockstore};

use crate::commit::Commit;
use crate::crypto::PublicKey;
use crate::syntax::Did;

/// Bounds on a frame, checked before it is decoded further.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameLimits {
    /// Largest frame.
    pub max_frame: usize,
    /// Largest `blocks` CAR of a commit (the specification's bound: 2,000,000 bytes).
    pub max_blocks: usize,
    /// Most operations in one commit (the specification's bound: 200).
    pub max_ops: usize,
}

impl Default for FrameLimits {
    fn default() -> Self {
        Self { max_frame: 5 << 20, max_blocks: 2_000_000, max_ops: 200 }
    }
}

/// One record operation of a commit event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitOp {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// `collection/rkey`.
    pub path: String,
    /// The record's new CID (none for a delete).
    pub cid: Option<Cid>,
    /// The record's CID before (none for a create).
    pub prev: Option<Cid>,
}

/// A `#commit` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitEvent {
    /// Its sequence number on the stream.
    pub seq: i64,
    /// The repository.
    pub repo: Did,
    /// The commit's revision.
    pub rev: String,
    /// The revision before it, as the server says.
    pub since: Option<String>,
    /// The commit block's CID.
    pub commit: Cid,
    /// The blocks (a CAR): the commit, the new tree nodes and records.
    pub blocks: Vec<u8>,
    /// The record operations.
    pub ops: Vec<CommitOp>,
    /// The record tree's root before the commit.
    pub prev_data: Option<Cid>,
    /// When the server made it.
    pub time: String,
}

/// A frame of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A commit.
    Commit(Box<CommitEvent>),
    /// The account's identity (handle, DID document) may have changed.
    Identity {
        /// Its sequence number.
        seq: i64,
        /// The account.
        did: Did,
    },
    /// The account's hosting status.
    Account {
        /// Its sequence number.
        seq: i64,
        /// The account.
        did: Did,
        /// Whether it is active.
        active: bool,
        /// Why not, when it is not.
        status: Option<String>,
    },
    /// The repository's current state, without its history.
    Sync {
        /// Its sequence number.
        seq: i64,
        /// The account.
        did: Did,
        /// Its revision.
        rev: String,
        /// A CAR with the signed commit.
        blocks: Vec<u8>,
    },
    /// Information from the server (`OutdatedCursor`).
    Info {
        /// What it is.
        name: String,
    },
    /// The stream ended with an error.
    Error {
        /// The error's name.
        error: String,
        /// Its message.
        message: Option<String>,
    },
    /// A kind of event this reader does not know (skipped, as the specification asks).
    Other(String),
}

/// Why a frame could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Over [`FrameLimits`].
    #[error("frame over its bound: {0}")]
    TooLarge(&'static str),
    /// Not a frame of this protocol.
    #[error("malformed frame: {0}")]
    Malformed(String),
}

/// Why a commit event is not believed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckError {
    /// Its blocks or commit do not decode.
    #[error("malformed commit event: {0}")]
    Malformed(String),
    /// A block it needs is not among its blocks.
    #[error("block {0} is not in the event")]
    MissingBlock(Cid),
    /// The commit is another repository's.
    #[error("the commit is not the repository's")]
    WrongDid,
    /// The signature does not verify with the account's key.
    #[error("the commit's signature does not verify")]
    BadSignature,
    /// Not newer than the revision held.
    #[error("revision {rev} is not newer than {held}")]
    StaleRev {
        /// The event's revision.
        rev: String,
        /// The revision held.
        held: String,
    },
    /// It follows another revision than the one held: commits were missed.
    #[error("the commit follows {since:?}, not the revision held ({held})")]
    Gap {
        /// What the event says it follows.
        since: Option<String>,
        /// The revision held.
        held: String,
    },
    /// An operation is inconsistent (a create with a previous record, a delete with a new one).
    #[error("operation {0} is inconsistent")]
    OpMismatch(String),
    /// Undoing the operations does not give the tree it claims to follow.
    #[error("the operations do not account for the change from prevData")]
    InversionMismatch,
}

fn text(m: &Ipld, k: &str) -> Option<String> {
    m.get(k).and_then(Ipld::as_str).map(str::to_string)
}

fn integer(m: &Ipld, k: &str) -> Option<i64> {
    match m.get(k) {
        Some(Ipld::Integer(i)) => i64::try_from(*i).ok(),
        _ => None,
    }
}

fn did(m: &Ipld, k: &str) -> Result<Did, FrameError> {
    let s = text(m, k).ok_or_else(|| FrameError::Malformed(format!("no {k}")))?;
    Did::new(&s).map_err(|e| FrameError::Malformed(format!("{k}: {e}")))
}

/// Reads one frame of the stream.
pub fn decode_frame(bytes: &[u8], limits: &FrameLimits) -> Result<Frame, FrameError> {
    if bytes.len() > limits.max_frame {
        return Err(FrameError::TooLarge("frame"));
    }
    let bad = |e: ues_ipld::CborError| FrameError::Malformed(e.to_string());
    let opts = DecodeOptions::default();
    let mut r = Reader::new(bytes);
    let header = dagcbor::decode_atproto(r.skip(&opts).map_err(bad)?).map_err(bad)?;
    let body = r.value(&opts, 0).map_err(bad)?;
    r.finish().map_err(bad)?;
    if !matches!(body, Ipld::Map(_)) {
        return Err(FrameError::Malformed("the body is not a map".into()));
    }
    match integer(&header, "op") {
        Some(-1) => {
            return Ok(Frame::Error {
                error: text(&body, "error").unwrap_or_default(),
                message: text(&body, "message"),
            });
        }
        Some(1) => {}
        _ => return Err(FrameError::Malformed("the header's op is neither 1 nor -1".into())),
    }
    let kind = text(&header, "t").ok_or_else(|| FrameError::Malformed("the header has no t".into()))?;
    let seq = || integer(&body, "seq").ok_or_else(|| FrameError::Malformed("no seq".into()));
    let blocks = |limit: usize| match body.get("blocks") {
        Some(Ipld::Bytes(b)) if b.len() > limit => Err(FrameError::TooLarge("blocks")),
        Some(Ipld::Bytes(b)) => Ok(b.clone()),
        _ => Err(FrameError::Malformed("no blocks".into())),
    };
    Ok(match kind.as_str() {
        "#commit" => {
            let Some(Ipld::List(list)) = body.get("ops") else { return Err(FrameError::Malformed("no ops".into())) };
            if list.len() > limits.max_ops {
                return Err(FrameError::TooLarge("ops"));
            }
            let mut ops = Vec::with_capacity(list.len());
            for op in list {
                let link = |k: &str| op.get(k).and_then(Ipld::as_link).copied();
                ops.push(CommitOp {
                    action: text(op, "action").ok_or_else(|| FrameError::Malformed("an op has no action".into()))?,
                    path: text(op, "path").ok_or_else(|| FrameError::Malformed("an op has no path".into()))?,
                    cid: link("cid"),
                    prev: link("prev"),
                });
            }
            Frame::Commit(Box::new(CommitEvent {
                seq: seq()?,
                repo: did(&body, "repo")?,
                rev: text(&body, "rev").ok_or_else(|| FrameError::Malformed("no rev".into()))?,
                since: text(&body, "since"),
                commit: body
                    .get("commit")
                    .and_then(Ipld::as_link)
                    .copied()
                    .ok_or_else(|| FrameError::Malformed("no commit".into()))?,
                blocks: blocks(limits.max_blocks)?,
                ops,
                prev_data: body.get("prevData").and_then(Ipld::as_link).copied(),
                time: text(&body, "time").unwrap_or_default(),
            }))
        }
        "#identity" => Frame::Identity { seq: seq()?, did: did(&body, "did")? },
        "#account" => Frame::Account {
            seq: seq()?,
            did: did(&body, "did")?,
            active: matches!(body.get("active"), Some(Ipld::Bool(true))),
            status: text(&body, "status"),
        },
        "#sync" => Frame::Sync {
            seq: seq()?,
            did: did(&body, "did")?,
            rev: text(&body, "rev").ok_or_else(|| FrameError::Malformed("no rev".into()))?,
            blocks: blocks(limits.max_blocks)?,
        },
        "#info" => Frame::Info { name: text(&body, "name").unwrap_or_default() },
        other => Frame::Other(other.to_string()),
    })
}

/// A commit event that checked out: its revision, its tree's root, and each operation with its
/// record's bytes (none for a delete).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The commit's revision.
    pub rev: String,
    /// The record tree's root after it.
    pub data: Cid,
    /// The operations, with the records they wrote.
    pub records: Vec<(CommitOp, Option<Vec<u8>>)>,
}

/// Checks a commit event against the account's signing `key` and what the reader holds of the
/// repository (`held`: its revision and tree root; `None` when it holds nothing yet, as after
/// fetching the repository whole, when only the signature and the event's own consistency are
/// checked).
pub fn verify_commit(ev: &CommitEvent, key: &PublicKey, held: Option<(&str, Cid)>) -> Result<Verified, CheckError> {
    let store = MemoryBlockstore::verifying();
    let reader = CarReader::new(&ev.blocks[..]).map_err(|e| CheckError::Malformed(e.to_string()))?;
    for block in reader {
        let (cid, bytes) = block.map_err(|e| CheckError::Malformed(e.to_string()))?;
        store.put(&cid, &bytes).map_err(|e| CheckError::Malformed(e.to_string()))?;
    }
    // A verifying store checks each block read against its CID.
    let get = |cid: &Cid| match store.get(cid) {
        Ok(Some(b)) => Ok(b),
        Ok(None) => Err(CheckError::MissingBlock(*cid)),
        Err(e) => Err(CheckError::Malformed(e.to_string())),
    };
    let commit = Commit::decode(&get(&ev.commit)?).map_err(|e| CheckError::Malformed(e.to_string()))?;
    if commit.did != ev.repo {
        return Err(CheckError::WrongDid);
    }
    commit.verify(key).map_err(|_| CheckError::BadSignature)?;
    if commit.rev.as_str() != ev.rev {
        return Err(CheckError::Malformed("the event's rev is not the commit's".into()));
    }
    if let Some((held_rev, held_data)) = held {
        if ev.rev.as_str() <= held_rev {
            return Err(CheckError::StaleRev { rev: ev.rev.clone(), held: held_rev.to_string() });
        }
        if ev.since.as_deref() != Some(held_rev) || ev.prev_data.is_some_and(|p| p != held_data) {
            return Err(CheckError::Gap { since: ev.since.clone(), held: held_rev.to_string() });
        }
        if ev.prev_data.is_none() {
            return Err(CheckError::Malformed("no prevData: the change cannot be checked".into()));
        }
    }
    let mut inverse = Vec::with_capacity(ev.ops.len());
    let mut records = Vec::with_capacity(ev.ops.len());
    for op in &ev.ops {
        let consistent = match op.action.as_str() {
            "create" => op.cid.is_some() && op.prev.is_none(),
            "update" => op.cid.is_some() && op.prev.is_some(),
            "delete" => op.cid.is_none() && op.prev.is_some(),
            _ => false,
        };
        if !consistent || op.path.split('/').count() != 2 {
            return Err(CheckError::OpMismatch(op.path.clone()));
        }
        let record = op.cid.as_ref().map(get).transpose()?;
        inverse.push(RecordOp { path: op.path.clone(), old: op.prev, new: op.cid });
        records.push((op.clone(), record));
    }
    if let Some(prev_data) = ev.prev_data {
        // A tree node the inversion needs and the event lacks: the proof is incomplete.
        let (back, _) = invert(&store, commit.data, &inverse).map_err(|_| CheckError::InversionMismatch)?;
        if back != prev_data {
            return Err(CheckError::InversionMismatch);
        }
    }
    Ok(Verified { rev: ev.rev.clone(), data: commit.data, records })
}
