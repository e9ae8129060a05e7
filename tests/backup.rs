//! Backups of a running node: `ues backup` while two writers stream records into two accounts,
//! then `ues restore` into a new data directory, which checks every repository; a node started
//! on it serves both accounts with every write acknowledged before the backup began, and each
//! repository verifies against its account's key, and `ues status` and `/metrics` show its
//! storage. A backup into an existing directory and a restore over a data directory that holds
//! anything are refused.

#[path = "support/node.rs"]
mod support;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{agent, create_account};

const COLLECTION: &str = "dev.ues.test.note";

fn ues(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ues")).args(args).output().unwrap()
}

/// Every record key of the account's test collection.
fn rkeys(base: &str, did: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut cursor = String::new();
    for _ in 0..1_000 {
        let url = format!(
            "{base}/xrpc/com.atproto.repo.listRecords?repo={did}&collection={COLLECTION}&limit=100&cursor={cursor}"
        );
        let v: Value = agent().get(&url).call().unwrap().body_mut().read_json().unwrap();
        let recs = v["records"].as_array().unwrap();
        out.extend(recs.iter().map(|r| r["uri"].as_str().unwrap().rsplit('/').next().unwrap().to_string()));
        match v["cursor"].as_str() {
            Some(c) if !recs.is_empty() => cursor = c.to_string(),
            _ => break,
        }
    }
    out
}

