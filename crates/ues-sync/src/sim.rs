//! Benchmark scenarios: two in-memory replicas of a generated log (signed entries of several
//! accounts and devices, spread over a year), one of them missing some entries; a session
//! between them; the messages, bytes, CPU time and whether their MST roots end equal. Used by
//! the criterion bench and `ues bench sync`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use ues_repo::crypto::{KeyType, Keypair, PublicKey};
use ues_repo::ipld::{Ipld, cid_sha256, dagcbor};
use ues_repo::syntax::{Did, Nsid, RecordKey, Tid};

use crate::entry::{DAG_CBOR, DeviceAuth, Entry, Op, OpKind, entry_id, position};
use crate::hlc::{Hlc, Timestamp};
use crate::recon::{Scope, ScopeCache, SyncConfig, run_session};
use crate::replica::{Replica, Signed};

/// Which entries the second replica lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// Nothing: the replicas are identical.
    Nothing,
    /// The newest `n` operations.
    Recent(usize),
    /// `n` operations chosen at random over the whole log.
    Scattered(usize),
    /// Both sides lack some: of the newest `n` operations, A lacks every other one and B
    /// the rest (both wrote while apart).
    RecentBoth(usize),
    /// Of `n` random operations, A lacks half and B the other half.
    ScatteredBoth(usize),
}

/// A generated log: the entries of `authors` accounts, in position order.
pub struct Generated {
    /// Account keys, for the replicas to check authorizations.
    pub keys: Arc<HashMap<Did, PublicKey>>,
    /// Every entry (authorizations and operations), in log order.
    pub entries: Vec<Signed>,
    /// Indexes into `entries` of the operations (not authorizations).
    pub ops: Vec<usize>,
    /// The accounts.
    pub dids: Vec<Did>,
    /// Wall clock (ms) just after the newest entry.
    pub end_ms: u64,
}

