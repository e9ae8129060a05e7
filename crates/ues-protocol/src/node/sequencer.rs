//! The durable sequencer: the node's event log, which `com.atproto.sync.subscribeRepos`, `/ws`
//! and applications read.
//!
//! Every commit writes its event frame into `repo_seq` inside the same SQLite transaction that
//! moves the repository head (a commit hook), so the log can never miss or invent a commit.
//! Readers replay from the table after their cursor and then follow it; a `watch` channel wakes
//! them when new events land; the newest frames are shared from memory.

use std::sync::Arc;

use tokio::sync::watch;
use ues_sync::repo::accounts::{CommitHook, RepoEvent};
use ues_sync::repo::ipld::car::CarWriter;
use ues_sync::repo::ipld::storage::rusqlite::{self, OptionalExtension, params};
use ues_sync::repo::ipld::storage::{Migration, Sqlite};
use ues_sync::repo::ipld::{Ipld, dagcbor};
use ues_sync::repo::repo::Action;

/// The sequencer's table.
pub const MIGRATIONS: &[Migration] = &[Migration {
    id: "protocol/0002_sequencer",
    sql: "CREATE TABLE repo_seq (
        seq INTEGER PRIMARY KEY,
        did TEXT NOT NULL,
        kind TEXT NOT NULL,
        frame BLOB NOT NULL,
        at INTEGER NOT NULL
    );",
}];

/// Events fetched per batch for a subscriber.
const BATCH: i64 = 500;

pub(crate) fn now_iso() -> String {
    iso_from_millis(
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64),
    )
}

/// A Unix-milliseconds instant as an AT Protocol datetime (`2026-11-24T12:00:00.000Z`).
pub fn iso_from_millis(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z", rem / 3600, rem % 3600 / 60, rem % 60, ms.rem_euclid(1000))
}

