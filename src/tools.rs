//! Offline tools over CAR files: `ues car inspect|verify`, `ues mst diff`.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use ues_ipld::car::CarReader;
use ues_ipld::mst::{diff_report, verify_tree};
use ues_ipld::storage::{Blockstore, Cid, MemoryBlockstore};
use ues_ipld::{Ipld, dagcbor};

/// Streams a CAR into `store` (every block verified against its CID). Returns (roots, blocks, bytes).
fn load_car(path: &Path, store: &MemoryBlockstore) -> anyhow::Result<(Vec<Cid>, u64, u64)> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let bytes = file.metadata()?.len();
    let mut car =
        CarReader::new(std::io::BufReader::new(file)).with_context(|| format!("reading {}", path.display()))?;
    let roots = car.roots().to_vec();
    let mut blocks = 0;
    for block in &mut car {
        let (cid, data) = block.with_context(|| format!("reading {}", path.display()))?;
        store.put(&cid, &data)?;
        blocks += 1;
    }
    Ok((roots, blocks, bytes))
}

/// What a CAR's root is: a signed commit (and its MST root) or a bare MST node.
struct Root {
    kind: &'static str,
    mst: Cid,
    commit: Option<Value>,
}

fn classify(store: &MemoryBlockstore, root: Cid) -> anyhow::Result<Root> {
    let bytes = store.get(&root)?.with_context(|| format!("the root block {root} is not in the CAR"))?;
    let value = dagcbor::decode_atproto(&bytes).with_context(|| format!("root block {root}"))?;
    if let (Some(Ipld::Link(data)), Some(did)) = (value.get("data"), value.get("did").and_then(Ipld::as_str)) {
        let commit = json!({
            "did": did,
            "version": ues_ipld::json::to_json(value.get("version").unwrap_or(&Ipld::Null)),
            "rev": value.get("rev").and_then(Ipld::as_str),
            "data": data.to_string(),
        });
        return Ok(Root { kind: "commit", mst: *data, commit: Some(commit) });
    }
    if value.get("e").is_some() {
        return Ok(Root { kind: "mst", mst: root, commit: None });
    }
    bail!("root {root} is neither a commit nor an MST node")
}

fn single_root(roots: &[Cid], path: &Path) -> anyhow::Result<Cid> {
    match roots {
        [r] => Ok(*r),
        _ => bail!("{} has {} roots; expected one", path.display(), roots.len()),
    }
}

/// `ues car inspect FILE`
pub(crate) fn car_inspect(path: &Path) -> anyhow::Result<Value> {
    let store = MemoryBlockstore::new();
    let (roots, blocks, bytes) = load_car(path, &store)?;
    Ok(json!({
        "file": path.display().to_string(),
        "roots": roots.iter().map(Cid::to_string).collect::<Vec<_>>(),
        "blocks": blocks,
        "bytes": bytes,
    }))
}

/// `ues car verify FILE`
pub(crate) fn car_verify(path: &Path) -> anyhow::Result<Value> {
    let store = MemoryBlockstore::verifying();
    let (roots, blocks, bytes) = load_car(path, &store)?;
    let root = single_root(&roots, path)?;
    let what = classify(&store, root)?;
    let stats = verify_tree(&store, what.mst).with_context(|| format!("the MST under {}", what.mst))?;
    if stats.missing_records > 0 {
        bail!("{} records the tree points to are missing from the CAR", stats.missing_records);
    }
    Ok(json!({
        "file": path.display().to_string(),
        "ok": true,
        "root": root.to_string(),
        "kind": what.kind,
        "commit": what.commit,
        "blocks": blocks,
        "bytes": bytes,
        "mst": { "root": what.mst.to_string(), "nodes": stats.nodes, "entries": stats.entries, "root_layer": stats.root_layer },
    }))
}

fn sorted(set: &BTreeSet<Cid>) -> Vec<String> {
    let mut v: Vec<String> = set.iter().map(Cid::to_string).collect();
    v.sort();
    v
}

/// `ues mst diff A.car B.car`
pub(crate) fn mst_diff(a: &Path, b: &Path) -> anyhow::Result<Value> {
    let store = MemoryBlockstore::verifying();
    let (roots_a, ..) = load_car(a, &store)?;
    let (roots_b, ..) = load_car(b, &store)?;
    let old = classify(&store, single_root(&roots_a, a)?)?.mst;
    let new = classify(&store, single_root(&roots_b, b)?)?.mst;
    let r = diff_report(&store, old, new)?;
    let d = &r.diff;
    let cid_or_null = |c: Option<Cid>| c.map_or(Value::Null, |c| Value::String(c.to_string()));
    Ok(json!({
        "created_nodes": sorted(&d.created_nodes),
        "deleted_nodes": sorted(&d.deleted_nodes),
        "record_ops": d.ops.iter().map(|o| json!({
            "rpath": o.path,
            "old_value": cid_or_null(o.old),
            "new_value": cid_or_null(o.new),
        })).collect::<Vec<_>>(),
        "proof_nodes": sorted(&r.proof_nodes),
        "inductive_proof_nodes": sorted(&r.inductive_proof_nodes),
    }))
}

/// `ues lexicon check OLD NEW`: returns the report and whether the change is compatible.
pub(crate) fn lexicon_check(old: &Path, new: &Path) -> anyhow::Result<(Value, bool)> {
    let read = |p: &Path| -> anyhow::Result<Value> {
        let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
        let v: Value = serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?;
        // Both versions must be valid documents on their own.
        ues_repo::lexicon::Lexicons::new()
            .add(&v)
            .with_context(|| format!("{} is not a valid lexicon", p.display()))?;
        Ok(v)
    };
    let issues = ues_repo::lexicon_evolution::check_evolution(&read(old)?, &read(new)?);
    let report = json!({
        "compatible": issues.is_empty(),
        "incompatibilities": issues.iter().map(|i| json!({"path": i.path, "reason": i.reason})).collect::<Vec<_>>(),
    });
    Ok((report, issues.is_empty()))
}
