//! Data-driven conformance against `../shared/interop/` (AT Protocol interop vectors).
//! Every file's case count is asserted, so a silently skipped or truncated file fails.

#[path = "../../../tests/support/shared.rs"]
mod shared;

use std::collections::BTreeSet;
use std::str::FromStr;

use base64::Engine;
use cid::Cid;
use ues_ipld::mst::{RecordOp, common_prefix_len, covering_proof, diff, invert, key_height};
use ues_ipld::storage::{Blockstore, MemoryBlockstore};
use ues_ipld::{DAG_CBOR, Mst, cid_sha256, dagcbor, json};

fn cases(rel: &str, expected: usize) -> Option<Vec<serde_json::Value>> {
    let v = shared::json(rel)?;
    let list = v.as_array().unwrap().clone();
    assert_eq!(list.len(), expected, "{rel}: case count changed");
    Some(list)
}

#[test]
fn data_model_fixtures_round_trip_bit_exact() {
    let Some(cases) = cases("interop/atproto-interop-tests/data-model/data-model-fixtures.json", 3) else { return };
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    for case in cases {
        let ipld = json::from_json(&case["json"]).unwrap();
        let bytes = dagcbor::encode(&ipld);
        assert_eq!(b64.encode(&bytes), case["cbor_base64"].as_str().unwrap().trim_end_matches('='));
        assert_eq!(cid_sha256(DAG_CBOR, &bytes).to_string(), case["cid"].as_str().unwrap());
        let back = dagcbor::decode_atproto(&bytes).unwrap();
        assert_eq!(back, ipld);
        assert_eq!(json::to_json(&back), case["json"], "IPLD -> JSON gives the fixture back");
    }
}

#[test]
fn data_model_valid_and_invalid() {
    let Some(valid) = cases("interop/atproto-interop-tests/data-model/data-model-valid.json", 5) else { return };
    for case in valid {
        let ipld = json::record_from_json(&case["json"]).unwrap_or_else(|e| panic!("{}: {e}", case["note"]));
        dagcbor::decode_atproto(&dagcbor::encode(&ipld)).unwrap();
    }
    let Some(invalid) = cases("interop/atproto-interop-tests/data-model/data-model-invalid.json", 12) else { return };
    for case in invalid {
        assert!(json::record_from_json(&case["json"]).is_err(), "accepted: {}", case["note"]);
    }
}

#[test]
fn mst_key_heights() {
    let Some(cases) = cases("interop/atproto-interop-tests/mst/key_heights.json", 9) else { return };
    for c in cases {
        let key = c["key"].as_str().unwrap();
        assert_eq!(key_height(key.as_bytes()) as u64, c["height"].as_u64().unwrap(), "{key:?}");
    }
}

#[test]
fn mst_common_prefix() {
    let Some(cases) = cases("interop/atproto-interop-tests/mst/common_prefix.json", 13) else { return };
    for c in cases {
        let (l, r) = (c["left"].as_str().unwrap(), c["right"].as_str().unwrap());
        assert_eq!(common_prefix_len(l.as_bytes(), r.as_bytes()) as u64, c["len"].as_u64().unwrap(), "{l:?} {r:?}");
    }
}

#[test]
fn mst_example_keys_have_the_height_their_name_says() {
    let Some(path) = shared::shared("interop/atproto-interop-tests/mst/example_keys.txt") else { return };
    let text = std::fs::read_to_string(path).unwrap();
    let keys: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(keys.len(), 156);
    for key in &keys {
        let want: u8 = key[1..2].parse().unwrap();
        assert_eq!(key_height(key.as_bytes()), want, "{key}");
    }
    // All of them in one tree, in two insertion orders, give one root; deleting all empties it.
    let value = cid_sha256(DAG_CBOR, b"\xa0");
    let mut a = Mst::new(MemoryBlockstore::new());
    let mut b = Mst::new(MemoryBlockstore::new());
    for k in &keys {
        a.insert(k, value).unwrap();
    }
    for k in keys.iter().rev() {
        b.insert(k, value).unwrap();
    }
    assert_eq!(a.root().unwrap(), b.root().unwrap());
    assert_eq!(a.len().unwrap(), 156);
    for k in &keys {
        assert_eq!(a.remove(k).unwrap(), Some(value));
    }
    assert_eq!(a.root().unwrap().to_string(), "bafyreie5737gdxlw5i64vzichcalba3z2v5n6icifvx5xytvske7mr3hpm");
}