pub(crate) fn map(entries: Vec<(&str, Ipld)>) -> Ipld {
    Ipld::Map(entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// A frame: DAG-CBOR header `{op, t}` followed by the DAG-CBOR body.
pub(crate) fn frame(t: &str, body: Ipld) -> Vec<u8> {
    let mut out = dagcbor::encode(&map(vec![("op", Ipld::Integer(1)), ("t", Ipld::String(t.into()))]));
    out.extend(dagcbor::encode(&body));
    out
}

/// An error frame (`op: -1`).
pub(crate) fn error_frame(error: &str, message: &str) -> Vec<u8> {
    let mut out = dagcbor::encode(&map(vec![("op", Ipld::Integer(-1))]));
    out.extend(dagcbor::encode(&map(vec![
        ("error", Ipld::String(error.into())),
        ("message", Ipld::String(message.into())),
    ])));
    out
}

fn car_of(root: &cid::Cid, blocks: &[(cid::Cid, Vec<u8>)]) -> Vec<u8> {
    let mut car = CarWriter::new(Vec::new(), std::slice::from_ref(root)).expect("writing to memory");
    for (c, d) in blocks {
        car.write_block(c, d).expect("writing to memory");
    }
    car.finish().expect("writing to memory")
}

/// Frames written by transactions not yet known to have committed, in the order written (see
/// [`Firehose::notify`]).
pub(crate) type Pending = Arc<parking_lot::Mutex<Vec<(i64, Arc<[u8]>)>>>;

/// Pending frames kept at most; past it they are dropped and the ring refills from SQLite.
const MAX_PENDING: usize = 65_536;

fn insert(
    pending: &Pending,
    tx: &rusqlite::Transaction<'_>,
    did: &str,
    kind: &str,
    body: impl FnOnce(i64) -> Ipld,
) -> rusqlite::Result<()> {
    let seq: i64 = tx.prepare_cached("SELECT COALESCE(MAX(seq), 0) + 1 FROM repo_seq")?.query_row([], |r| r.get(0))?;
    let bytes = frame(kind, body(seq));
    let at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    tx.prepare_cached("INSERT INTO repo_seq (seq, did, kind, frame, at) VALUES (?1, ?2, ?3, ?4, ?5)")?
        .execute(params![seq, did, kind, bytes, at])?;
    let mut p = pending.lock();
    if p.len() >= MAX_PENDING {
        p.clear();
    }
    p.push((seq, Arc::from(bytes)));
    Ok(())
}

fn commit_body(seq: i64, did: &str, res: &ues_sync::repo::repo::CommitResult, blocks: &[(cid::Cid, Vec<u8>)]) -> Ipld {
    let ops = res
        .ops
        .iter()
        .map(|op| {
            let action = match op.action {
                Action::Create => "create",
                Action::Update => "update",
                Action::Delete => "delete",
            };
            let mut m = vec![
                ("action", Ipld::String(action.into())),
                ("path", Ipld::String(op.path.clone())),
                ("cid", op.cid.map_or(Ipld::Null, Ipld::Link)),
            ];
            if let Some(prev) = op.prev {
                m.push(("prev", Ipld::Link(prev)));
            }
            map(m)
        })
        .collect();
    let mut body = vec![
        ("seq", Ipld::Integer(seq as i128)),
        ("rebase", Ipld::Bool(false)),
        ("tooBig", Ipld::Bool(false)),
        ("repo", Ipld::String(did.into())),
        ("commit", Ipld::Link(res.cid)),
        ("rev", Ipld::String(res.commit.rev.to_string())),
        ("since", res.since.as_ref().map_or(Ipld::Null, |s| Ipld::String(s.to_string()))),
        ("blocks", Ipld::Bytes(car_of(&res.cid, blocks))),
        ("ops", Ipld::List(ops)),
        ("blobs", Ipld::List(vec![])),
        ("time", Ipld::String(now_iso())),
    ];
    if let Some(p) = res.prev_data {
        body.push(("prevData", Ipld::Link(p)));
    }
    map(body)
}

/// The commit hook that sequences events: account creation emits `#identity`, `#account`,
/// `#commit` and `#sync`; every later commit a `#commit`.
pub(crate) fn sequencer_hook(pending: Pending) -> CommitHook {
    Box::new(move |tx, event| match event {
        RepoEvent::Created { did, handle, commit } => {
            let d = did.as_str();
            let time = now_iso();
            insert(&pending, tx, d, "#identity", |seq| {
                map(vec![
                    ("seq", Ipld::Integer(seq as i128)),
                    ("did", Ipld::String(d.into())),
                    ("time", Ipld::String(time.clone())),
                    ("handle", Ipld::String(handle.to_string())),
                ])
            })?;
            insert(&pending, tx, d, "#account", |seq| {
                map(vec![
                    ("seq", Ipld::Integer(seq as i128)),
                    ("did", Ipld::String(d.into())),
                    ("time", Ipld::String(time.clone())),
                    ("active", Ipld::Bool(true)),
                ])
            })?;
            insert(&pending, tx, d, "#commit", |seq| commit_body(seq, d, commit, &commit.blocks))?;
            let commit_block: Vec<_> = commit.blocks.iter().filter(|b| b.0 == commit.cid).cloned().collect();
            insert(&pending, tx, d, "#sync", |seq| {
                map(vec![
                    ("seq", Ipld::Integer(seq as i128)),
                    ("did", Ipld::String(d.into())),
                    ("blocks", Ipld::Bytes(car_of(&commit.cid, &commit_block))),
                    ("rev", Ipld::String(commit.commit.rev.to_string())),
                    ("time", Ipld::String(time.clone())),
                ])
            })
        }
        RepoEvent::Synced { did, head, rev, commit_block } => insert(&pending, tx, did.as_str(), "#sync", |seq| {
            map(vec![
                ("seq", Ipld::Integer(seq as i128)),
                ("did", Ipld::String(did.to_string())),
                ("blocks", Ipld::Bytes(car_of(head, &[(**head, commit_block.to_vec())]))),
                ("rev", Ipld::String(rev.to_string())),
                ("time", Ipld::String(now_iso())),
            ])
        }),
        RepoEvent::Identity { did, handle } => insert(&pending, tx, did.as_str(), "#identity", |seq| {
            map(vec![
                ("seq", Ipld::Integer(seq as i128)),
                ("did", Ipld::String(did.to_string())),
                ("time", Ipld::String(now_iso())),
                ("handle", Ipld::String(handle.to_string())),
            ])
        }),
        RepoEvent::Status { did, status } => insert(&pending, tx, did.as_str(), "#account", |seq| {
            let mut m = vec![
                ("seq", Ipld::Integer(seq as i128)),
                ("did", Ipld::String(did.to_string())),
                ("time", Ipld::String(now_iso())),
                ("active", Ipld::Bool(*status == "active")),
            ];
            if *status != "active" {
                m.push(("status", Ipld::String(status.to_string())));
            }
            map(m)
        }),
        RepoEvent::Committed { did, commit, blocks } => {
            insert(&pending, tx, did.as_str(), "#commit", |seq| commit_body(seq, did.as_str(), commit, blocks))
        }
    })
}

/// Wakes subscribers when events land.
pub struct Firehose {
    pub(crate) latest: watch::Sender<i64>,
    pub(crate) closing: watch::Sender<bool>,
    pub(crate) db: Arc<Sqlite>,
    /// The most recent frames, shared by every live subscriber: a commit is read from SQLite
    /// once, not once per subscriber. Bounded by [`RING_FRAMES`].
    ring: parking_lot::RwLock<std::collections::VecDeque<(i64, Arc<[u8]>)>>,
    /// Serialises refills of the ring.
    refill: parking_lot::Mutex<()>,
    /// Frames the sequencer hook wrote, published to the ring once committed.
    pending: Pending,
    /// A subscriber further behind than this many events is dropped.
    pub max_lag: i64,
}

/// Frames kept in memory for live subscribers.
const RING_FRAMES: usize = 4096;

impl Firehose {
    /// A firehose over the sequencer table in `db`.
    pub fn new(db: Arc<Sqlite>, pending: Pending) -> Self {
        let latest = latest_seq(&db).unwrap_or(0);
        Self {
            latest: watch::channel(latest).0,
            closing: watch::channel(false).0,
            db,
            ring: parking_lot::RwLock::new(std::collections::VecDeque::with_capacity(RING_FRAMES)),
            refill: parking_lot::Mutex::new(()),
            pending,
            max_lag: 100_000,
        }
    }

    /// Tells every subscriber the server is going away: each gets a close frame (1001).
    pub fn close_all(&self) {
        self.closing.send_replace(true);
    }

    /// Deletes events older than `window` (the backfill window), always keeping the newest so
    /// that sequence numbers keep growing. A subscriber asking for a cursor before the oldest
    /// kept event gets `#info OutdatedCursor`, then everything still kept. Returns how many went.
    pub fn prune(&self, window: std::time::Duration) -> Result<usize, ues_sync::repo::ipld::storage::Error> {
        let cutoff = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64)
            .saturating_sub(window.as_millis() as i64);
        self.db.write(|tx| {
            Ok(tx.execute("DELETE FROM repo_seq WHERE at < ?1 AND seq < (SELECT max(seq) FROM repo_seq)", [cutoff])?)
        })
    }

    /// Wakes on every new latest sequence number.
    pub fn watch_latest(&self) -> watch::Receiver<i64> {
        self.latest.subscribe()
    }

    /// Wakes when the server is shutting down.
    pub(crate) fn watch_closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The index database (events are read from it).
    pub(crate) fn db(&self) -> &Arc<Sqlite> {
        &self.db
    }

    /// The latest sequence number known.
    pub fn latest(&self) -> watch::Ref<'_, i64> {
        self.latest.borrow()
    }

    /// Moves the events committed since the last call into the ring (once, for everyone) and
    /// wakes subscribers. Called after every commit.
    ///
    /// The frames come from the sequencer hook's pending list when it holds exactly the
    /// committed events after the ring's newest (the usual case: no SQLite read per commit);
    /// otherwise (a rolled-back transaction left a frame whose number was reused, the list
    /// overflowed, another process wrote) they are read back from SQLite.
    pub fn notify(&self) {
        let _one_refill = self.refill.lock();
        let after = self.ring.read().back().map_or(*self.latest.borrow(), |(seq, _)| *seq);
        let Ok(committed) = latest_seq(&self.db) else { return };
        // The last frame written under a number is the committed one: numbers are reused only
        // after a rollback, and never once a transaction holding them committed.
        let mut fresh = std::collections::BTreeMap::new();
        self.pending.lock().retain(|(seq, frame)| {
            if *seq > committed {
                return true;
            }
            if *seq > after {
                fresh.insert(*seq, frame.clone());
            }
            false
        });
        let complete =
            fresh.len() as i64 == committed - after && fresh.keys().next().is_none_or(|first| *first == after + 1);
        let mut newest = after;
        if complete {
            let mut ring = self.ring.write();
            for (seq, frame) in fresh {
                if ring.len() == RING_FRAMES {
                    ring.pop_front();
                }
                newest = seq;
                ring.push_back((seq, frame));
            }
        } else {
            let mut after = after;
            // Bounded: at most a few batches per notification.
            for _ in 0..8 {
                let Ok(batch) = events_after(&self.db, after) else { break };
                if batch.is_empty() {
                    break;
                }
                let mut ring = self.ring.write();
                for (seq, frame) in batch {
                    if ring.len() == RING_FRAMES {
                        ring.pop_front();
                    }
                    after = seq;
                    newest = seq;
                    ring.push_back((seq, Arc::from(frame)));
                }
            }
        }
        self.latest.send_if_modified(|cur| {
            let changed = newest > *cur;
            *cur = (*cur).max(newest);
            changed
        });
    }

    /// Frames after `after` from memory, when the ring still holds the next one.
    pub(crate) fn ring_after(&self, after: i64) -> Option<Vec<(i64, Arc<[u8]>)>> {
        let ring = self.ring.read();
        let first = ring.front()?.0;
        if after + 1 < first {
            return None; // older than the ring: replay from SQLite
        }
        let skip = ring.partition_point(|(seq, _)| *seq <= after);
        Some(ring.iter().skip(skip).take(BATCH as usize).cloned().collect())
    }
}

