//! Threats to the keys at rest: a data directory other local users can read (every account's
//! signing key and password hash were in `index.sqlite`), keys stored in plaintext, and a DID
//! whose only rotation key is the signing key every device of the account holds.

#[path = "../support/shared.rs"]
mod shared;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use ues_repo::crypto::{KeyType, Keypair, PublicKey};
use ues_storage::rusqlite::{Connection, OpenFlags};

use crate::common::*;
use crate::support::*;

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777
}

/// Every file and directory under `dir` (bounded), with its mode.
fn tree(dir: &Path) -> Vec<(PathBuf, bool, u32)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            out.push((e.path(), meta.is_dir(), meta.permissions().mode() & 0o777));
            if meta.is_dir() {
                stack.push(e.path());
            }
            assert!(out.len() < 100_000, "a data directory of a few files");
        }
    }
    out
}

/// Asserts the data directory is 0700 and everything in it owner-only: directories 0700, files
/// 0600 (the SQLite index and its WAL/SHM, RocksDB's files, keys, node.toml).
fn assert_owner_only(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "data directory");
    let entries = tree(dir);
    for f in ["index.sqlite", "index.sqlite-wal", "index.sqlite-shm", "node.key", "identity.key", "node.toml"] {
        assert!(dir.join(f).exists(), "{f} is there");
    }
    let rocks = entries.iter().filter(|(p, is_dir, _)| p.starts_with(dir.join("rocksdb")) && !is_dir).count();
    assert!(rocks >= 4, "RocksDB files checked too ({rocks})");
    for (path, is_dir, m) in entries {
        let want = if is_dir { 0o700 } else { 0o600 };
        assert_eq!(m, want, "{} is {m:o}", path.display());
    }
}

