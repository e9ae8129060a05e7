//! Range-based set reconciliation of two replicas' logs, and the transfer of what each lacks.
//!
//! The log is ordered by position (HLC, then id prefix). A question names a range and either
//! splits it into parts with a 16-byte fingerprint and a count per part, or lists the asker's
//! ids there (4-byte prefixes unless the asker's own prefixes collide). The answerer compares:
//! equal parts are settled, a part the peer holds nothing of is pushed whole, a part the
//! answerer holds nothing of is asked for with an empty list, small parts are listed, large
//! ones split again. Ids answered with a bitmap of wants; entries travel in zstd batches in the
//! same turns. How finely to split is chosen from the count difference, which for one-sided
//! differences is exact, so most differences are pinned in two levels below the first
//! question: three round trips for scattered differences in a million entries.
//!
//! Messages are `proto/ues_sync.proto`; every field a peer sends is bounded and checked, and a
//! violation ends the session with [`SyncError::Protocol`] before anything else is applied.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};

use prost::Message;
use ues_repo::syntax::Did;

use crate::entry::EntryId;
use crate::proto;
use crate::replica::{ApplyReport, LogKey, Received, Replica, ReplicaError};

/// Largest message a peer may send (compressed entries included).
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;
/// Largest decompressed entry batch.
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Most parts in one split, ids in one list, questions in one turn.
pub const MAX_PARTS: usize = 4_096;
/// Most ids in one list.
pub const MAX_IDS: usize = 65_536;
/// Most questions (answers) in one turn.
pub const MAX_QUESTIONS: usize = 65_536;
/// Most DIDs in one scope.
pub const MAX_SCOPE: usize = 100_000;

/// Tuning.
#[derive(Debug, Clone, Copy)]
pub struct SyncConfig {
    /// Parts of the first question.
    pub first_parts: usize,
    /// Entries per part when a range is split into parts meant to be listed next; a range
    /// holding up to four times this many of the asker's entries is listed, not split (part
    /// sizes vary with the timestamps' spread).
    pub leaf: usize,
    /// Parts per estimated difference when a large range is split.
    pub parts_per_difference: usize,
    /// Most parts of one split.
    pub max_parts: usize,
    /// Bytes of questions in one turn before the rest is deferred to later turns.
    pub question_budget: usize,
    /// Bytes of entries (uncompressed) sent in one turn.
    pub batch_bytes: usize,
    /// zstd level of entry batches.
    pub zstd_level: i32,
}

impl SyncConfig {
    /// The defaults, usable in constants.
    pub const DEFAULT: SyncConfig = SyncConfig {
        first_parts: 16,
        leaf: 48,
        parts_per_difference: 12,
        max_parts: 256,
        question_budget: 192 << 10,
        batch_bytes: 192 << 10,
        zstd_level: 3,
    };
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Errors that end a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SyncError {
    /// The peer broke the protocol (malformed, oversized or inconsistent message).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer refused the session.
    #[error("peer refused: {0}")]
    Rejected(String),
    /// The peer may not sync this account with us (its device is not an authorized device of
    /// it here, or the account is not replicated here).
    #[error("not authorized to sync {0}")]
    NotAuthorized(Did),
    /// Local storage failed.
    #[error(transparent)]
    Replica(Box<ReplicaError>),
}

impl From<ReplicaError> for SyncError {
    fn from(e: ReplicaError) -> Self {
        SyncError::Replica(Box::new(e))
    }
}

fn violation(msg: impl Into<String>) -> SyncError {
    SyncError::Protocol(msg.into())
}

/// A half-open range of positions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    lo: u128,
    hi: u128,
}

/// The set of accounts a session reconciles, and its 16-byte digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    dids: Vec<Did>,
    digest: [u8; 16],
}

impl Scope {
    /// A scope over these accounts (order and duplicates do not matter).
    pub fn new(dids: impl IntoIterator<Item = Did>) -> Self {
        let set: BTreeSet<Did> = dids.into_iter().collect();
        let dids: Vec<Did> = set.into_iter().collect();
        let mut h = blake3::Hasher::new();
        for d in &dids {
            h.update(d.as_str().as_bytes());
            h.update(b"\n");
        }
        let mut digest = [0; 16];
        digest.copy_from_slice(&h.finalize().as_bytes()[..16]);
        Scope { dids, digest }
    }

    /// The accounts.
    pub fn dids(&self) -> &[Did] {
        &self.dids
    }

    /// The digest peers use to name the scope.
    pub fn digest(&self) -> [u8; 16] {
        self.digest
    }
}

