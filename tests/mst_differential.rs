//! MST diffs against atmst, an independent Python implementation (PyPI, installed into
//! `tests/py/.venv` by `scripts/setup.sh`): `tests/py/mst_differential.py` builds thousands of
//! tree pairs (every subset tree of a 7-key perfect tree against 16 others and itself, and
//! random trees of up to 300 keys with random creates, updates and deletes) and records atmst's
//! answer for each; every one must equal ours exactly: created and deleted nodes, record
//! operations, proof nodes and inversion-proof nodes. Then the inversion proof alone must be
//! enough to undo the operations, and the proof nodes alone must answer every changed key.

#[path = "support/shared.rs"]
mod shared;

use std::collections::BTreeSet;
use std::io::BufRead;
use std::str::FromStr;

use serde_json::Value;
use ues_ipld::Mst;
use ues_ipld::mst::{diff_report, invert};
use ues_ipld::storage::{Blockstore, Cid, MemoryBlockstore};

fn cids(v: &Value) -> BTreeSet<Cid> {
    v.as_array().unwrap().iter().map(|c| Cid::from_str(c.as_str().unwrap()).unwrap()).collect()
}

fn only(store: &MemoryBlockstore, keep: &BTreeSet<Cid>) -> MemoryBlockstore {
    let out = MemoryBlockstore::verifying();
    for c in keep {
        out.put(c, &store.get(c).unwrap().unwrap()).unwrap();
    }
    out
}

#[test]
fn diffs_and_proofs_agree_with_atmst_node_for_node() {
    let Some(python) = shared::python_sdk() else { return };
    let out = tempfile::tempdir().unwrap();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/py/mst_differential.py");
    let run =
        std::process::Command::new(&python).arg(&script).arg(out.path()).args(["1000", "20261205"]).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    println!("{}", String::from_utf8_lossy(&run.stdout).trim());

    let store = MemoryBlockstore::verifying();
    for line in std::fs::File::open(out.path().join("blocks.jsonl")).map(std::io::BufReader::new).unwrap().lines() {
        let v: (String, String) = serde_json::from_str(&line.unwrap()).unwrap();
        store.put(&Cid::from_str(&v.0).unwrap(), &hex::decode(v.1).unwrap()).unwrap();
    }

    let (mut cases, mut with_ops, mut beyond_created) = (0, 0, 0);
    for line in std::fs::File::open(out.path().join("cases.jsonl")).map(std::io::BufReader::new).unwrap().lines() {
        let c: Value = serde_json::from_str(&line.unwrap()).unwrap();
        let name = c["name"].as_str().unwrap();
        let (a, b) =
            (Cid::from_str(c["a"].as_str().unwrap()).unwrap(), Cid::from_str(c["b"].as_str().unwrap()).unwrap());
        let r = diff_report(&store, a, b).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(r.diff.created_nodes, cids(&c["created_nodes"]), "{name}: created nodes");
        assert_eq!(r.diff.deleted_nodes, cids(&c["deleted_nodes"]), "{name}: deleted nodes");
        let ops: Vec<(String, Option<String>, Option<String>)> = r
            .diff
            .ops
            .iter()
            .map(|o| (o.path.clone(), o.old.map(|c| c.to_string()), o.new.map(|c| c.to_string())))
            .collect();
        let want: Vec<(String, Option<String>, Option<String>)> =
            serde_json::from_value(c["record_ops"].clone()).unwrap();
        assert_eq!(ops, want, "{name}: record operations");
        assert_eq!(r.proof_nodes, cids(&c["proof_nodes"]), "{name}: proof nodes");
        assert_eq!(r.inductive_proof_nodes, cids(&c["inductive_proof_nodes"]), "{name}: inversion-proof nodes");

        // The inversion proof alone undoes the operations.
        let (back, _) = invert(&only(&store, &r.inductive_proof_nodes), b, &r.diff.ops)
            .unwrap_or_else(|e| panic!("{name}: inverting on the inversion proof alone: {e}"));
        assert_eq!(back, a, "{name}: inversion on the proof alone");
        // The proof nodes alone answer every changed key: present with its value, or absent.
        if !r.diff.ops.is_empty() {
            let mut m = Mst::load(only(&store, &r.proof_nodes), b).unwrap();
            for o in &r.diff.ops {
                assert_eq!(m.get(&o.path).unwrap(), o.new, "{name}: {} from the proof alone", o.path);
            }
            with_ops += 1;
        }
        if !r.proof_nodes.is_subset(&r.diff.created_nodes) {
            beyond_created += 1;
        }
        cases += 1;
    }
    println!(
        "{cases} cases agree ({with_ops} with operations; {beyond_created} prove with nodes the commit did not create)"
    );
    assert!(cases >= 3000 && with_ops >= 2500, "too few cases: {cases}");
}
