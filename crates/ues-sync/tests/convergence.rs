//! Replicas that write offline and meet in any order converge: random operations spread over
//! 2 to 5 replicas, delivered live in random orders with duplicates, drops and partitions, then
//! reconciled pairwise with random protocol tuning, always end with one log and one MST root.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use ues_sync::hlc::Hlc;
use ues_sync::recon::{Outcome, Scope, ScopeCache, SyncConfig, run_session};
use ues_sync::repo::crypto::{KeyType, Keypair, PublicKey};
use ues_sync::repo::ipld::Ipld;
use ues_sync::repo::syntax::{Did, Nsid, RecordKey};
use ues_sync::{Change, Replica, Signed, live};

struct World {
    accounts: Vec<(Did, Keypair)>,
    keys: Arc<HashMap<Did, PublicKey>>,
    now: Arc<AtomicU64>,
}

fn world(n_accounts: usize) -> World {
    let accounts: Vec<(Did, Keypair)> = (0..n_accounts)
        .map(|i| (Did::new(format!("did:plc:acct{i:020}")).unwrap(), Keypair::generate(KeyType::K256)))
        .collect();
    let keys = Arc::new(accounts.iter().map(|(d, k)| (d.clone(), k.public())).collect());
    World { accounts, keys, now: Arc::new(AtomicU64::new(1_800_000_000_000)) }
}

fn replica(w: &World, i: usize, skew: i64) -> Replica {
    let now = w.now.clone();
    let clock = Hlc::with_physical(3_600_000, move || (now.load(Ordering::SeqCst) as i64 + skew) as u64);
    Replica::in_memory(w.keys.clone(), clock, Some(SigningKey::from_bytes(&[i as u8 + 1; 32])))
}

/// Every replica's device is authorized for every account; the authorizations start on
/// replica 0 only (others learn them by syncing or live pushes).
fn authorize_all(w: &World, reps: &mut [Replica]) -> Vec<Signed> {
    let devices: Vec<_> = reps.iter().map(|r| r.device_id().unwrap()).collect();
    let mut out = Vec::new();
    for (did, key) in &w.accounts {
        for d in &devices {
            out.push(reps[0].authorize(key, did, *d, false).unwrap());
        }
    }
    out
}

fn change(kind: u8, v: u8) -> Change {
    match kind % 5 {
        0 | 1 => Change::Put(Ipld::Map(BTreeMap::from([
            ("$type".into(), Ipld::String("app.bsky.feed.post".into())),
            ("text".into(), Ipld::String(format!("v{v}"))),
        ]))),
        2 => Change::Delete,
        3 => Change::Add(i64::from(v) - 100),
        _ => {
            if v.is_multiple_of(2) {
                Change::SetAdd(format!("e{}", v % 4))
            } else {
                Change::SetRemove(format!("e{}", v % 4))
            }
        }
    }
}

#[derive(Debug, Clone)]
struct Step {
    writer: usize,
    account: usize,
    key: u8,
    kind: u8,
    value: u8,
    advance_ms: u64,
    /// Bit i: the live push reaches replica i.
    deliver: u8,
    duplicate: bool,
}

fn steps(max: usize) -> impl Strategy<Value = Vec<Step>> {
    proptest::collection::vec(
        (0usize..5, 0usize..2, 0u8..6, any::<u8>(), any::<u8>(), 0u64..5, any::<u8>(), any::<bool>()).prop_map(
            |(writer, account, key, kind, value, advance_ms, deliver, duplicate)| Step {
                writer,
                account,
                key,
                kind,
                value,
                advance_ms,
                deliver,
                duplicate,
            },
        ),
        1..max,
    )
}

fn config() -> impl Strategy<Value = SyncConfig> {
    (
        prop_oneof![Just(1usize), Just(2), Just(4), Just(64)],
        1usize..17,
        prop_oneof![Just(1usize), Just(12)],
        prop_oneof![Just(2usize), Just(256)],
        prop_oneof![Just(200usize), Just(1 << 20)],
        prop_oneof![Just(60usize), Just(192 << 10)],
    )
        .prop_map(|(leaf, first_parts, ppd, max_parts, batch_bytes, question_budget)| SyncConfig {
            first_parts,
            leaf,
            parts_per_difference: ppd,
            max_parts,
            question_budget,
            batch_bytes,
            ..SyncConfig::default()
        })
}