/// Scopes a responder has been told about, by digest (bounded: the oldest is forgotten).
#[derive(Debug, Default)]
pub struct ScopeCache {
    scopes: HashMap<[u8; 16], Scope>,
    order: VecDeque<[u8; 16]>,
}

impl ScopeCache {
    /// Most scopes remembered.
    pub const CAPACITY: usize = 256;

    /// Remembers a scope.
    pub fn insert(&mut self, scope: Scope) {
        if self.scopes.insert(scope.digest, scope.clone()).is_none() {
            self.order.push_back(scope.digest);
            if self.order.len() > Self::CAPACITY
                && let Some(old) = self.order.pop_front()
            {
                self.scopes.remove(&old);
            }
        }
    }

    fn get(&self, digest: &[u8]) -> Option<&Scope> {
        <[u8; 16]>::try_from(digest).ok().and_then(|d| self.scopes.get(&d))
    }
}

/// Membership of the replica's accounts in a scope (by the replica's account index).
struct ScopeFilter {
    dids: HashSet<Did>,
    known: Vec<bool>,
}

impl ScopeFilter {
    fn new(scope: &Scope) -> Self {
        Self { dids: scope.dids.iter().cloned().collect(), known: Vec::new() }
    }

    fn refresh(&mut self, rep: &Replica) {
        let all = rep.dids();
        while self.known.len() < all.len() {
            let d = &all[self.known.len()];
            self.known.push(self.dids.contains(d));
        }
    }

    fn has(&self, idx: u32) -> bool {
        self.known.get(idx as usize).copied().unwrap_or(false)
    }
}

/// Transfer statistics of one side of a session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Messages sent.
    pub messages_sent: u64,
    /// Bytes sent, all of it.
    pub bytes_sent: u64,
    /// Of which compressed entry batches.
    pub entry_bytes_sent: u64,
    /// Bytes received.
    pub bytes_received: u64,
    /// Entries sent.
    pub entries_sent: u64,
    /// Entries received and newly applied.
    pub entries_applied: u64,
    /// Entries received and refused.
    pub entries_refused: u64,
}

/// What we asked the peer last turn, in order, to read its answers.
enum Asked {
    Split { bounds: Vec<u128> },
    Ids { keys: Vec<LogKey> },
    Nothing,
}

/// How the session ended from this side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Still running.
    Running,
    /// Both sides hold the same set: the peer's final fingerprint equals ours.
    Converged,
    /// Finished, but the fingerprints differ (entries were refused, or ids collided): run
    /// another session.
    Diverged,
    /// Finished without a fingerprint to compare (the peer sent the last entries).
    Finished,
}

/// One side of a reconciliation session.
pub struct Session {
    cfg: SyncConfig,
    scope: Option<Scope>,
    filter: Option<ScopeFilter>,
    initiator: bool,
    asked: Vec<Asked>,
    outgoing: BTreeSet<(bool, LogKey)>,
    deferred: VecDeque<Range>,
    stats: SessionStats,
    outcome: Outcome,
    peer_span: Option<(u128, u128)>,
    last_report: ApplyReport,
    received_any_batch: u64,
}

