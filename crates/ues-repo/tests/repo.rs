//! Repositories: signed commits, atomic batches with swaps, CAR export and verified import.

use ues_ipld::Ipld;
use ues_ipld::storage::{Blockstore, FaultMode, FaultyBlockstore, MemoryBlockstore};
use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::repo::{Action, Repo, RepoError, Write, import_car};
use ues_repo::syntax::{Did, Nsid, RecordKey, TidGenerator};

fn post(text: &str) -> Ipld {
    Ipld::Map(
        [
            ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
            ("text".to_string(), Ipld::String(text.into())),
            ("createdAt".to_string(), Ipld::String("2026-11-24T00:00:00.000Z".into())),
        ]
        .into(),
    )
}

fn coll() -> Nsid {
    Nsid::new("app.bsky.feed.post").unwrap()
}

fn create(rkey: &str, text: &str) -> Write {
    Write::Create { collection: coll(), rkey: RecordKey::new(rkey).unwrap(), record: post(text) }
}

struct Fixture {
    key: Keypair,
    did: Did,
    tids: TidGenerator,
}

fn fixture() -> Fixture {
    Fixture {
        key: Keypair::generate(KeyType::K256),
        did: Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap(),
        tids: TidGenerator::new(1),
    }
}

#[test]
fn writes_commit_and_read_back() {
    let f = fixture();
    let (mut repo, first) = Repo::create(MemoryBlockstore::new(), f.did.clone(), &f.key, f.tids.next()).unwrap();
    first.commit.verify(&f.key.public()).unwrap();
    let writes: Vec<Write> = (0..100).map(|i| create(&format!("r{i:03}"), &format!("post {i}"))).collect();
    let res = repo.apply_writes(&writes, &f.key, f.tids.next(), Some(first.cid)).unwrap();
    assert_eq!(res.ops.len(), 100);
    assert!(res.ops.iter().all(|o| o.action == Action::Create));
    assert_eq!(res.prev_data, Some(first.commit.data));
    assert!(res.commit.rev > first.commit.rev);
    res.commit.verify(&f.key.public()).unwrap();
    let (cid, value) = repo.get_record(&coll(), &RecordKey::new("r042").unwrap()).unwrap().unwrap();
    assert_eq!(value, post("post 42"));
    assert_eq!(res.ops[42].cid, Some(cid));
    let page = repo.list_records(&coll(), Some(&RecordKey::new("r010").unwrap()), 5).unwrap();
    assert_eq!(page.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["r011", "r012", "r013", "r014", "r015"]);

    // Update with the right swap, delete, and the refusals.
    let rk = RecordKey::new("r001").unwrap();
    let old = repo.get_record(&coll(), &rk).unwrap().unwrap().0;
    let upd = Write::Update { collection: coll(), rkey: rk.clone(), record: post("edited"), swap: Some(Some(old)) };
    let r = repo.apply_writes(&[upd], &f.key, f.tids.next(), None).unwrap();
    assert_eq!((r.ops[0].action, r.ops[0].prev), (Action::Update, Some(old)));
    let head = repo.head();
    let stale = Write::Update { collection: coll(), rkey: rk.clone(), record: post("again"), swap: Some(Some(old)) };
    assert!(matches!(repo.apply_writes(&[stale], &f.key, f.tids.next(), None), Err(RepoError::InvalidSwap(_))));
    assert!(matches!(
        repo.apply_writes(&[create("r001", "dup")], &f.key, f.tids.next(), None),
        Err(RepoError::RecordExists(_))
    ));
    assert!(matches!(
        repo.apply_writes(&[create("zzz", "x")], &f.key, f.tids.next(), Some(first.cid)),
        Err(RepoError::InvalidSwap(_))
    ));
    let missing = Write::Delete { collection: coll(), rkey: RecordKey::new("nope").unwrap(), swap: None };
    assert!(matches!(repo.apply_writes(&[missing], &f.key, f.tids.next(), None), Err(RepoError::RecordNotFound(_))));
    let not_a_map =
        Write::Create { collection: coll(), rkey: RecordKey::new("bad").unwrap(), record: Ipld::Integer(1) };
    assert!(matches!(
        repo.apply_writes(&[create("ok1", "fine"), not_a_map], &f.key, f.tids.next(), None),
        Err(RepoError::InvalidRecord { .. })
    ));
    assert_eq!(repo.head(), head, "refused batches change nothing");
    assert!(repo.get_record(&coll(), &RecordKey::new("ok1").unwrap()).unwrap().is_none(), "a batch is all or nothing");
    let del = Write::Delete { collection: coll(), rkey: rk.clone(), swap: None };
    let r = repo.apply_writes(&[del], &f.key, f.tids.next(), None).unwrap();
    assert_eq!(r.ops[0].action, Action::Delete);
    assert!(repo.get_record(&coll(), &rk).unwrap().is_none());
}

#[test]
fn export_import_round_trip_and_refusals() {
    let f = fixture();
    let (mut repo, _) = Repo::create(MemoryBlockstore::new(), f.did.clone(), &f.key, f.tids.next()).unwrap();
    for batch in 0..5 {
        let writes: Vec<Write> = (0..50).map(|i| create(&format!("b{batch}r{i:02}"), "hello")).collect();
        repo.apply_writes(&writes, &f.key, f.tids.next(), None).unwrap();
    }
    let car = repo.export_car(Vec::new()).unwrap();

    let imported = import_car(MemoryBlockstore::new(), &car[..], &f.did, &f.key.public()).unwrap();
    assert_eq!(imported.head(), repo.head());
    assert_eq!(imported.mst().unwrap().len().unwrap(), 250);

    // Another DID, another key, a changed byte: refused, nothing stored.
    let other_did = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    let store = MemoryBlockstore::new();
    assert!(matches!(import_car(&store, &car[..], &other_did, &f.key.public()), Err(RepoError::WrongDid { .. })));
    let other_key = Keypair::generate(KeyType::K256);
    assert!(matches!(import_car(&store, &car[..], &f.did, &other_key.public()), Err(RepoError::Commit(_))));
    let mut tampered = car.clone();
    let at = tampered.len() - 10;
    tampered[at] ^= 0x01;
    assert!(import_car(&store, &tampered[..], &f.did, &f.key.public()).is_err());
    assert!(store.is_empty(), "a refused import writes nothing");
}