fn latest_seq(db: &Sqlite) -> rusqlite::Result<i64> {
    db.read(|c| c.prepare_cached("SELECT COALESCE(MAX(seq), 0) FROM repo_seq")?.query_row([], |r| r.get(0)))
}

pub(crate) fn oldest_seq(db: &Sqlite) -> rusqlite::Result<Option<i64>> {
    db.read(|c| c.query_row("SELECT MIN(seq) FROM repo_seq", [], |r| r.get(0)).optional().map(Option::flatten))
}

pub(crate) fn events_after(db: &Sqlite, after: i64) -> rusqlite::Result<Vec<(i64, Vec<u8>)>> {
    db.read(|c| {
        let mut st = c.prepare_cached("SELECT seq, frame FROM repo_seq WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![after, BATCH], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect()
    })
}

/// An event of the log, as applications read it (see [`read_events`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    /// Its sequence number (increasing, never reused).
    pub seq: i64,
    /// The account it is about.
    pub did: String,
    /// When it happened (a commit's `time`, Unix milliseconds), when the event says.
    pub time_ms: Option<i64>,
    /// What happened.
    pub what: Happened,
}

/// What an event says happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Happened {
    /// A commit: the record operations it made.
    Commit(Vec<RecordOp>),
    /// The account's handle (or identity) changed.
    Identity,
    /// The account's status changed (`active`, `deactivated`, `takendown`, `deleted`, ...).
    Account {
        /// The status.
        status: String,
    },
    /// The repository's head moved without record operations to tell (an import, a rotation).
    Sync,
}