fn scope(w: &World) -> Scope {
    Scope::new(w.accounts.iter().map(|(d, _)| d.clone()))
}

/// Reconciles every pair, three rounds; returns the entries moved.
fn heal(w: &World, reps: &mut [Replica], cfg: SyncConfig) -> u64 {
    let mut moved = 0;
    let n = reps.len();
    let mut caches: Vec<ScopeCache> = (0..n).map(|_| ScopeCache::default()).collect();
    for _round in 0..3 {
        for i in 0..n {
            for (j, cache) in caches.iter_mut().enumerate() {
                if i == j {
                    continue;
                }
                let (a, b) = two(reps, i, j);
                let s = run_session(a, b, scope(w), cfg, cache, 10_000).expect("session runs");
                assert_ne!(s.initiator_outcome, Outcome::Running);
                moved += s.initiator.entries_applied + s.responder.entries_applied;
            }
        }
    }
    moved
}

fn two(reps: &mut [Replica], i: usize, j: usize) -> (&mut Replica, &mut Replica) {
    if i < j {
        let (l, r) = reps.split_at_mut(j);
        (&mut l[i], &mut r[0])
    } else {
        let (l, r) = reps.split_at_mut(i);
        (&mut r[0], &mut l[j])
    }
}

fn assert_converged(w: &World, reps: &mut [Replica]) {
    for (did, _) in &w.accounts {
        let roots: Vec<_> = reps.iter_mut().map(|r| r.root(did).unwrap()).collect();
        assert!(roots.windows(2).all(|p| p[0] == p[1]), "roots differ for {did}: {roots:?}");
        // The root kept up to date change by change is the tree built afresh from the records.
        let records = reps[0].records(did).cloned().unwrap_or_default();
        let store = ues_sync::repo::ipld::storage::MemoryBlockstore::new();
        let fresh = ues_sync::repo::ipld::Mst::from_sorted(store, records).unwrap().root().unwrap();
        assert_eq!(roots[0], fresh, "the incremental root of {did} is not the tree's");
    }
    let lens: Vec<_> = reps.iter().map(|r| r.len()).collect();
    assert!(lens.windows(2).all(|p| p[0] == p[1]), "logs differ: {lens:?}");
    for r in reps.iter() {
        assert_eq!(r.pending_len(), 0);
    }
}