#[test]
fn a_failed_block_write_leaves_the_previous_commit() {
    let f = fixture();
    let faulty = FaultyBlockstore::new(MemoryBlockstore::new(), u64::MAX, FaultMode::Fail);
    let (mut repo, first) = Repo::create(&faulty, f.did.clone(), &f.key, f.tids.next()).unwrap();
    faulty.fail_after(1);
    assert!(repo.apply_writes(&[create("a", "x")], &f.key, f.tids.next(), None).is_err());
    assert_eq!(repo.head(), first.cid);
    let reopened = Repo::load(&faulty, first.cid).unwrap();
    assert!(reopened.get_record(&coll(), &RecordKey::new("a").unwrap()).unwrap().is_none());
    assert!(faulty.inner().has(&first.cid).unwrap());
}

#[test]
fn commit_event_blocks_suffice_to_invert_the_commit() {
    use ues_ipld::mst::{RecordOp, invert};
    let f = fixture();
    let (mut repo, _) = Repo::create(MemoryBlockstore::new(), f.did.clone(), &f.key, f.tids.next()).unwrap();
    let writes: Vec<Write> = (0..500).map(|i| create(&format!("k{i:04}"), "x")).collect();
    repo.apply_writes(&writes, &f.key, f.tids.next(), None).unwrap();
    let batch = vec![
        create("k0100a", "new"),
        Write::Delete { collection: coll(), rkey: RecordKey::new("k0300").unwrap(), swap: None },
        Write::Update {
            collection: coll(),
            rkey: RecordKey::new("k0042").unwrap(),
            record: post("changed"),
            swap: None,
        },
    ];
    let res = repo.apply_writes(&batch, &f.key, f.tids.next(), None).unwrap();
    let blocks = repo.commit_event_blocks(&res).unwrap();
    let only = MemoryBlockstore::verifying();
    for (c, d) in &blocks {
        only.put(c, d).unwrap();
    }
    let ops: Vec<RecordOp> =
        res.ops.iter().map(|o| RecordOp { path: o.path.clone(), old: o.prev, new: o.cid }).collect();
    let (back, _) = invert(&only, res.commit.data, &ops).unwrap();
    assert_eq!(Some(back), res.prev_data);
    // Far fewer blocks than the repository holds.
    assert!(blocks.len() < 40, "{} blocks", blocks.len());
}

/// Records the store could not read back, or relays would refuse to carry, are refused before
/// anything is written: deeper than the decoder's bound, or larger than the record limit.
#[test]
fn records_too_deep_or_too_large_are_refused_and_nothing_commits() {
    use ues_repo::ipld::dagcbor::MAX_DEPTH;
    use ues_repo::repo::MAX_RECORD_BYTES;
    let f = fixture();
    let store = std::sync::Arc::new(MemoryBlockstore::new());
    let (mut repo, first) = Repo::create(store.clone(), f.did.clone(), &f.key, f.tids.next()).unwrap();
    let blocks_before = store.len();
    let nest = |levels: usize| {
        let mut v = Ipld::Integer(1);
        for _ in 0..levels {
            v = Ipld::Map([("a".to_string(), v)].into());
        }
        v
    };
    let at = |record: Ipld| Write::Create { collection: coll(), rkey: RecordKey::new("deep").unwrap(), record };
    // The deepest record the decoder reads back commits.
    let ok = repo.apply_writes(&[at(nest(MAX_DEPTH))], &f.key, f.tids.next(), None).unwrap();
    assert_eq!(repo.get_record(&coll(), &RecordKey::new("deep").unwrap()).unwrap().unwrap().1, nest(MAX_DEPTH));
    let head = repo.head();
    let blocks = store.len();
    assert!(blocks > blocks_before);
    let too_deep =
        Write::Create { collection: coll(), rkey: RecordKey::new("deeper").unwrap(), record: nest(MAX_DEPTH + 1) };
    let err = repo.apply_writes(&[too_deep], &f.key, f.tids.next(), None).unwrap_err();
    assert!(matches!(&err, RepoError::InvalidRecord { reason, .. } if reason.contains("nested deeper")), "{err}");
    let mut big = post("x");
    if let Ipld::Map(m) = &mut big {
        m.insert("pad".into(), Ipld::Bytes(vec![7; MAX_RECORD_BYTES]));
    }
    let too_big = Write::Create { collection: coll(), rkey: RecordKey::new("big").unwrap(), record: big };
    let err = repo.apply_writes(&[create("fine", "a post"), too_big], &f.key, f.tids.next(), None).unwrap_err();
    assert!(matches!(&err, RepoError::InvalidRecord { reason, .. } if reason.contains("limited to")), "{err}");
    // Nothing of the refused batches was committed or stored.
    assert_eq!(repo.head(), head);
    assert_eq!(store.len(), blocks);
    assert!(repo.get_record(&coll(), &RecordKey::new("fine").unwrap()).unwrap().is_none());
    let _ = (first, ok);
}
