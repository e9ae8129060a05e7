//! A write that returned Ok survives `kill -9`.
//!
//! The parent re-runs this test binary as a child that writes numbered blocks and KV entries as
//! fast as it can and prints each one's number after the store acknowledged it. The parent
//! SIGKILLs it at a random moment, reopens the data directory and checks that every
//! acknowledged write is there. Several rounds, each appending to the same directory.

#![cfg(feature = "rocksdb")]

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::Rng;
use ues_storage::{Blockstore, Cid, DataDir, Kv, RocksConfig, RocksStore, SHA2_256, cid_for};

const CHILD_ENV: &str = "UES_DURABILITY_CHILD";

fn block(n: u64) -> (Cid, Vec<u8>) {
    let data = format!("durable block {n}").into_bytes();
    (cid_for(0x71, SHA2_256, &data).unwrap(), data)
}

fn child(dir: &str, start: u64) {
    let data_dir = DataDir::open(dir).unwrap();
    let store = RocksStore::open(data_dir.rocksdb_path(), &RocksConfig::default()).unwrap();
    let (bs, kv) = (store.blockstore(), store.kv());
    let mut out = std::io::stdout().lock();
    for n in start.. {
        let (cid, data) = block(n);
        if n % 3 == 0 {
            bs.put_many(&[(cid, data), block(n + 1_000_000_000)]).unwrap();
        } else {
            bs.put(&cid, &data).unwrap();
        }
        kv.put(format!("k{n}").as_bytes(), &n.to_be_bytes(), None).unwrap();
        writeln!(out, "ack {n}").unwrap();
        out.flush().unwrap();
    }
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    if let Ok(spec) = std::env::var(CHILD_ENV) {
        let (dir, start) = spec.split_once('|').unwrap();
        child(dir, start.parse().unwrap());
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rng = rand::thread_rng();
    let mut next = 0u64;
    for round in 0..4 {
        let mut proc = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "acknowledged_writes_survive_kill_9", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, format!("{}|{next}", dir.path().display()))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = proc.stdout.take().unwrap();
        let (first_tx, first_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut acked = Vec::new();
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("ack ") {
                    acked.push(n.parse::<u64>().unwrap());
                    if acked.len() == 1 {
                        let _ = first_tx.send(());
                    }
                }
            }
            acked
        });
        // Wait (bounded) until the child is writing, let it write for a random while, then kill
        // it mid-write.
        let _ = first_rx.recv_timeout(Duration::from_secs(60));
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..600)));
        proc.kill().unwrap(); // SIGKILL on Unix
        proc.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(!acked.is_empty(), "round {round}: the child acknowledged nothing");

        let started = Instant::now();
        let data_dir = DataDir::open(dir.path()).expect("lock released by the killed child");
        let store = RocksStore::open(data_dir.rocksdb_path(), &RocksConfig::default()).unwrap();
        let (bs, kv) = (store.blockstore(), store.kv());
        for &n in &acked {
            let (cid, data) = block(n);
            assert_eq!(bs.get(&cid).unwrap(), Some(data), "round {round}: acknowledged block {n} lost");
            assert_eq!(kv.get(format!("k{n}").as_bytes()).unwrap(), Some(n.to_be_bytes().to_vec()));
            if n % 3 == 0 {
                assert!(bs.has(&block(n + 1_000_000_000).0).unwrap(), "batch {n} torn");
            }
        }
        eprintln!(
            "round {round}: {} acknowledged writes all present (checked in {:?})",
            acked.len(),
            started.elapsed()
        );
        next = acked.last().unwrap() + 1;
    }
}
