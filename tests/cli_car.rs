//! `ues car inspect|verify` and `ues mst diff` as a user runs them.

use std::path::Path;
use std::process::Command;

use serde_json::Value;
use ues_ipld::car::CarWriter;
use ues_ipld::storage::{Blockstore, MemoryBlockstore};
use ues_ipld::{DAG_CBOR, Ipld, Mst, cid_sha256, dagcbor};

/// Writes a CAR rooted at a fresh MST over `keys`, with a record block per key. Returns the root.
fn write_tree_car(path: &Path, keys: &[String], salt: &str) -> ues_ipld::storage::Cid {
    let store = MemoryBlockstore::new();
    let mut mst = Mst::new(&store);
    for k in keys {
        let record = dagcbor::encode(&Ipld::Map([("text".to_string(), Ipld::String(format!("{k}{salt}")))].into()));
        let cid = cid_sha256(DAG_CBOR, &record);
        store.put(&cid, &record).unwrap();
        mst.insert(k, cid).unwrap();
    }
    let root = mst.root().unwrap();
    let mut w = CarWriter::new(std::fs::File::create(path).unwrap(), &[root]).unwrap();
    for block in store.iter() {
        let (cid, data) = block.unwrap();
        w.write_block(&cid, &data).unwrap();
    }
    w.finish().unwrap();
    root
}

fn ues(args: &[&str]) -> (bool, Value, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(args).output().unwrap();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.success(), json, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn inspect_verify_and_diff() {
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<String> = (0..300).map(|i| format!("app.bsky.feed.post/{i:05}")).collect();
    let a = dir.path().join("a.car");
    let b = dir.path().join("b.car");
    let root_a = write_tree_car(&a, &keys, "");
    let mut changed = keys.clone();
    changed.retain(|k| !k.ends_with("07")); // 3 deletions
    changed.push("app.bsky.feed.like/new".into()); // 1 creation
    let root_b = write_tree_car(&b, &changed, "");
    let (a_s, b_s) = (a.to_str().unwrap(), b.to_str().unwrap());

    let (ok, info, err) = ues(&["car", "inspect", a_s]);
    assert!(ok, "{err}");
    assert_eq!(info["roots"][0], root_a.to_string());
    assert!(info["blocks"].as_u64().unwrap() > 300);

    let (ok, report, err) = ues(&["car", "verify", a_s]);
    assert!(ok, "{err}");
    assert_eq!(report["kind"], "mst");
    assert_eq!(report["mst"]["entries"], 300);

    let (ok, d, err) = ues(&["mst", "diff", a_s, b_s]);
    assert!(ok, "{err}");
    let ops = d["record_ops"].as_array().unwrap();
    assert_eq!(ops.len(), 4, "{d}");
    assert_eq!(ops.iter().filter(|o| o["new_value"].is_null()).count(), 3);
    assert_eq!(ops.iter().filter(|o| o["old_value"].is_null()).count(), 1);
    let created: Vec<&str> = d["created_nodes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert!(created.contains(&root_b.to_string().as_str()));
    assert!(created.windows(2).all(|w| w[0] < w[1]), "sorted");
    assert!(d["deleted_nodes"].as_array().unwrap().iter().any(|c| c == &root_a.to_string()));
    assert!(!d["proof_nodes"].as_array().unwrap().is_empty());
    assert!(!d["inductive_proof_nodes"].as_array().unwrap().is_empty());

    // A CAR with one flipped byte in a block is refused.
    let mut bytes = std::fs::read(&a).unwrap();
    let at = bytes.len() - 3;
    bytes[at] ^= 0x20;
    let bad = dir.path().join("bad.car");
    std::fs::write(&bad, bytes).unwrap();
    let (ok, _, err) = ues(&["car", "verify", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("does not match its CID"), "{err}");
}

#[test]
fn lexicon_check_refuses_incompatible_evolution() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, max: u32, extra_required: bool| {
        let required = if extra_required { serde_json::json!(["text", "lang"]) } else { serde_json::json!(["text"]) };
        let doc = serde_json::json!({"lexicon": 1, "id": "com.example.note", "defs": {"main": {
            "type": "record", "key": "tid", "record": {"type": "object", "required": required,
            "properties": {"text": {"type": "string", "maxLength": max}, "lang": {"type": "string"}}}}}});
        let p = dir.path().join(name);
        std::fs::write(&p, doc.to_string()).unwrap();
        p
    };
    let v1 = write("v1.json", 300, false);
    let wider = write("v2.json", 600, false);
    let narrower = write("v3.json", 100, true);
    let (ok, report, err) = ues(&["lexicon", "check", v1.to_str().unwrap(), wider.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(report["compatible"], true);
    let (ok, report, _) = ues(&["lexicon", "check", v1.to_str().unwrap(), narrower.to_str().unwrap()]);
    assert!(!ok);
    assert_eq!(report["incompatibilities"].as_array().unwrap().len(), 2, "{report}");
}

/// A command that fails says why on one line of standard error, with no backtrace, and exits 1.
#[test]
fn a_failing_command_says_why_in_one_line() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let missing = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "bench".to_string(),
            "create".into(),
            "--addr".into(),
            format!("127.0.0.1:{port}"),
            "--records".into(),
            "1".into(),
        ],
        vec!["car".into(), "verify".into(), missing.path().join("absent.car").display().to_string()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(&args).env("RUST_BACKTRACE", "1").output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?} said more than one line: {err}");
        assert!(err.starts_with("error: "), "{args:?}: {err}");
    }
}
