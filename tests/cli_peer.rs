//! `ues peer id`: the peer id comes from the data directory's Ed25519 identity key, so it is
//! the same on every call and differs between nodes.

use std::process::Command;

fn ues(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_ues")).args(args).output().expect("ues runs");
    assert!(out.status.success(), "ues {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_string()
}

#[test]
fn peer_id_is_stable_and_per_node() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let (a, b) = (a.path().join("node"), b.path().join("node"));
    ues(&["init", "--data-dir", a.to_str().unwrap()]);
    ues(&["init", "--data-dir", b.to_str().unwrap()]);
    let id = ues(&["peer", "id", "--data-dir", a.to_str().unwrap()]);
    assert!(id.starts_with("12D3KooW"), "an Ed25519 peer id: {id}");
    assert_eq!(ues(&["peer", "id", "--data-dir", a.to_str().unwrap()]), id);
    assert_ne!(ues(&["peer", "id", "--data-dir", b.to_str().unwrap()]), id);
}
