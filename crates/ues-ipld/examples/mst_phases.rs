//! Times the phases of building a large MST (inserts, root encoding, drop), to see where the
//! time goes. Run: `cargo run --release -p ues-ipld --no-default-features --example mst_phases -- 1000000`
use std::time::Instant;

#[path = "../benches/support/keys.rs"]
mod support;

use ues_ipld::storage::MemoryBlockstore;
use ues_ipld::{DAG_CBOR, Mst, cid_sha256};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let keys = support::keys(n, 7);
    let value = cid_sha256(DAG_CBOR, b"record");
    let t = Instant::now();
    let mut m = Mst::new(MemoryBlockstore::new());
    for k in &keys {
        m.insert(k, value).unwrap();
    }
    let t_insert = t.elapsed();
    let t = Instant::now();
    let (root, blocks) = m.root_and_blocks();
    let t_root = t.elapsed();
    println!("nodes {} avg entries/node {:.2}", blocks.len(), n as f64 / blocks.len() as f64);
    let t = Instant::now();
    drop(m);
    drop(blocks);
    let t_drop = t.elapsed();
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    let t = Instant::now();
    let bulk = Mst::from_sorted(MemoryBlockstore::new(), sorted.into_iter().map(|k| (k, value))).unwrap();
    let t_bulk = t.elapsed();
    let mut bulk = bulk;
    let t = Instant::now();
    let (root2, _) = bulk.root_and_blocks();
    let t_root2 = t.elapsed();
    assert_eq!(root, root2);
    println!("n={n} insert {t_insert:?} root {t_root:?} drop {t_drop:?} | sorted build {t_bulk:?} + root {t_root2:?}");
}