fn fp_of(sum: &[u64; 4], count: u64) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    for limb in sum {
        h.update(&limb.to_le_bytes());
    }
    h.update(&count.to_le_bytes());
    let mut out = [0; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn add_id(sum: &mut [u64; 4], id: &EntryId) {
    let mut carry = 0u64;
    for (i, limb) in sum.iter_mut().enumerate() {
        let v = u64::from_le_bytes(id[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        let (a, c1) = limb.overflowing_add(v);
        let (b, c2) = a.overflowing_add(carry);
        *limb = b;
        carry = u64::from(c1) + u64::from(c2);
    }
}

/// Fingerprint of a set of ids (order-independent), and its size.
pub fn fingerprint<'a>(ids: impl IntoIterator<Item = &'a EntryId>) -> ([u8; 16], u64) {
    let mut sum = [0u64; 4];
    let mut n = 0;
    for id in ids {
        add_id(&mut sum, id);
        n += 1;
    }
    (fp_of(&sum, n), n)
}

fn pos_bytes(p: u128) -> Vec<u8> {
    p.to_be_bytes().to_vec()
}

fn pos_from(b: &[u8]) -> Result<u128, SyncError> {
    <[u8; 16]>::try_from(b).map(u128::from_be_bytes).map_err(|_| violation("a position must be 16 bytes"))
}

/// At most one part per position, at most [`MAX_PARTS`].
fn clamp_parts(r: Range, parts: usize) -> usize {
    parts.min((r.hi - r.lo).min(MAX_PARTS as u128) as usize).max(1)
}

/// Bounds of `parts` equal-width parts of a range.
fn equal_bounds(r: Range, parts: usize) -> Vec<u128> {
    let w = r.hi - r.lo;
    let p = parts as u128;
    let (q, rem) = (w / p, w % p);
    (0..=p).map(|i| if i == p { r.hi } else { r.lo + q * i + rem * i / p }).collect()
}

fn bit(bits: &[u8], i: usize) -> bool {
    bits.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
}

fn set_bit(bits: &mut Vec<u8>, i: usize) {
    if bits.len() <= i / 8 {
        bits.resize(i / 8 + 1, 0);
    }
    bits[i / 8] |= 1 << (i % 8);
}

impl Session {
    fn new(cfg: SyncConfig, scope: Option<Scope>, initiator: bool) -> Self {
        Session {
            cfg,
            filter: scope.as_ref().map(ScopeFilter::new),
            scope,
            initiator,
            asked: Vec::new(),
            outgoing: BTreeSet::new(),
            deferred: VecDeque::new(),
            stats: SessionStats::default(),
            outcome: Outcome::Running,
            peer_span: None,
            last_report: ApplyReport::default(),
            received_any_batch: 0,
        }
    }

    /// Starts a session as the initiator: the Hello to send. `with_dids` lists the DIDs (when
    /// the peer may not know the scope's digest).
    pub fn initiate(rep: &Replica, scope: Scope, cfg: SyncConfig, with_dids: bool) -> (Session, Vec<u8>) {
        let mut s = Session::new(cfg, Some(scope), true);
        s.refresh(rep);
        let (first, last) = s.span(rep);
        let mut hello = proto::Hello {
            version: 1,
            scope: s.scope.as_ref().expect("set").digest.to_vec(),
            dids: if with_dids {
                s.scope.as_ref().expect("set").dids.iter().map(|d| d.to_string()).collect()
            } else {
                vec![]
            },
            ..Default::default()
        };
        if let (Some(first), Some(last)) = (first, last) {
            hello.first = pos_bytes(first);
            hello.last = pos_bytes(last);
            let range = Range { lo: first, hi: last + 1 };
            let (q, asked) = s.ask(rep, range, None, None, cfg.first_parts);
            hello.question = Some(q);
            s.asked.push(asked);
        }
        let bytes = proto::SyncMessage { body: Some(proto::sync_message::Body::Hello(hello)) }.encode_to_vec();
        s.stats.messages_sent += 1;
        s.stats.bytes_sent += bytes.len() as u64;
        (s, bytes)
    }

    /// Starts a session as the responder, from the initiator's Hello. Returns the session
    /// (when accepted) and the reply. Every account is open to the peer: see
    /// [`Session::respond_for`].
    pub fn respond(
        rep: &mut Replica,
        scopes: &mut ScopeCache,
        cfg: SyncConfig,
        hello: &[u8],
    ) -> Result<(Option<Session>, Vec<u8>), SyncError> {
        Self::respond_for(rep, scopes, cfg, hello, &|_, _| true)
    }

    /// As [`Session::respond`], for a peer that may sync only the accounts `may_sync` allows:
    /// a scope naming any other is refused with [`SyncError::NotAuthorized`] before anything
    /// of it is read or sent.
    pub fn respond_for(
        rep: &mut Replica,
        scopes: &mut ScopeCache,
        cfg: SyncConfig,
        hello: &[u8],
        may_sync: &dyn Fn(&Replica, &Did) -> bool,
    ) -> Result<(Option<Session>, Vec<u8>), SyncError> {
        if hello.len() > MAX_MESSAGE_BYTES {
            return Err(violation("message too large"));
        }
        let msg = proto::SyncMessage::decode(hello).map_err(|e| violation(e.to_string()))?;
        let Some(proto::sync_message::Body::Hello(h)) = msg.body else {
            return Err(violation("a session starts with Hello"));
        };
        if h.version != 1 {
            return Ok((None, reject(&format!("unsupported version {}", h.version), false)));
        }
        if !h.dids.is_empty() {
            if h.dids.len() > MAX_SCOPE {
                return Err(violation("scope too large"));
            }
            let dids = h.dids.iter().map(|d| Did::new(d.as_str())).collect::<Result<Vec<_>, _>>();
            let scope = Scope::new(dids.map_err(|e| violation(e.to_string()))?);
            if scope.digest[..] != h.scope[..] {
                return Err(violation("scope digest does not match its DIDs"));
            }
            // Only a scope the peer may sync is remembered (strangers cannot crowd out others').
            if let Some(did) = scope.dids.iter().find(|d| !may_sync(rep, d)) {
                return Err(SyncError::NotAuthorized(did.clone()));
            }
            scopes.insert(scope);
        }
        let Some(scope) = scopes.get(&h.scope).cloned() else {
            return Ok((None, reject("unknown scope", true)));
        };
        if let Some(did) = scope.dids.iter().find(|d| !may_sync(rep, d)) {
            return Err(SyncError::NotAuthorized(did.clone()));
        }
        let mut s = Session::new(cfg, Some(scope), false);
        s.stats.bytes_received += hello.len() as u64;
        s.refresh(rep);
        let mut turn = proto::Turn::default();
        let mut answers_bytes = 0;
        match (h.question, h.first.is_empty()) {
            (Some(q), false) => {
                let first = pos_from(&h.first)?;
                let last = pos_from(&h.last)?;
                if last < first || last == u128::MAX {
                    return Err(violation("bad span"));
                }
                s.peer_span = Some((first, last));
                // What lies outside the initiator's span, it lacks.
                s.queue_range(rep, Range { lo: 0, hi: first });
                s.queue_range(rep, Range { lo: last + 1, hi: u128::MAX });
                let mut next_asked = Vec::new();
                let answer =
                    s.answer(rep, Range { lo: first, hi: last + 1 }, q, &mut next_asked, &mut answers_bytes)?;
                turn.answers.push(answer);
                s.asked = next_asked;
            }
            (None, true) => s.queue_range(rep, Range { lo: 0, hi: u128::MAX }),
            _ => return Err(violation("a span without a question, or a question without a span")),
        }
        let bytes = s.finish_turn(rep, turn, false, false)?;
        Ok((Some(s), bytes.expect("the responder always replies to Hello")))
    }

    /// Handles the peer's message; returns the reply, or `None` when this side has nothing
    /// left to say (the session is over for it).
    pub fn receive(&mut self, rep: &mut Replica, bytes: &[u8]) -> Result<Option<Vec<u8>>, SyncError> {
        if bytes.len() > MAX_MESSAGE_BYTES {
            return Err(violation("message too large"));
        }
        self.stats.bytes_received += bytes.len() as u64;
        let msg = proto::SyncMessage::decode(bytes).map_err(|e| violation(e.to_string()))?;
        let turn = match msg.body {
            Some(proto::sync_message::Body::Turn(t)) => t,
            Some(proto::sync_message::Body::Reject(r)) => return Err(SyncError::Rejected(r.reason)),
            _ => return Err(violation("expected a Turn")),
        };
        self.refresh(rep);
        // Entries first: the answers below then see them.
        let batch = self.take_batch(&turn.ops)?;
        if !batch.is_empty() {
            self.received_any_batch += 1;
            let report = rep.apply_received(batch);
            self.stats.entries_applied += report.applied as u64;
            self.stats.entries_refused += report.refused.len() as u64;
            self.last_report = report;
            self.refresh(rep);
        }
        // Our questions, in order, against the peer's answers.
        let asked = std::mem::take(&mut self.asked);
        let expected = asked.iter().filter(|a| !matches!(a, Asked::Nothing)).count();
        if turn.answers.len() != expected {
            return Err(violation(format!("{} answers to {expected} questions", turn.answers.len())));
        }
        if turn.answers.len() + turn.extra.len() > MAX_QUESTIONS {
            return Err(violation("too many questions"));
        }
        let mut out = proto::Turn::default();
        let mut next_asked = Vec::new();
        let mut qbytes = 0usize;
        let mut answers = turn.answers.into_iter();
        for a in asked {
            match a {
                Asked::Nothing => {}
                Asked::Ids { keys } => {
                    let ans = answers.next().expect("counted");
                    for (i, k) in keys.iter().enumerate() {
                        if bit(&ans.want, i) {
                            self.queue(rep, *k);
                        }
                    }
                    if !ans.questions.is_empty() || !ans.mismatch.is_empty() {
                        return Err(violation("an id list is answered with wants only"));
                    }
                }
                Asked::Split { bounds } => {
                    let ans = answers.next().expect("counted");
                    let parts = bounds.len() - 1;
                    if ans.mismatch.len() > parts.div_ceil(8) {
                        return Err(violation("mismatch bitmap longer than the parts"));
                    }
                    let set: Vec<usize> = (0..parts).filter(|i| bit(&ans.mismatch, *i)).collect();
                    if set.len() != ans.questions.len() {
                        return Err(violation("one question per mismatched part"));
                    }
                    for (i, q) in set.into_iter().zip(ans.questions) {
                        let r = Range { lo: bounds[i], hi: bounds[i + 1] };
                        if let Some(a) = self.answer_question(rep, r, q, &mut next_asked, &mut qbytes)? {
                            out.answers.push(a);
                        }
                    }
                }
            }
        }
        for rq in turn.extra {
            let r = Range { lo: pos_from(&rq.lo)?, hi: pos_from(&rq.hi)? };
            if r.hi <= r.lo {
                return Err(violation("empty range"));
            }
            let q = rq.question.ok_or_else(|| violation("a ranged question without a question"))?;
            if let Some(a) = self.answer_question(rep, r, q, &mut next_asked, &mut qbytes)? {
                out.answers.push(a);
            }
        }
        self.asked = next_asked;
        self.finish_turn(rep, out, turn.more, turn.done).inspect(|reply| {
            if reply.is_none() {
                let moved = self.stats.entries_sent + self.stats.entries_applied + self.stats.entries_refused;
                self.outcome = match turn.final_fingerprint.len() {
                    16 if turn.final_fingerprint == self.whole_fingerprint(rep) => Outcome::Converged,
                    16 => Outcome::Diverged,
                    // Nothing moved either way: every range compared equal.
                    _ if moved == 0 && self.received_any_batch == 0 => Outcome::Converged,
                    _ => Outcome::Finished,
                };
            }
        })
    }

    /// Answers one question over `r` (None when it needs no answer).
    fn answer_question(
        &mut self,
        rep: &Replica,
        r: Range,
        q: proto::Question,
        next_asked: &mut Vec<Asked>,
        qbytes: &mut usize,
    ) -> Result<Option<proto::Answer>, SyncError> {
        match q.kind {
            Some(proto::question::Kind::Settled(_)) => Ok(None),
            None => Err(violation("empty question")),
            Some(_) => self.answer(rep, r, q, next_asked, qbytes).map(Some),
        }
    }

    fn answer(
        &mut self,
        rep: &Replica,
        r: Range,
        q: proto::Question,
        next_asked: &mut Vec<Asked>,
        qbytes: &mut usize,
    ) -> Result<proto::Answer, SyncError> {
        match q.kind {
            Some(proto::question::Kind::Split(sp)) => {
                let bounds = if sp.cuts.is_empty() {
                    if sp.parts == 0 || sp.parts as usize > MAX_PARTS {
                        return Err(violation("bad part count"));
                    }
                    let bounds = equal_bounds(r, clamp_parts(r, sp.parts as usize));
                    if bounds.len() - 1 != sp.parts as usize {
                        return Err(violation("more parts than positions"));
                    }
                    bounds
                } else {
                    if sp.cuts.len() % 16 != 0 || sp.cuts.len() / 16 >= MAX_PARTS {
                        return Err(violation("bad cuts"));
                    }
                    let mut b = vec![r.lo];
                    for c in sp.cuts.chunks(16) {
                        let c = pos_from(c)?;
                        if c <= *b.last().expect("non-empty") || c >= r.hi {
                            return Err(violation("cuts must ascend inside the range"));
                        }
                        b.push(c);
                    }
                    b.push(r.hi);
                    b
                };
                let parts = bounds.len() - 1;
                if sp.fingerprints.len() != parts * 16 || sp.counts.len() != parts {
                    return Err(violation("one fingerprint and one count per part"));
                }
                let (mine, counts) = self.split_fps(rep, &bounds);
                let mut ans = proto::Answer::default();
                for i in 0..parts {
                    if mine[i][..] == sp.fingerprints[i * 16..i * 16 + 16] {
                        continue;
                    }
                    set_bit(&mut ans.mismatch, i);
                    let part = Range { lo: bounds[i], hi: bounds[i + 1] };
                    let peer = sp.counts[i];
                    let question = if peer == 0 {
                        // The peer holds nothing here: all of ours goes, nothing to ask.
                        self.queue_range(rep, part);
                        next_asked.push(Asked::Nothing);
                        settled(false)
                    } else if *qbytes > self.cfg.question_budget {
                        self.deferred.push_back(part);
                        next_asked.push(Asked::Nothing);
                        settled(true)
                    } else {
                        let (q, a) = self.ask(rep, part, Some(counts[i]), Some(peer), 0);
                        next_asked.push(a);
                        q
                    };
                    *qbytes += question.encoded_len();
                    ans.questions.push(question);
                }
                Ok(ans)
            }
            Some(proto::question::Kind::Ids(ids)) => {
                let w = ids.width as usize;
                if !matches!(w, 4 | 8 | 32) || ids.prefixes.len() % w != 0 || ids.prefixes.len() / w > MAX_IDS {
                    return Err(violation("bad id list"));
                }
                let theirs: Vec<&[u8]> = ids.prefixes.chunks(w).collect();
                let index: HashMap<&[u8], usize> = theirs.iter().enumerate().map(|(i, p)| (*p, i)).collect();
                let mut matched = vec![false; theirs.len()];
                let mine: Vec<LogKey> = self.keys(rep, r).collect();
                for k in mine {
                    match index.get(&k.id[..w]) {
                        Some(i) => matched[*i] = true,
                        None => self.queue(rep, k),
                    }
                }
                let mut ans = proto::Answer::default();
                for (i, m) in matched.iter().enumerate() {
                    if !m {
                        set_bit(&mut ans.want, i);
                    }
                }
                Ok(ans)
            }
            _ => Err(violation("unanswerable question")),
        }
    }

    /// A question about range `r`: ids when we hold few entries there, else a split.
    fn ask(
        &self,
        rep: &Replica,
        r: Range,
        mine: Option<u64>,
        peer: Option<u64>,
        parts: usize,
    ) -> (proto::Question, Asked) {
        let mine = mine.unwrap_or_else(|| self.keys(rep, r).count() as u64);
        if mine as usize <= 4 * self.cfg.leaf || r.hi - r.lo <= 1 {
            let keys: Vec<LogKey> = self.keys(rep, r).collect();
            let width = id_width(&keys);
            let mut prefixes = Vec::with_capacity(keys.len() * width);
            for k in &keys {
                prefixes.extend_from_slice(&k.id[..width]);
            }
            let q = proto::Question {
                kind: Some(proto::question::Kind::Ids(proto::Ids { width: width as u32, prefixes })),
            };
            return (q, Asked::Ids { keys });
        }
        let mut cuts = Vec::new();
        let bounds = match (parts, peer, self.peer_span) {
            // Our first answer: cut where our entries end when the peer's go further (recent
            // writes land in a part the peer can push whole), and where they begin.
            (0, _, Some((pf, pl))) if !self.initiator => {
                let (f, l) = self.span_in(rep, r);
                let mut b = vec![r.lo];
                // Only at the edges of the peer's span, where one side's entries run on alone.
                if let Some(f) = f
                    && r.lo == pf
                    && f > pf
                {
                    b.push(f);
                }
                if let Some(l) = l
                    && r.hi == pl + 1
                    && l < pl
                {
                    b.push(l + 1);
                }
                b.push(r.hi);
                if b.len() > 2 {
                    cuts = b[1..b.len() - 1].to_vec();
                    b
                } else {
                    equal_bounds(r, clamp_parts(r, self.parts_for(mine, peer)))
                }
            }
            (0, _, _) => equal_bounds(r, clamp_parts(r, self.parts_for(mine, peer))),
            (p, _, _) => equal_bounds(r, clamp_parts(r, p)),
        };
        let (fps, counts) = self.split_fps(rep, &bounds);
        let mut sp =
            proto::Split { parts: (bounds.len() - 1) as u32, fingerprints: fps.concat(), counts, ..Default::default() };
        for c in &cuts {
            sp.cuts.extend_from_slice(&c.to_be_bytes());
        }
        (proto::Question { kind: Some(proto::question::Kind::Split(sp)) }, Asked::Split { bounds })
    }

    /// How many parts to split a range we hold `mine` entries of into.
    fn parts_for(&self, mine: u64, peer: Option<u64>) -> usize {
        let leaf = self.cfg.leaf as u64;
        let p = if mine <= leaf * 32 {
            // Small enough that the parts will be listed next.
            mine.div_ceil(leaf)
        } else {
            // One part per few estimated differences, and small enough parts that one more
            // split makes them listable.
            let diff = peer.map_or(1, |p| p.abs_diff(mine)).max(1);
            diff.saturating_mul(self.cfg.parts_per_difference as u64).max(mine.div_ceil(leaf * 32))
        };
        (p as usize).clamp(2, self.cfg.max_parts)
    }

    fn split_fps(&self, rep: &Replica, bounds: &[u128]) -> (Vec<[u8; 16]>, Vec<u64>) {
        let parts = bounds.len() - 1;
        let mut sums = vec![[0u64; 4]; parts];
        let mut counts = vec![0u64; parts];
        let mut i = 0;
        for k in self.keys(rep, Range { lo: bounds[0], hi: bounds[parts] }) {
            while k.pos >= bounds[i + 1] {
                i += 1;
            }
            add_id(&mut sums[i], &k.id);
            counts[i] += 1;
        }
        (sums.iter().zip(&counts).map(|(s, c)| fp_of(s, *c)).collect(), counts)
    }

    fn keys<'a>(&'a self, rep: &'a Replica, r: Range) -> impl Iterator<Item = LogKey> + 'a {
        let lo = LogKey { pos: r.lo, id: [0; 32] };
        let hi = LogKey { pos: r.hi, id: [0; 32] };
        let filter = self.filter.as_ref();
        rep.log().range(lo..hi).filter(move |(_, v)| filter.is_none_or(|f| f.has(v.did))).map(|(k, _)| *k)
    }

    fn span(&self, rep: &Replica) -> (Option<u128>, Option<u128>) {
        self.span_in(rep, Range { lo: 0, hi: u128::MAX })
    }

    fn span_in(&self, rep: &Replica, r: Range) -> (Option<u128>, Option<u128>) {
        let lo = LogKey { pos: r.lo, id: [0; 32] };
        let hi = LogKey { pos: r.hi, id: [0; 32] };
        let filter = self.filter.as_ref();
        let mut it = rep.log().range(lo..hi).filter(move |(_, v)| filter.is_none_or(|f| f.has(v.did)));
        let first = it.next().map(|(k, _)| k.pos);
        let last = it.next_back().map(|(k, _)| k.pos).or(first);
        (first, last)
    }

    fn whole_fingerprint(&self, rep: &Replica) -> Vec<u8> {
        let filter = self.filter.as_ref();
        let ids = rep.log().iter().filter(|(_, v)| filter.is_none_or(|f| f.has(v.did))).map(|(k, _)| &k.id);
        fingerprint(ids).0.to_vec()
    }

    fn refresh(&mut self, rep: &Replica) {
        if let Some(f) = self.filter.as_mut() {
            f.refresh(rep);
        }
    }

    fn queue(&mut self, rep: &Replica, k: LogKey) {
        let auth = rep.log().get(&k).is_some_and(|v| v.auth);
        // Authorizations travel first, so the operations they authorize pass.
        self.outgoing.insert((!auth, k));
    }

    fn queue_range(&mut self, rep: &Replica, r: Range) {
        if r.hi <= r.lo {
            return;
        }
        let keys: Vec<LogKey> = self.keys(rep, r).collect();
        for k in keys {
            self.queue(rep, k);
        }
    }

    fn take_batch(&mut self, ops: &[u8]) -> Result<Vec<Received>, SyncError> {
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let raw = zstd::bulk::decompress(ops, MAX_BATCH_BYTES).map_err(|e| violation(format!("entry batch: {e}")))?;
        let batch = proto::OpBatch::decode(raw.as_slice()).map_err(|e| violation(e.to_string()))?;
        let received = batch.into_received();
        // Malformed entries are refused (and recorded) by the replica; entries of other
        // accounts end the session before anything is applied.
        if let Some(scope) = &self.scope
            && let Some(did) = received.iter().filter_map(Received::did).find(|d| scope.dids.binary_search(d).is_err())
        {
            return Err(violation(format!("an entry for {did} outside the session's scope")));
        }
        Ok(received)
    }

    /// Fills a turn with deferred questions and entries, and encodes it; `None` when we have
    /// nothing to say and the peer said it expects nothing (`peer_done`). `peer_more`: the
    /// peer has entries or questions queued for us.
    fn finish_turn(
        &mut self,
        rep: &Replica,
        mut turn: proto::Turn,
        peer_more: bool,
        peer_done: bool,
    ) -> Result<Option<Vec<u8>>, SyncError> {
        let mut qbytes: usize = turn.answers.iter().map(|a| a.encoded_len()).sum();
        while qbytes < self.cfg.question_budget
            && let Some(r) = self.deferred.pop_front()
        {
            let (q, a) = self.ask(rep, r, None, None, 0);
            qbytes += q.encoded_len() + 40;
            self.asked.push(a);
            turn.extra.push(proto::RangedQuestion { lo: pos_bytes(r.lo), hi: pos_bytes(r.hi), question: Some(q) });
        }
        let mut batch = proto::OpBatch::default();
        let mut size = 0;
        while size < self.cfg.batch_bytes
            && let Some(item) = self.outgoing.pop_first()
        {
            if let Some(signed) = rep.signed(&item.1)? {
                size += batch.push(signed);
            }
        }
        self.stats.entries_sent += batch.entries.len() as u64;
        if !batch.entries.is_empty() {
            turn.ops = zstd::bulk::compress(&batch.encode_to_vec(), self.cfg.zstd_level)
                .map_err(|e| SyncError::Protocol(format!("compressing a batch: {e}")))?;
            self.stats.entry_bytes_sent += turn.ops.len() as u64;
        }
        // More entries queued, or questions deferred by a full turn: the peer must reply.
        turn.more = !self.outgoing.is_empty() || !self.deferred.is_empty();
        let asks = self.asked.iter().any(|a| !matches!(a, Asked::Nothing)) || !self.deferred.is_empty();
        let wants = turn.answers.iter().any(|a| a.want.iter().any(|b| *b != 0));
        let nothing = turn.answers.is_empty() && turn.extra.is_empty() && turn.ops.is_empty() && !turn.more;
        if nothing && peer_done && !asks {
            return Ok(None);
        }
        if !asks && !wants && !turn.more && !peer_more {
            turn.done = true;
            // We expect nothing more: once the peer applies this turn, both sets are ours.
            let moved = self.stats.entries_sent + self.stats.entries_applied + self.stats.entries_refused;
            if moved > 0 || self.received_any_batch > 0 {
                turn.final_fingerprint = self.whole_fingerprint(rep);
                self.outcome = Outcome::Finished;
            } else {
                self.outcome = Outcome::Converged;
            }
        } else {
            self.outcome = Outcome::Running;
        }
        let bytes = proto::SyncMessage { body: Some(proto::sync_message::Body::Turn(turn)) }.encode_to_vec();
        self.stats.messages_sent += 1;
        self.stats.bytes_sent += bytes.len() as u64;
        Ok(Some(bytes))
    }

    /// Statistics so far.
    pub fn stats(&self) -> SessionStats {
        self.stats
    }

    /// How the session ended (or [`Outcome::Running`]).
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }

    /// What applying the last batch received did (refusals included).
    pub fn last_report(&self) -> &ApplyReport {
        &self.last_report
    }

    /// Whether this side started the session.
    pub fn is_initiator(&self) -> bool {
        self.initiator
    }
}

fn settled(deferred: bool) -> proto::Question {
    proto::Question { kind: Some(proto::question::Kind::Settled(proto::Settled { deferred })) }
}

/// A Reject message (a responder's refusal of a session).
pub fn reject(reason: &str, need_scope: bool) -> Vec<u8> {
    proto::SyncMessage {
        body: Some(proto::sync_message::Body::Reject(proto::Reject { reason: reason.into(), need_scope })),
    }
    .encode_to_vec()
}

/// The shortest prefix width (4, 8 or 32 bytes) under which our ids are distinct.
fn id_width(keys: &[LogKey]) -> usize {
    for w in [4, 8] {
        let mut seen = HashSet::with_capacity(keys.len());
        if keys.iter().all(|k| seen.insert(&k.id[..w])) {
            return w;
        }
    }
    32
}

/// The fingerprint of everything a replica holds in `scope`, and how many entries that is
/// (what a session's Hello compares, and what head announcements carry).
pub fn scope_fingerprint(rep: &Replica, scope: &Scope) -> ([u8; 16], u64) {
    let mut filter = ScopeFilter::new(scope);
    filter.refresh(rep);
    fingerprint(rep.log().iter().filter(|(_, v)| filter.has(v.did)).map(|(k, _)| &k.id))
}

/// What a whole session did, run in memory between two replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionSummary {
    /// Messages exchanged, both ways.
    pub messages: u64,
    /// Round trips (messages / 2, rounded up).
    pub round_trips: u64,
    /// The initiator's statistics.
    pub initiator: SessionStats,
    /// The responder's statistics.
    pub responder: SessionStats,
    /// How it ended on the initiator's side.
    pub initiator_outcome: Outcome,
    /// And on the responder's.
    pub responder_outcome: Outcome,
}

