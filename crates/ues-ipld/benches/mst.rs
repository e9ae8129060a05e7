//! MST build benches: 10k and 100k random `app.bsky.feed.post/<tid>` keys inserted into an empty
//! tree plus the root CID (every node encoded and hashed, blocks collected), the same work
//! `@atproto/repo` does in about 0.45 s for 10k keys on this machine.
//!
//! Run: `cargo bench -p ues-ipld --bench mst`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ues_ipld::storage::MemoryBlockstore;
use ues_ipld::{DAG_CBOR, Mst, cid_sha256};

const B32: &[u8; 32] = b"234567abcdefghijklmnopqrstuvwxyz";

/// Random TID-shaped record keys (13 chars of base32-sortable), deterministic per seed.
fn keys(n: usize, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut v = x;
            let tid: String = (0..13)
                .map(|_| {
                    let c = B32[(v & 31) as usize] as char;
                    v >>= 5;
                    c
                })
                .collect();
            format!("app.bsky.feed.post/{tid}")
        })
        .collect()
}

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
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
