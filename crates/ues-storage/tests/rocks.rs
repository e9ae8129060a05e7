//! The RocksDB stores against their contracts: corruption, locking, TTL, atomic batches.

#![cfg(feature = "rocksdb")]

use std::time::Duration;

use ues_storage::{
    BLAKE3, Blockstore, DataDir, Error, FaultMode, FaultyBlockstore, Kv, MemoryBlockstore, RAW, RocksConfig,
    RocksStore, SHA2_256, cid_for,
};

fn block(i: u32, hash: u64) -> (ues_storage::Cid, Vec<u8>) {
    let data = format!("block number {i}").into_bytes();
    (cid_for(0x71, hash, &data).unwrap(), data)
}

#[test]
fn put_get_has_delete_iter() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
    let bs = store.blockstore();
    let blocks: Vec<_> = (0..100).map(|i| block(i, if i % 2 == 0 { SHA2_256 } else { BLAKE3 })).collect();
    bs.put_many(&blocks).unwrap();
    for (cid, data) in &blocks {
        assert!(bs.has(cid).unwrap());
        assert_eq!(bs.get(cid).unwrap().as_deref(), Some(&data[..]));
    }
    let absent = block(1000, SHA2_256).0;
    assert!(!bs.has(&absent).unwrap());
    assert_eq!(bs.get(&absent).unwrap(), None);
    bs.delete(&blocks[0].0).unwrap();
    assert!(!bs.has(&blocks[0].0).unwrap());
    let all: Vec<_> = bs.iter().collect::<Result<_, _>>().unwrap();
    assert_eq!(all.len(), 99);
}

#[test]
fn a_corrupted_block_is_reported_never_returned() {
    let dir = tempfile::tempdir().unwrap();
    let (cid, data) = block(7, SHA2_256);
    {
        let store = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
        store.blockstore().put(&cid, &data).unwrap();
        // Flip one bit, as a bad disk would, and push it through a flush to an SST file.
        let mut bad = data.clone();
        bad[3] ^= 0x01;
        store.corrupt_block_for_test(&cid, &bad).unwrap();
        store.compact().unwrap();
    }
    let store = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
    let bs = store.blockstore();
    match bs.get(&cid) {
        Err(Error::Corrupt { cid: c }) => assert_eq!(c, cid),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert!(bs.iter().any(|r| matches!(r, Err(Error::Corrupt { .. }))));
    // The BLAKE3 path and the in-memory store behave the same.
    let (cid3, data3) = block(8, BLAKE3);
    let mem = MemoryBlockstore::verifying();
    mem.put(&cid3, &data3).unwrap();
    mem.corrupt_block_for_test(&cid3, b"something else");
    assert!(matches!(mem.get(&cid3), Err(Error::Corrupt { .. })));
}

#[test]
fn the_data_directory_is_locked() {
    let dir = tempfile::tempdir().unwrap();
    let first = DataDir::open(dir.path()).unwrap();
    match DataDir::open(dir.path()) {
        Err(Error::Locked { path }) => assert_eq!(path, dir.path()),
        other => panic!("expected Locked, got {other:?}"),
    }
    drop(first);
    DataDir::open(dir.path()).expect("the lock is released when the holder goes away");
}

#[test]
fn the_lock_holds_across_processes() {
    // A child process (this test binary, re-entered) takes the lock and holds it; we must be
    // refused while it lives.
    if let Ok(path) = std::env::var("UES_LOCK_CHILD") {
        let _held = DataDir::open(&path).unwrap();
        println!("locked");
        std::thread::sleep(Duration::from_secs(20));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "the_lock_holds_across_processes", "--nocapture", "--test-threads=1"])
        .env("UES_LOCK_CHILD", dir.path())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !line.contains("locked") && std::time::Instant::now() < deadline {
        line.clear();
        if std::io::BufRead::read_line(&mut out, &mut line).unwrap() == 0 {
            break;
        }
    }
    assert!(line.contains("locked"), "child never took the lock");
    let refused = DataDir::open(dir.path());
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(matches!(refused, Err(Error::Locked { .. })), "{refused:?}");
    DataDir::open(dir.path()).expect("a killed holder releases the lock");
}

#[test]
fn kv_ttl_hides_at_once_and_compaction_drops() {
    let dir = tempfile::tempdir().unwrap();
    let store = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
    let kv = store.kv();
    kv.put(b"session/a", b"short", Some(Duration::from_millis(30))).unwrap();
    kv.put(b"session/b", b"forever", None).unwrap();
    kv.put(b"session/c", b"long", Some(Duration::from_secs(3600))).unwrap();
    assert_eq!(kv.get(b"session/a").unwrap().as_deref(), Some(&b"short"[..]));
    std::thread::sleep(Duration::from_millis(60));
    assert_eq!(kv.get(b"session/a").unwrap(), None, "expired keys are invisible at once");
    assert_eq!(kv.scan_prefix(b"session/", 10).unwrap().len(), 2);
    assert_eq!(store.kv_physical_len().unwrap(), 3, "still on disk before compaction");
    store.compact().unwrap();
    assert_eq!(store.kv_physical_len().unwrap(), 2, "the compaction filter dropped the expired key");
    assert_eq!(kv.get(b"session/b").unwrap().as_deref(), Some(&b"forever"[..]));
}

#[test]
fn put_many_is_atomic_and_torn_batches_are_visible_only_in_the_faulty_store() {
    let mem = MemoryBlockstore::new();
    let faulty = FaultyBlockstore::new(&mem, 2, FaultMode::Tear);
    let blocks: Vec<_> = (0..10).map(|i| block(i, SHA2_256)).collect();
    faulty.put_many(&blocks[..2]).unwrap();
    assert!(matches!(faulty.put_many(&blocks[2..]), Err(Error::Injected { op: "put_many" })));
    assert_eq!(mem.len(), 2 + 4, "a torn batch leaves half behind");

    let clean = FaultyBlockstore::new(MemoryBlockstore::new(), 1, FaultMode::Fail);
    assert!(clean.put_many(&blocks).is_err());
    assert!(clean.inner().is_empty());
    clean.put_many(&blocks).unwrap();
    assert_eq!(clean.inner().len(), 10);
    clean.fail_after(1);
    assert!(clean.put(&blocks[0].0, &blocks[0].1).is_err());
    assert_eq!(clean.writes(), 3);
}

#[test]
fn raw_blocks_round_trip_through_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let data = vec![42u8; 64 * 1024];
    let cid = cid_for(RAW, SHA2_256, &data).unwrap();
    RocksStore::open(dir.path(), &RocksConfig::default()).unwrap().blockstore().put(&cid, &data).unwrap();
    let store = RocksStore::open(dir.path(), &RocksConfig::default()).unwrap();
    assert_eq!(store.blockstore().get(&cid).unwrap().unwrap(), data);
}