/// One record operation of a commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordOp {
    /// `create`, `update` or `delete`.
    pub action: String,
    /// The collection.
    pub collection: String,
    /// The record key.
    pub rkey: String,
    /// The record's new CID (none for a delete).
    pub cid: Option<String>,
    /// The record's DAG-CBOR bytes (a create or an update), from the event's own blocks,
    /// checked against `cid`.
    pub record: Option<Arc<[u8]>>,
}

/// The body of a stored frame (what follows its `{op, t}` header).
fn frame_body<'a>(kind: &str, frame: &'a [u8]) -> Option<&'a [u8]> {
    let header = dagcbor::encode(&map(vec![("op", Ipld::Integer(1)), ("t", Ipld::String(kind.into()))]));
    frame.strip_prefix(header.as_slice())
}

fn decode_event(seq: i64, did: String, kind: &str, frame: &[u8]) -> LogEvent {
    let body = frame_body(kind, frame).and_then(|b| dagcbor::decode_atproto(b).ok());
    let field = |k: &str| match &body {
        Some(Ipld::Map(m)) => m.get(k).cloned(),
        _ => None,
    };
    let time_ms = match field("time") {
        Some(Ipld::String(t)) => ues_sync::repo::syntax::Datetime::new(&t).ok().and_then(|d| d.unix_millis()),
        _ => None,
    };
    let what = match kind {
        "#commit" => {
            let blocks = match field("blocks") {
                Some(Ipld::Bytes(car)) => commit_blocks(&car),
                _ => std::collections::HashMap::new(),
            };
            let ops = match field("ops") {
                Some(Ipld::List(ops)) => ops
                    .iter()
                    .filter_map(|op| {
                        let Ipld::Map(m) = op else { return None };
                        let text = |k: &str| match m.get(k) {
                            Some(Ipld::String(s)) => Some(s.clone()),
                            _ => None,
                        };
                        let (collection, rkey) =
                            text("path")?.split_once('/').map(|(c, r)| (c.to_string(), r.to_string()))?;
                        let link = match m.get("cid") {
                            Some(Ipld::Link(c)) => Some(*c),
                            _ => None,
                        };
                        // Only the records' blocks are hashed (not the commit's and the tree's).
                        let record = link.and_then(|c| {
                            let bytes = blocks.get(&c)?;
                            (ues_sync::repo::ipld::cid_sha256(c.codec(), bytes) == c).then(|| Arc::from(&bytes[..]))
                        });
                        let cid = link.map(|c| c.to_string());
                        Some(RecordOp { action: text("action")?, collection, rkey, cid, record })
                    })
                    .collect(),
                _ => Vec::new(),
            };
            Happened::Commit(ops)
        }
        "#identity" => Happened::Identity,
        "#account" => {
            let status = match (field("active"), field("status")) {
                (_, Some(Ipld::String(s))) => s,
                (Some(Ipld::Bool(false)), _) => "deactivated".to_string(),
                _ => "active".to_string(),
            };
            Happened::Account { status }
        }
        _ => Happened::Sync,
    };
    LogEvent { seq, did, time_ms, what }
}

