//! MST build benches: 10k and 100k random `app.bsky.feed.post/<tid>` keys inserted into an empty
//! tree plus the root CID (every node encoded and hashed, blocks collected), the same work
//! `@atproto/repo` does in about 0.45 s for 10k keys on this machine.
//!
//! Run: `cargo bench -p ues-ipld --bench mst`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ues_ipld::car::{CarReader, CarWriter};
use ues_ipld::mst::diff;
use ues_ipld::storage::Blockstore;
use ues_ipld::storage::MemoryBlockstore;
use ues_ipld::{DAG_CBOR, Mst, cid_sha256};

#[path = "support/keys.rs"]
mod support;
use support::keys;

fn bench(c: &mut Criterion) {
    let value = cid_sha256(DAG_CBOR, b"record");
    let mut g = c.benchmark_group("mst-build");
    for n in [10_000usize, 100_000] {
        let ks = keys(n, 42);
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("insert+root", n), |b| {
            b.iter(|| {
                let mut m = Mst::new(MemoryBlockstore::new());
                for k in &ks {
                    m.insert(k, value).unwrap();
                }
                black_box(m.root_and_blocks().0)
            })
        });
    }
    g.finish();

    // One million keys: the goal is <= 3 s. (Under `cargo test` the benches run once as smoke
    // tests; the big fixtures shrink.)
    let full = std::env::args().any(|a| a == "--bench");
    let mut g = c.benchmark_group("mst-build-1m");
    g.sample_size(10);
    let ks = keys(if full { 1_000_000 } else { 10_000 }, 7);
    g.throughput(Throughput::Elements(ks.len() as u64));
    g.bench_function("insert+root/1000000", |b| {
        b.iter(|| {
            let mut m = Mst::new(MemoryBlockstore::new());
            for k in &ks {
                m.insert(k, value).unwrap();
            }
            black_box(m.root_and_blocks().0)
        })
    });
    g.bench_function("from_entries(sort+bulk)+root/1000000", |b| {
        b.iter(|| {
            let mut m = Mst::from_entries(MemoryBlockstore::new(), ks.iter().map(|k| (k.clone(), value))).unwrap();
            black_box(m.root_and_blocks().0)
        })
    });
    g.finish();

    // Diff of two 100k-key trees that differ in 100 keys (50 updated, 50 added).
    let store = MemoryBlockstore::new();
    let base = keys(if full { 100_000 } else { 5_000 }, 11);
    let mut a = Mst::new(&store);
    for k in &base {
        a.insert(k, value).unwrap();
    }
    let root_a = a.root().unwrap();
    let other = cid_sha256(DAG_CBOR, b"other");
    let mut b = Mst::load(&store, root_a).unwrap();
    for k in base.iter().step_by(base.len() / 50) {
        b.insert(k, other).unwrap();
    }
    for k in keys(50, 99) {
        b.insert(&k, value).unwrap();
    }
    let root_b = b.root().unwrap();
    let d = diff(&store, Some(root_a), root_b).unwrap();
    eprintln!(
        "diff 100k/100: {} ops, {} nodes read, {} created, {} deleted",
        d.ops.len(),
        d.nodes_read,
        d.created_nodes.len(),
        d.deleted_nodes.len()
    );
    let mut g = c.benchmark_group("mst-diff");
    g.bench_function("100k-keys-100-differences", |bch| {
        bch.iter(|| black_box(diff(&store, Some(root_a), root_b).unwrap().ops.len()))
    });
    g.finish();

    // CAR throughput over every block of the 100k-key tree plus 100k small records.
    let mut blocks: Vec<(cid::Cid, Vec<u8>)> = store.iter().map(|b| b.unwrap()).collect();
    for i in 0..base.len() as u32 {
        let rec =
            format!("{{\"text\":\"record number {i} with some typical length of post text in it\"}}").into_bytes();
        blocks.push((cid_sha256(DAG_CBOR, &rec), rec));
    }
    let total: usize = blocks.iter().map(|(c, d)| c.encoded_len() + d.len() + 4).sum();
    let mut car = Vec::with_capacity(total + 1024);
    {
        let mut w = CarWriter::new(&mut car, &[root_b]).unwrap();
        for (c, d) in &blocks {
            w.write_block(c, d).unwrap();
        }
    }
    let mut g = c.benchmark_group("car");
    g.throughput(Throughput::Bytes(car.len() as u64));
    g.bench_function("write", |bch| {
        bch.iter(|| {
            let mut out = Vec::with_capacity(car.len());
            let mut w = CarWriter::new(&mut out, &[root_b]).unwrap();
            for (c, d) in &blocks {
                w.write_block(c, d).unwrap();
            }
            black_box(out.len())
        })
    });
    g.bench_function("read+verify", |bch| {
        bch.iter(|| {
            let r = CarReader::new(&car[..]).unwrap();
            black_box(r.map(|b| b.unwrap().1.len()).sum::<usize>())
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