/// Generates `ops` put operations spread over `authors` accounts with `devices` devices each,
/// one every ~31.5 s on average over a year, signed on all cores. Deterministic per `seed`.
pub fn generate(ops: usize, authors: usize, devices: usize, seed: u64) -> Generated {
    let mut rng = StdRng::seed_from_u64(seed);
    let start = 1_750_000_000_000u64;
    let mut accounts = Vec::with_capacity(authors);
    let mut entries = Vec::with_capacity(ops + authors * devices);
    for a in 0..authors {
        let did = Did::new(format!("did:plc:{:024}", a)).expect("valid");
        let secret: [u8; 32] = rng.r#gen();
        let key = Keypair::from_bytes(KeyType::K256, &secret).unwrap_or_else(|_| Keypair::generate(KeyType::K256));
        let devs: Vec<SigningKey> = (0..devices).map(|_| SigningKey::from_bytes(&rng.r#gen())).collect();
        for (i, d) in devs.iter().enumerate() {
            let t = Timestamp { wall_ms: start - 1_000 + i as u64, logical: a as u16 };
            let auth = DeviceAuth::sign(&key, did.clone(), d.verifying_key().to_bytes(), t, false);
            entries.push(Signed { bytes: Entry::Auth(auth).encode(), block: None });
        }
        accounts.push((did, key, devs));
    }
    // Unsigned plans first (cheap), then signatures in parallel.
    let step = 365 * 86_400_000 / ops.max(1) as u64;
    let mut plans = Vec::with_capacity(ops);
    let mut seqs = vec![vec![0u64; devices]; authors];
    let mut wall = start;
    for i in 0..ops {
        wall += rng.gen_range(1..=step.max(1) * 2);
        let a = rng.gen_range(0..authors);
        let d = rng.gen_range(0..devices);
        seqs[a][d] += 1;
        plans.push((i, a, d, seqs[a][d], wall));
    }
    let end_ms = wall + 1;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
    let chunk = plans.len().div_ceil(threads).max(1);
    let nsid = Nsid::new("app.bsky.feed.post").expect("valid");
    let signed: Vec<Signed> = std::thread::scope(|s| {
        let handles: Vec<_> = plans
            .chunks(chunk)
            .map(|part| {
                let accounts = &accounts;
                let nsid = &nsid;
                s.spawn(move || {
                    part.iter()
                        .map(|(i, a, d, seq, wall)| {
                            let record = Ipld::Map(
                                [
                                    ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
                                    ("text".to_string(), Ipld::String(format!("post number {i}"))),
                                    ("createdAt".to_string(), Ipld::String("2025-06-15T12:00:00.000Z".into())),
                                ]
                                .into(),
                            );
                            let bytes = dagcbor::encode(&record);
                            let cid = cid_sha256(DAG_CBOR, &bytes);
                            let (did, _, devs) = &accounts[*a];
                            let rkey =
                                RecordKey::new(Tid::from_parts(*wall * 1000 + (*i as u64 % 1000), 0).to_string())
                                    .expect("a TID is a record key");
                            let hlc = Timestamp { wall_ms: *wall, logical: 0 };
                            let op = Op::sign(&devs[*d], did.clone(), *seq, hlc, nsid.clone(), rkey, OpKind::Put(cid));
                            Signed { bytes: Entry::Op(op).encode(), block: Some((cid, bytes)) }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("signing thread")).collect()
    });
    entries.extend(signed);
    let keys = Arc::new(accounts.iter().map(|(d, k, _)| (d.clone(), k.public())).collect());
    // Log order.
    let mut keyed: Vec<(u128, Signed)> = entries
        .into_iter()
        .map(|s| {
            let id = entry_id(&s.bytes);
            let hlc = Entry::decode(&s.bytes).expect("generated entries decode").hlc();
            (position(hlc, &id), s)
        })
        .collect();
    keyed.sort_by_key(|(p, _)| *p);
    let entries: Vec<Signed> = keyed.into_iter().map(|(_, s)| s).collect();
    let ops_idx = (0..entries.len()).filter(|i| entries[*i].block.is_some()).collect();
    Generated { keys, entries, ops: ops_idx, dids: accounts.into_iter().map(|(d, _, _)| d).collect(), end_ms }
}

/// One scenario's result (`ues bench sync --json` prints these).
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioResult {
    /// Name.
    pub scenario: String,
    /// Operations in the larger log.
    pub ops: usize,
    /// Entries one replica lacks.
    pub differences: usize,
    /// Messages / 2, rounded up.
    pub round_trips: u64,
    /// Every byte the initiator (A) sent, entry batches included.
    pub bytes_a_to_b: u64,
    /// Every byte B sent.
    pub bytes_b_to_a: u64,
    /// Of those, the reconciliation (everything but compressed entry batches), A to B.
    pub recon_bytes_a_to_b: u64,
    /// And B to A.
    pub recon_bytes_b_to_a: u64,
    /// CPU time of both sides (one thread runs both), milliseconds.
    pub cpu_ms: f64,
    /// cpu_ms plus the simulated round-trip time.
    pub elapsed_ms: f64,
    /// Whether the two replicas' MST roots (every account) and logs are equal afterwards.
    pub converged: bool,
}

/// Builds the two replicas for a scenario without re-verifying signatures the generator just
/// made; returns them and the number of differences.
pub fn replicas(g: &Generated, missing: Missing, seed: u64) -> (Replica, Replica, usize) {
    // 0: both hold it; 1: only A; 2: only B.
    let mut holder = vec![0u8; g.entries.len()];
    let mut rng = StdRng::seed_from_u64(seed);
    let chosen: Vec<usize> = match missing {
        Missing::Nothing => vec![],
        Missing::Recent(n) | Missing::RecentBoth(n) => g.ops.iter().rev().take(n).copied().collect(),
        Missing::Scattered(n) | Missing::ScatteredBoth(n) => g.ops.choose_multiple(&mut rng, n).copied().collect(),
    };
    let both = matches!(missing, Missing::RecentBoth(_) | Missing::ScatteredBoth(_));
    for (k, i) in chosen.iter().enumerate() {
        holder[*i] = if both && k % 2 == 1 { 2 } else { 1 };
    }
    let n = chosen.len();
    let end = g.end_ms;
    let clock = move || Hlc::with_physical(60_000, move || end);
    let mut a = Replica::in_memory(g.keys.clone(), clock(), None);
    let mut b = Replica::in_memory(g.keys.clone(), clock(), None);
    a.apply_verified(g.entries.iter().zip(&holder).filter(|(_, h)| **h != 2).map(|(e, _)| e.clone()));
    b.apply_verified(g.entries.iter().zip(&holder).filter(|(_, h)| **h != 1).map(|(e, _)| e.clone()));
    (a, b, n)
}

/// Runs one session from A to B and measures it. `rtt_ms` is the simulated round-trip time.
pub fn run(
    scenario: &str,
    g: &Generated,
    a: &mut Replica,
    b: &mut Replica,
    differences: usize,
    cfg: SyncConfig,
    rtt_ms: f64,
) -> ScenarioResult {
    let scope = Scope::new(g.dids.iter().cloned());
    // A steady relationship: B already knows the scope's digest.
    let mut cache = ScopeCache::default();
    cache.insert(scope.clone());
    let started = Instant::now();
    let s = run_session(a, b, scope, cfg, &mut cache, 100_000).expect("the session runs");
    let cpu_ms = started.elapsed().as_secs_f64() * 1e3;
    let converged = a.len() == b.len()
        && g.dids.iter().all(|d| match (a.root(d), b.root(d)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        });
    ScenarioResult {
        scenario: scenario.to_string(),
        ops: g.ops.len(),
        differences,
        round_trips: s.round_trips,
        bytes_a_to_b: s.initiator.bytes_sent,
        bytes_b_to_a: s.responder.bytes_sent,
        recon_bytes_a_to_b: s.initiator.bytes_sent - s.initiator.entry_bytes_sent,
        recon_bytes_b_to_a: s.responder.bytes_sent - s.responder.entry_bytes_sent,
        cpu_ms,
        elapsed_ms: cpu_ms + rtt_ms * s.round_trips as f64,
        converged,
    }
}

/// Bytes on the wire of one live edit: a small post (operation + its record block) and a
/// counter increment (operation only), each as a whole live message.
pub fn live_edit_sizes() -> (usize, usize) {
    let account = Keypair::generate(KeyType::K256);
    let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").expect("valid");
    let keys = Arc::new(HashMap::from([(did.clone(), account.public())]));
    let mut r = Replica::in_memory(keys, Hlc::new(60_000), Some(SigningKey::from_bytes(&[1; 32])));
    let dev = r.device_id().expect("has a device");
    r.authorize(&account, &did, dev, false).expect("authorizes");
    let post = Ipld::Map(
        [
            ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
            ("text".to_string(), Ipld::String("hello".into())),
            ("createdAt".to_string(), Ipld::String("2026-11-24T12:00:00.000Z".into())),
        ]
        .into(),
    );
    let rkey = RecordKey::new("3kabcdefghijk").expect("valid");
    let put = r
        .write(&did, Nsid::new("app.bsky.feed.post").expect("valid"), rkey.clone(), crate::replica::Change::Put(post))
        .expect("writes");
    let add = r
        .write(&did, Nsid::new("app.bsky.feed.like").expect("valid"), rkey, crate::replica::Change::Add(1))
        .expect("writes");
    (crate::live::encode(&[put]).len(), crate::live::encode(&[add]).len())
}