/// The repository as `getRepo` serves it, verified against the key the DID document names.
fn verify(base: &str, did: &str) {
    let doc: Value = agent()
        .get(format!("{base}/xrpc/com.atproto.repo.describeRepo?repo={did}"))
        .call()
        .unwrap()
        .body_mut()
        .read_json()
        .unwrap();
    let multikey = doc["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
    let key = ues_repo::crypto::PublicKey::from_multikey(multikey).unwrap();
    let car = agent()
        .get(format!("{base}/xrpc/com.atproto.sync.getRepo?did={did}"))
        .call()
        .unwrap()
        .body_mut()
        .with_config()
        .limit(1 << 30)
        .read_to_vec()
        .unwrap();
    let store = ues_repo::ipld::storage::MemoryBlockstore::new();
    ues_repo::repo::import_car(&store, &car[..], &ues_repo::syntax::Did::new(did).unwrap(), &key)
        .unwrap_or_else(|e| panic!("{did} does not verify: {e}"));
}

#[test]
fn a_backup_taken_during_writes_restores_to_verified_repositories() {
    let root = tempfile::tempdir().unwrap();
    let a_dir = root.path().join("a");
    let node = support::start_with(&a_dir, "[xrpc.rate_limits]\nenabled = false\n");
    let accounts: Vec<(String, String)> =
        ["alice.test", "bob.test"].iter().map(|h| create_account(&node.base, h)).collect();

    // Two writers, one per account, each recording when each write was acknowledged.
    let stop = Arc::new(AtomicBool::new(false));
    let acked: Arc<Mutex<Vec<(String, String, Instant)>>> = Arc::default();
    let writers: Vec<_> = accounts
        .iter()
        .cloned()
        .map(|(did, token)| {
            let (stop, acked, base) = (stop.clone(), acked.clone(), node.base.clone());
            std::thread::spawn(move || {
                for i in 0..100_000 {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let rkey = format!("r{i:06}");
                    let res = agent()
                        .post(format!("{base}/xrpc/com.atproto.repo.createRecord"))
                        .header("authorization", &format!("Bearer {token}"))
                        .send_json(json!({"repo": did, "collection": COLLECTION, "rkey": rkey,
                            "record": {"$type": COLLECTION, "text": format!("note {i}"), "createdAt": "2026-12-05T00:00:00.000Z"}}));
                    if res.is_ok_and(|r| r.status() == 200) {
                        acked.lock().unwrap().push((did.clone(), rkey, Instant::now()));
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1_500));

    let backup = root.path().join("backup");
    let listen = format!("127.0.0.1:{}", node.port);
    let data_dir = a_dir.to_str().unwrap();
    let began = Instant::now();
    let out = ues(&["backup", backup.to_str().unwrap(), "--data-dir", data_dir, "--listen", &listen]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let taken: Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("backup during writes: {taken}");
    assert_eq!(taken["accounts"], 2, "{taken}");
    // The live views' database is derived from the records: left out, and built again by the
    // restored node.
    assert!(a_dir.join("lens.sqlite").exists() && !backup.join("lens.sqlite").exists());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    writers.into_iter().for_each(|w| w.join().unwrap());
    let acked = acked.lock().unwrap().clone();
    let before: Vec<&(String, String, Instant)> = acked.iter().filter(|(_, _, t)| *t < began).collect();
    assert!(
        before.len() > 10 && before.len() < acked.len(),
        "writes before ({}) and after ({}) the backup",
        before.len(),
        acked.len()
    );

    // Without the operator's credentials nothing is copied or shown; a relative or unknown
    // field is refused.
    let post = |body: Value, auth: Option<String>| {
        let mut req = agent().post(format!("{}/xrpc/dev.ues.admin.backup", node.base));
        if let Some(a) = auth {
            req = req.header("authorization", &a);
        }
        req.send_json(body).unwrap().status().as_u16()
    };
    let elsewhere = root.path().join("stolen");
    assert_eq!(post(json!({"dir": elsewhere}), None), 401);
    assert_eq!(agent().get(format!("{}/xrpc/dev.ues.admin.getStatus", node.base)).call().unwrap().status(), 401);
    assert_eq!(post(json!({"dir": "relative/dir"}), Some(node.operator_auth())), 400);
    assert_eq!(post(json!({"dir": elsewhere, "extra": 1}), Some(node.operator_auth())), 400);
    assert!(!elsewhere.exists() && !Path::new("relative").exists(), "nothing written");

    // A second backup into the same directory is refused; the node is unharmed.
    let again = ues(&["backup", backup.to_str().unwrap(), "--data-dir", data_dir, "--listen", &listen]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"), "{}", String::from_utf8_lossy(&again.stderr));
    drop(node);

    // Restoring over a data directory that holds anything is refused.
    let occupied = root.path().join("occupied");
    std::fs::create_dir_all(&occupied).unwrap();
    std::fs::write(occupied.join("keep.txt"), b"mine").unwrap();
    let refused = ues(&["restore", backup.to_str().unwrap(), "--data-dir", occupied.to_str().unwrap()]);
    assert!(!refused.status.success());
    assert_eq!(std::fs::read(occupied.join("keep.txt")).unwrap(), b"mine");

    let b_dir = root.path().join("b");
    let out = ues(&["restore", backup.to_str().unwrap(), "--data-dir", b_dir.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let restored: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(restored["accounts"], 2, "{restored}");
    restore_serves(&b_dir, &accounts, &before);
}

/// A node on the restored data directory serves every account with every write acknowledged
/// before the backup began, and each repository verifies.
fn restore_serves(dir: &Path, accounts: &[(String, String)], before: &[&(String, String, Instant)]) {
    let port = support::free_port();
    let mut child = support::spawn(dir, port, "/ip4/127.0.0.1/tcp/0", &dir.join("node.log"));
    support::wait_healthy(port);
    let base = format!("http://127.0.0.1:{port}");
    for (did, _) in accounts {
        let held = rkeys(&base, did);
        let wanted: BTreeSet<String> = before.iter().filter(|(d, _, _)| d == did).map(|(_, r, _)| r.clone()).collect();
        let missing: Vec<_> = wanted.difference(&held).collect();
        assert!(missing.is_empty(), "{did}: writes acknowledged before the backup are missing: {missing:?}");
        eprintln!("{did}: {} records restored, {} acknowledged before the backup", held.len(), wanted.len());
        verify(&base, did);
    }
    // `ues status` and /metrics show the restored node's storage.
    let out = Command::new(env!("CARGO_BIN_EXE_ues"))
        .args(["status", "--data-dir", dir.to_str().unwrap(), "--listen", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let status: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["accounts"], accounts.len(), "{status}");
    assert!(status["firehoseSeq"].as_u64().unwrap() > 0, "{status}");
    for gauge in [
        "ues_rocksdb_sst_bytes{db=blocks}",
        "ues_sqlite_bytes{file=index}",
        // The live views' own database, beside the index.
        "ues_sqlite_bytes{file=lens}",
        "ues_disk_free_bytes",
        // The restored node has read its repositories: RocksDB's block cache has answered.
        "ues_rocksdb_block_cache_hits_total{db=blocks}",
    ] {
        assert!(status["storage"][gauge].as_u64().unwrap_or(0) > 0, "{gauge}: {status}");
    }
    let metrics = agent()
        .get(format!("{base}/metrics"))
        .header("authorization", &support::operator_auth(dir))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for line in [
        "# TYPE ues_rocksdb_pending_compaction_bytes gauge",
        "ues_rocksdb_write_stopped{db=\"blocks\"} 0",
        "ues_sqlite_bytes{file=\"wal\"}",
        "ues_rocksdb_block_cache_misses_total{db=\"blocks\"}",
        "ues_rocksdb_stall_micros_total{db=\"blocks\"} ",
    ] {
        assert!(metrics.contains(line), "/metrics has {line}");
    }
    let _ = child.kill();
    let _ = child.wait();
}