/// Runs one complete session between two replicas in memory (tests, benchmarks, the
/// simulator). `max_messages` bounds it.
pub fn run_session(
    a: &mut Replica,
    b: &mut Replica,
    scope: Scope,
    cfg: SyncConfig,
    scopes: &mut ScopeCache,
    max_messages: u64,
) -> Result<SessionSummary, SyncError> {
    let (mut sa, mut msg) = Session::initiate(a, scope.clone(), cfg, false);
    let mut messages = 1;
    let (sb, reply) = match Session::respond(b, scopes, cfg, &msg)? {
        (None, _) => {
            let (s, m) = Session::initiate(a, scope, cfg, true);
            sa = s;
            msg = m;
            messages += 2;
            Session::respond(b, scopes, cfg, &msg)?
        }
        ok => ok,
    };
    let mut sb = sb.ok_or_else(|| SyncError::Rejected("scope refused".into()))?;
    messages += 1;
    let mut next = Some(reply);
    let mut to_a = true;
    while let Some(m) = next.take() {
        if messages > max_messages {
            return Err(violation("session did not end"));
        }
        next = if to_a { sa.receive(a, &m)? } else { sb.receive(b, &m)? };
        if next.is_some() {
            messages += 1;
        }
        to_a = !to_a;
    }
    Ok(SessionSummary {
        messages,
        round_trips: messages.div_ceil(2),
        initiator: sa.stats(),
        responder: sb.stats(),
        initiator_outcome: sa.outcome(),
        responder_outcome: sb.outcome(),
    })
}