/// Runs the writes with live delivery; returns every entry written.
fn play(w: &World, reps: &mut [Replica], steps: &[Step], partitioned: bool) -> Vec<Signed> {
    let n = reps.len();
    let mut written = Vec::new();
    let mut inflight: Vec<(usize, usize, Vec<u8>)> = Vec::new();
    for (k, s) in steps.iter().enumerate() {
        w.now.fetch_add(s.advance_ms, Ordering::SeqCst);
        let writer = s.writer % n;
        let (did, _) = &w.accounts[s.account % w.accounts.len()];
        let nsid = match s.kind % 5 {
            3 => "dev.ues.test.counter",
            4 => "dev.ues.test.set",
            _ => "app.bsky.feed.post",
        };
        // Writers that have not yet learned their authorization cannot write: skip.
        let Ok(signed) = reps[writer].write(
            did,
            Nsid::new(nsid).unwrap(),
            RecordKey::new(format!("k{}", s.key)).unwrap(),
            change(s.kind, s.value),
        ) else {
            continue;
        };
        written.push(signed.clone());
        let msg = live::encode(&[signed]);
        for to in 0..n {
            // Partitioned: replicas 0..n/2 and n/2..n do not hear each other until healing.
            let cut = partitioned && (to < n / 2) != (writer < n / 2);
            if to != writer && s.deliver & (1 << to) != 0 && !cut {
                inflight.push((writer, to, msg.clone()));
                if s.duplicate {
                    inflight.push((writer, to, msg.clone()));
                }
            }
        }
        // Deliver in a scrambled order, some now and some later.
        if k % 3 == 2 || k + 1 == steps.len() {
            let seed = s.value as usize;
            let len = inflight.len();
            for i in 0..len {
                inflight.swap(i, (i * 7 + seed) % len);
            }
            for (from, to, m) in inflight.drain(..) {
                let peers: Vec<usize> = (0..n).collect();
                let r = live::receive(&mut reps[to], &m, &from, &peers).unwrap();
                assert!(r.report.refused.is_empty(), "{:?}", r.report.refused);
                for (_, targets) in &r.forward {
                    assert!(!targets.contains(&from), "never echoed to its sender");
                }
            }
        }
    }
    written
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn replicas_converge_after_partitions_drops_and_duplicates(
        n in 2usize..=5,
        accounts in 1usize..=2,
        steps in steps(60),
        skews in proptest::collection::vec(-500i64..500, 5),
        partitioned in any::<bool>(),
        cfg in config(),
    ) {
        let w = world(accounts);
        let mut reps: Vec<Replica> = (0..n).map(|i| replica(&w, i, skews[i])).collect();
        let auths = authorize_all(&w, &mut reps);
        // Authorizations reach replica 1 live; the rest learn them by syncing.
        reps[1].apply(auths);
        let half = steps.len() / 2;
        let mut written = play(&w, &mut reps, &steps[..half], partitioned);
        let moved = heal(&w, &mut reps, cfg);
        // Replicas 2.. learn the authorizations only by syncing.
        prop_assert!(moved > 0 || n == 2, "the first healing moved entries");
        assert_converged(&w, &mut reps);
        // Now every replica is authorized: all of them write, offline and partitioned again.
        let second = play(&w, &mut reps, &steps[half..], partitioned);
        prop_assert_eq!(second.len(), steps.len() - half);
        written.extend(second);
        heal(&w, &mut reps, cfg);
        assert_converged(&w, &mut reps);
        // No write is lost: each is held by every replica, or beaten by a delete every
        // replica holds (and collected).
        for s in &written {
            let id = ues_sync::entry::entry_id(&s.bytes);
            let ues_sync::Entry::Op(op) = ues_sync::Entry::decode(&s.bytes).unwrap() else { unreachable!() };
            let held = reps.iter().all(|r| r.contains(&id, op.hlc));
            let beaten = reps.iter().all(|r| !r.contains(&id, op.hlc) && r.beaten_by_delete(&id, &op));
            prop_assert!(held || beaten, "write {} is neither held nor beaten everywhere", op.uri());
        }
    }

    /// Once replicas have converged, each names the tombstones it holds; the acknowledgements
    /// travel by sessions; every replica then collects every tombstone, and they converge
    /// again on equal logs, with every record as it was.
    #[test]
    fn tombstones_go_everywhere_once_acknowledged(
        n in 2usize..=4,
        steps in steps(50),
        partitioned in any::<bool>(),
        cfg in config(),
    ) {
        let w = world(1);
        let did = w.accounts[0].0.clone();
        let mut reps: Vec<Replica> = (0..n).map(|i| replica(&w, i, 0)).collect();
        let auths = authorize_all(&w, &mut reps);
        for r in reps.iter_mut().skip(1) {
            r.apply(auths.clone());
        }
        play(&w, &mut reps, &steps, partitioned);
        heal(&w, &mut reps, cfg);
        assert_converged(&w, &mut reps);
        let roots: Vec<_> = reps.iter_mut().map(|r| r.root(&did).unwrap()).collect();
        for r in reps.iter_mut() {
            r.write_ack(&did).unwrap();
        }
        heal(&w, &mut reps, cfg);
        for r in reps.iter_mut() {
            r.collect_tombstones(&did, std::time::Duration::ZERO);
        }
        heal(&w, &mut reps, cfg);
        assert_converged(&w, &mut reps);
        for (r, root) in reps.iter_mut().zip(&roots) {
            prop_assert_eq!(r.tombstones(&did), 0, "every tombstone went");
            prop_assert_eq!(&r.root(&did).unwrap(), root, "the records are as they were");
        }
    }

    /// Applying the same entries in any order, any number of times, gives the same state.
    #[test]
    fn apply_is_idempotent_and_commutative(steps in steps(40), order in any::<u64>()) {
        let w = world(1);
        let mut reps: Vec<Replica> = (0..3).map(|i| replica(&w, i, 0)).collect();
        let auths = authorize_all(&w, &mut reps);
        reps[1].apply(auths.clone());
        reps[2].apply(auths.clone());
        let mut all = auths;
        all.extend(play(&w, &mut reps, &steps, true));
        let mut shuffled = all.clone();
        let len = shuffled.len();
        for i in 0..len {
            shuffled.swap(i, ((order as usize) ^ (i * 31)) % len);
        }
        let mut x = replica(&w, 9, 0);
        let mut y = replica(&w, 10, 0);
        // One entry at a time in writing order, against all at once scrambled, twice.
        for s in &all {
            x.apply(vec![s.clone()]);
            // The root moves one change at a time here, and once at the end on `y`.
            let _ = x.root(&w.accounts[0].0);
        }
        y.apply(shuffled.clone());
        y.apply(shuffled);
        let did = &w.accounts[0].0;
        prop_assert_eq!(x.root(did).unwrap(), y.root(did).unwrap());
        prop_assert_eq!(x.len(), y.len());
        prop_assert_eq!(x.pending_len() + y.pending_len(), 0);
    }

    /// Any byte of any entry changed: refused, nothing stored.
    #[test]
    fn tampering_is_detected(steps in steps(20), at in any::<usize>(), xor in 1u8..=255) {
        let w = world(1);
        let mut reps: Vec<Replica> = (0..2).map(|i| replica(&w, i, 0)).collect();
        let auths = authorize_all(&w, &mut reps);
        let written = play(&w, &mut reps, &steps, true);
        let mut fresh = replica(&w, 7, 0);
        fresh.apply(auths.clone());
        let before = fresh.len();
        for s in written.iter().chain(&auths) {
            let mut bad = s.clone();
            let i = at % bad.bytes.len();
            bad.bytes[i] ^= xor;
            let r = fresh.apply(vec![bad]);
            prop_assert_eq!(r.applied, 0);
        }
        prop_assert_eq!(fresh.len(), before);
    }
}