fn commit_proof_cases(rel: &str, expected: usize) {
    let Some(cases) = cases(rel, expected) else { return };
    for c in cases {
        let name = c["comment"].as_str().unwrap();
        let leaf = Cid::from_str(c["leafValue"].as_str().unwrap()).unwrap();
        let strs =
            |k: &str| c[k].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_string()).collect::<Vec<_>>();
        let store = MemoryBlockstore::new();
        let mut mst = Mst::new(&store);
        for k in strs("keys") {
            mst.insert(&k, leaf).unwrap();
        }
        let before = mst.root().unwrap();
        assert_eq!(before.to_string(), c["rootBeforeCommit"].as_str().unwrap(), "{name}: root before");
        // Reload from the store so the commit exercises lazy loading.
        let mut mst = Mst::load(&store, before).unwrap();
        for k in strs("adds") {
            mst.insert(&k, leaf).unwrap();
        }
        for k in strs("dels") {
            assert!(mst.remove(&k).unwrap().is_some(), "{name}: delete {k}");
        }
        let after = mst.root().unwrap();
        assert_eq!(after.to_string(), c["rootAfterCommit"].as_str().unwrap(), "{name}: root after");

        // The diff finds exactly the commit's operations.
        let mut expected_ops: Vec<RecordOp> = strs("adds")
            .into_iter()
            .map(|path| RecordOp { path, old: None, new: Some(leaf) })
            .chain(strs("dels").into_iter().map(|path| RecordOp { path, old: Some(leaf), new: None }))
            .collect();
        expected_ops.sort();
        let d = diff(&store, Some(before), after).unwrap();
        assert_eq!(d.ops, expected_ops, "{name}: diff");

        // The covering proof of the touched keys is exactly the fixture's proof blocks.
        let want: BTreeSet<Cid> = strs("blocksInProof").iter().map(|s| Cid::from_str(s).unwrap()).collect();
        let keys: Vec<&str> = expected_ops.iter().map(|o| o.path.as_str()).collect();
        assert_eq!(covering_proof(&store, after, &keys).unwrap(), want, "{name}: blocks in proof");

        // Inversion on the proof blocks alone, in every order of the ops, reaches the old root.
        let proof_only = MemoryBlockstore::verifying();
        for cid in &want {
            proof_only.put(cid, &store.get(cid).unwrap().unwrap()).unwrap();
        }
        for order in permutations(expected_ops.len()) {
            let ops: Vec<RecordOp> = order.iter().map(|&i| expected_ops[i].clone()).collect();
            let (root, _) =
                invert(&proof_only, after, &ops).unwrap_or_else(|e| panic!("{name}: invert {order:?}: {e}"));
            assert_eq!(root, before, "{name}: inversion in order {order:?}");
        }
        // And undoing the commit gives the old root back.
        for k in strs("adds") {
            mst.remove(&k).unwrap();
        }
        for k in strs("dels") {
            mst.insert(&k, leaf).unwrap();
        }
        assert_eq!(mst.root().unwrap(), before, "{name}: undo");
    }
}

/// Every ordering of 0..n (n is at most 3 in the fixtures).
fn permutations(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![vec![]];
    }
    let mut out = Vec::new();
    for p in permutations(n - 1) {
        for at in 0..=p.len() {
            let mut q = p.clone();
            q.insert(at, n - 1);
            out.push(q);
        }
    }
    out
}

#[test]
fn firehose_commit_proof_fixtures() {
    commit_proof_cases("interop/atproto-interop-tests/firehose/commit-proof-fixtures.json", 6);
}

#[test]
fn repo_fixture_commit_proofs() {
    commit_proof_cases("interop/atproto-repo-fixtures/commit-proof-fixtures.json", 6);
}

#[test]
fn sample_repository_car_reads_and_verifies() {
    let Some(path) = shared::shared("interop/sample-repos/valid_repo.car") else { return };
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut car = ues_ipld::car::CarReader::new(file).unwrap();
    assert_eq!(car.roots().len(), 1);
    let root = car.roots()[0];
    let store = MemoryBlockstore::verifying();
    let mut blocks = 0;
    for block in &mut car {
        let (cid, data) = block.unwrap();
        store.put(&cid, &data).unwrap();
        blocks += 1;
    }
    assert!(blocks > 1);
    let commit = dagcbor::decode_atproto(&store.get(&root).unwrap().unwrap()).unwrap();
    assert_eq!(commit.get("version"), Some(&ues_ipld::Ipld::Integer(3)));
    assert!(commit.get("did").and_then(|d| d.as_str()).unwrap().starts_with("did:"));
    let data = *commit.get("data").and_then(|d| d.as_link()).unwrap();
    let stats = ues_ipld::mst::verify_tree(&store, data).unwrap();
    assert!(stats.entries > 0);
    assert_eq!(stats.missing_records, 0, "every record of the sample repo is in the CAR");
    // Rebuilding the tree from its entries gives the same root.
    let mut mst = Mst::load(&store, data).unwrap();
    let entries = mst.list(None, usize::MAX).unwrap();
    assert_eq!(entries.len(), stats.entries);
    let rebuilt = Mst::from_entries(MemoryBlockstore::new(), entries).unwrap().root().unwrap();
    assert_eq!(rebuilt, data);
}