/// The blocks of a commit event's CAR, by CID (not checked against their CIDs here).
fn commit_blocks(car: &[u8]) -> std::collections::HashMap<cid::Cid, Vec<u8>> {
    let mut out = std::collections::HashMap::new();
    let Ok(reader) = ues_sync::repo::ipld::car::CarReader::new(car) else { return out };
    for block in reader {
        let Ok((cid, bytes)) = block else { break };
        out.insert(cid, bytes);
    }
    out
}

/// Up to `limit` events after `after`, oldest first, decoded for applications.
pub fn read_events(db: &Sqlite, after: i64, limit: usize) -> rusqlite::Result<Vec<LogEvent>> {
    db.read(|c| {
        let mut st =
            c.prepare_cached("SELECT seq, did, kind, frame FROM repo_seq WHERE seq > ?1 ORDER BY seq LIMIT ?2")?;
        let rows = st.query_map(params![after, limit as i64], |r| {
            let (seq, did, kind, frame): (i64, String, String, Vec<u8>) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
            Ok(decode_event(seq, did, &kind, &frame))
        })?;
        rows.collect()
    })
}

/// The oldest event still in the log (older ones were pruned), if any.
pub fn first_seq(db: &Sqlite) -> rusqlite::Result<Option<i64>> {
    oldest_seq(db)
}

/// The newest event's sequence number (0 when the log is empty), read on `conn`: a
/// transaction of the node's database, so a caller can pair it with what else it reads there.
pub fn latest_seq_in(conn: &rusqlite::Connection) -> rusqlite::Result<i64> {
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM repo_seq", [], |r| r.get(0))
}