/// The stored signing key of `did`, read from `index.sqlite` as another reader would.
fn stored_key(dir: &Path, did: &str) -> (Vec<u8>, i64) {
    let db = Connection::open_with_flags(dir.join("index.sqlite"), OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    db.query_row("SELECT signing_key, signing_key_sealed FROM account WHERE did = ?1", [did], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

/// The account's repository signing key, from its DID document (`getSession`).
fn signing_key(node: &Running, token: &str) -> PublicKey {
    let (status, session) = call(node, "GET", "/xrpc/com.atproto.server.getSession", Some(token), None);
    assert_eq!(status, 200, "{session}");
    let multibase = session["didDoc"]["verificationMethod"][0]["publicKeyMultibase"].as_str().unwrap();
    PublicKey::from_multikey(multibase).unwrap()
}

/// An in-memory did:plc directory (`tests/js/plc_server.mjs`), killed when dropped.
struct Directory(Child, String);

impl Drop for Directory {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn plc_directory() -> Option<Directory> {
    let js = shared::node_tests()?;
    // A free port can be taken by a parallel test before the directory binds it: try another.
    let mut said = Vec::new();
    for _ in 0..3 {
        let port = free_port();
        let mut child = Command::new("node")
            .arg(js.join("plc_server.mjs"))
            .arg(port.to_string())
            .current_dir(&js)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("node runs");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        if line.starts_with("listening") {
            return Some(Directory(child, format!("http://127.0.0.1:{port}")));
        }
        let _ = child.kill();
        let _ = child.wait();
        said.push(line);
    }
    panic!("the PLC directory never started: it said {said:?}");
}

fn get_json(url: &str) -> Value {
    let mut res = agent().get(url).call().unwrap();
    assert_eq!(res.status(), 200, "{url}");
    res.body_mut().read_json().unwrap()
}

/// Stops a node and waits for it (so the databases can be looked at and the lock is free).
fn stop(mut node: Running) {
    let _ = node.child.kill();
    let _ = node.child.wait();
}

#[test]
fn data_directory_is_owner_only_keys_are_sealed_and_the_did_has_its_own_rotation_key() {
    let Some(plc) = plc_directory() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let config = format!("[xrpc]\nplc_url = \"{}\"\n", plc.1);
    let node = start_with(&dir, &config);
    let recovery = Keypair::generate(KeyType::K256).public().did_key();
    let (status, body) = call(
        &node,
        "POST",
        "/xrpc/com.atproto.server.createAccount",
        None,
        Some(json!({ "handle": "keys.test", "password": "a long password", "recoveryKey": recovery })),
    );
    assert_eq!(status, 200, "{body}");
    let did = body["did"].as_str().unwrap().to_string();
    let token = body["accessJwt"].as_str().unwrap().to_string();
    let signing = signing_key(&node, &token);

    // Threat 7: nothing in the data directory is open to other local users.
    assert_owner_only(&dir);

    // The stored key is a sealed blob (version, nonce, ciphertext, tag), and no 32 bytes of it
    // are a secp256k1 scalar whose public key is the account's.
    let (stored, sealed) = stored_key(&dir, &did);
    assert_eq!(sealed, 1);
    assert_eq!(stored.len(), ues_repo::seal::sealed_len(32), "sealed length");
    assert_eq!(stored[0], 1, "sealed format version");
    for window in stored.windows(32) {
        if let Ok(k) = Keypair::from_bytes(KeyType::K256, window) {
            assert_ne!(k.public(), signing, "the signing key is stored in the clear");
        }
    }

    // Threat 2: the DID's rotation keys are the user's recovery key, then the node's own key;
    // the repository signing key is only the atproto verification method.
    let data = get_json(&format!("{}/{did}/data", plc.1));
    let rotation: Vec<String> =
        data["rotationKeys"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
    assert_eq!(rotation.len(), 2, "{data}");
    assert_eq!(rotation[0], recovery, "the recovery key first");
    assert_ne!(rotation[1], signing.did_key(), "the node rotation key is not the signing key");
    assert!(!rotation.contains(&signing.did_key()), "{data}");
    assert_eq!(data["verificationMethods"]["atproto"], json!(signing.did_key()));

    // A handle change is signed by the node's rotation key, and keeps the rotation keys.
    let (status, body) = call(
        &node,
        "POST",
        "/xrpc/com.atproto.identity.updateHandle",
        Some(token.as_str()),
        Some(json!({ "handle": "keys2.test" })),
    );
    assert_eq!(status, 200, "{body}");
    let data = get_json(&format!("{}/{did}/data", plc.1));
    assert_eq!(data["alsoKnownAs"], json!(["at://keys2.test"]));
    assert_eq!(data["rotationKeys"], json!(rotation));
    let log = ues_repo::plc::PlcClient::new(&plc.1).audit_log(&did).expect("the audit log validates");
    assert_eq!(log.len(), 2);

    // A recoveryKey that is not a did:key is refused before anything is made.
    let (status, body) = call(
        &node,
        "POST",
        "/xrpc/com.atproto.server.createAccount",
        None,
        Some(json!({ "handle": "bad.test", "password": "a long password", "recoveryKey": "not-a-key" })),
    );
    assert_eq!((status, body["error"].as_str()), (400, Some("InvalidRequest")), "{body}");
    still_answers(&node, Duration::from_secs(10));
    stop(node);
}

#[test]
fn an_old_data_directory_is_fixed_on_open_and_a_wrong_node_key_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("node");
    let node = start_with(&dir, "");
    let (did, _) = account(&node, "old.test");
    stop(node);

    // What a node started under a permissive umask left behind.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (path, is_dir, _) in tree(&dir) {
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(if is_dir { 0o755 } else { 0o644 })).unwrap();
    }

    // A node key that is not the one the keys were sealed under: the node refuses to start,
    // naming the node key, and leaves the stored keys as they were.
    let node_key = std::fs::read(dir.join("node.key")).unwrap();
    let before = stored_key(&dir, &did);
    std::fs::write(dir.join("node.key"), [7u8; 32]).unwrap();
    let port = free_port();
    let mut child = spawn(&dir, port, "/ip4/127.0.0.1/tcp/0", &dir.join("wrong.log"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "a node with the wrong node key kept running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(!status.success());
    let log = std::fs::read_to_string(dir.join("wrong.log")).unwrap();
    assert!(log.contains("node key"), "{log}");
    assert!(!log.contains(&hex(&node_key)) && !log.contains(&hex(&[7u8; 32])), "no key in the log");
    assert_eq!(stored_key(&dir, &did), before, "stored keys untouched");

    std::fs::write(dir.join("node.key"), &node_key).unwrap();
    std::fs::set_permissions(dir.join("node.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let node = start_with(&dir, "");
    let log = std::fs::read_to_string(dir.join("node.log")).unwrap();
    assert!(log.contains("now owner-only"), "the fix is logged");
    assert_owner_only(&dir);
    // The account still signs: a record is written and the session works.
    let (status, session) = call(
        &node,
        "POST",
        "/xrpc/com.atproto.server.createSession",
        None,
        Some(json!({ "identifier": "old.test", "password": "a long password" })),
    );
    assert_eq!(status, 200, "{session}");
    let token = session["accessJwt"].as_str().unwrap();
    let (status, body) = call(
        &node,
        "POST",
        "/xrpc/com.atproto.repo.createRecord",
        Some(token),
        Some(json!({ "repo": did, "collection": "app.bsky.feed.post",
                     "record": { "$type": "app.bsky.feed.post", "text": "still mine", "createdAt": "2026-12-04T00:00:00Z" } })),
    );
    assert_eq!(status, 200, "{body}");
    still_answers(&node, Duration::from_secs(10));
    stop(node);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn ues_init_writes_an_owner_only_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("fresh");
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(["init", "--data-dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mode(&dir), 0o700);
    for f in ["node.toml", "identity.key"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
}