/// Corrupted session messages end the session or are refused; nothing foreign is stored, and a
/// clean session afterwards converges.
#[test]
fn corrupted_messages_do_no_harm() {
    let w = world(1);
    let mut reps: Vec<Replica> = (0..2).map(|i| replica(&w, i, 0)).collect();
    let auths = authorize_all(&w, &mut reps);
    let did = w.accounts[0].0.clone();
    for i in 0..200u32 {
        w.now.fetch_add(1, Ordering::SeqCst);
        let r = (i % 2) as usize;
        if r == 1 && i < 3 {
            reps[1].apply(auths.clone());
        }
        reps[r]
            .write(
                &did,
                Nsid::new("app.bsky.feed.post").unwrap(),
                RecordKey::new(format!("k{i}")).unwrap(),
                change(0, i as u8),
            )
            .unwrap();
    }
    let cfg = SyncConfig { leaf: 4, ..SyncConfig::default() };
    let mut errors = 0;
    for flip in 0..300usize {
        let mut cache = ScopeCache::default();
        let (a, b) = two(&mut reps, 0, 1);
        let (mut sa, hello) = ues_sync::Session::initiate(a, scope(&w), cfg, true);
        let mut hello = hello;
        let i = flip * 7919 % hello.len();
        if flip % 2 == 0 {
            hello[i] ^= 1 << (flip % 8);
        }
        let Ok((Some(mut sb), mut msg)) = ues_sync::Session::respond(b, &mut cache, cfg, &hello) else {
            errors += 1;
            continue;
        };
        for round in 0..50 {
            if flip % 2 == 1 && round == flip % 5 && !msg.is_empty() {
                let i = flip * 104_729 % msg.len();
                msg[i] ^= 0x5a;
            }
            let next = if round % 2 == 0 { sa.receive(a, &msg) } else { sb.receive(b, &msg) };
            match next {
                Ok(Some(m)) => msg = m,
                Ok(None) => break,
                Err(_) => {
                    errors += 1;
                    break;
                }
            }
        }
        assert!(a.refusals().all(|r| !matches!(r.reason, ues_sync::Refused::PendingFull)));
    }
    assert!(errors > 0, "some corruption must be caught");
    // Whatever was applied was genuine (both started from genuine logs and only genuine
    // entries verify); a clean session converges.
    let mut cache = ScopeCache::default();
    let (a, b) = two(&mut reps, 0, 1);
    let s = run_session(a, b, scope(&w), cfg, &mut cache, 1_000).unwrap();
    assert!(matches!(s.initiator_outcome, Outcome::Converged | Outcome::Finished));
    assert_eq!(a.root(&did).unwrap(), b.root(&did).unwrap());
    assert_eq!(a.len(), 200 + auths.len());
}
