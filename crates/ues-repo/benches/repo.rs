//! Repository benches over the real stores (RocksDB blocks, SQLite index, both durable across
//! kill -9): single-write commits, CAR export of a 100k-record repository, full-text search
//! latency over 100k records.
//!
//! Run: `cargo bench -p ues-repo --bench repo`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ues_ipld::Ipld;
use ues_ipld::storage::{CachedBlockstore, RocksConfig, RocksStore, Sqlite, SqliteConfig};
use ues_repo::accounts::Accounts;
use ues_repo::crypto::KeyType;
use ues_repo::repo::Write;
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey, TidGenerator};

const WORDS: &[&str] =
    &["rust", "cats", "atproto", "merkle", "garden", "coffee", "river", "mountain", "piano", "orbit"];

fn post(i: usize) -> Ipld {
    let text = format!(
        "post {i} about {} and {} with {} on the {}",
        WORDS[i % 10],
        WORDS[(i / 10) % 10],
        WORDS[(i / 100) % 10],
        WORDS[(i / 7) % 10]
    );
    Ipld::Map(
        [
            ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
            ("text".to_string(), Ipld::String(text)),
            ("createdAt".to_string(), Ipld::String("2026-11-24T12:00:00.000Z".into())),
        ]
        .into(),
    )
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("0").parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// `cargo bench` passes `--bench`; under `cargo test` the benches run once as smoke tests, so the
/// expensive fixtures shrink.
fn full_size() -> bool {
    std::env::args().any(|a| a == "--bench")
}

fn bench(c: &mut Criterion) {
    let target = if full_size() { 100_000 } else { 1_000 };
    let queries = if full_size() { 2_000 } else { 100 };
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path().join("rocks"), &RocksConfig::default()).unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("index.sqlite"), &SqliteConfig::default()).unwrap());
    // The store as `ues run` stacks it: a 128 MiB cache of whole blocks in front of RocksDB.
    let accts = Accounts::open(CachedBlockstore::new(rocks.blockstore(), 128 << 20), db, 1).unwrap();
    let did = Did::new("did:plc:benchbenchbenchbenchbenc").unwrap();
    accts.create(did.clone(), Handle::new("bench.test").unwrap(), KeyType::K256).unwrap();
    let coll = Nsid::new("app.bsky.feed.post").unwrap();
    let tids = TidGenerator::new(9);

    // 1. One record per commit, durable, through the account store (blocks, head, index).
    let mut g = c.benchmark_group("repo");
    g.throughput(Throughput::Elements(1));
    let mut i = 0usize;
    g.bench_function("single-write-commit", |b| {
        b.iter(|| {
            let w = Write::Create {
                collection: coll.clone(),
                rkey: RecordKey::new(tids.next().to_string()).unwrap(),
                record: post(i),
            };
            i += 1;
            black_box(accts.apply_writes(&did, &[w], None).unwrap().cid)
        })
    });
    g.finish();

    // Fill to 100k records in batches of 200 (applyWrites' limit).
    let have = accts.list_records(&did, &coll, None, usize::MAX, false).unwrap().len();
    let started = Instant::now();
    let mut n = have;
    while n < target {
        let batch: Vec<Write> = (0..200.min(target - n))
            .map(|k| Write::Create {
                collection: coll.clone(),
                rkey: RecordKey::new(tids.next().to_string()).unwrap(),
                record: post(n + k),
            })
            .collect();
        n += batch.len();
        accts.apply_writes(&did, &batch, None).unwrap();
    }
    eprintln!("filled to {target} records in {:?} (batches of 200)", started.elapsed());

    // 2. CAR export of the 100k-record repository.
    let repo = accts.repo(&did).unwrap();
    let mut counter = CountingSink(0);
    let hwm_before = vm_hwm_kib();
    let t = Instant::now();
    repo.export_car(&mut counter).unwrap();
    let bytes = counter.0;
    eprintln!(
        "export: {} bytes in {:?} = {:.0} MB/s; VmHWM before {} KiB, after {} KiB",
        bytes,
        t.elapsed(),
        bytes as f64 / t.elapsed().as_secs_f64() / 1e6,
        hwm_before,
        vm_hwm_kib()
    );
    let mut g = c.benchmark_group("repo-export");
    g.throughput(Throughput::Bytes(bytes));
    g.sample_size(10);
    g.bench_function("car-100k-records", |b| b.iter(|| black_box(repo.export_car(CountingSink(0)).unwrap().0)));
    g.finish();

    // 3. Full-text search over the 100k records: p50/p99 of 2,000 queries.
    let mut lat = Vec::with_capacity(queries);
    for q in 0..queries {
        let query = format!("{} {}", WORDS[q % 10], WORDS[(q / 10) % 10]);
        let t = Instant::now();
        black_box(accts.search(&query, 25).unwrap());
        lat.push(t.elapsed());
    }
    lat.sort();
    eprintln!(
        "search (limit 25) over {target} records: p50 {:?}, p99 {:?}, max {:?}",
        lat[queries / 2],
        lat[queries * 99 / 100],
        lat[queries - 1]
    );
    let mut g = c.benchmark_group("repo-search");
    let mut q = 0usize;
    g.bench_function("fts5-two-words-100k", |b| {
        b.iter(|| {
            q += 1;
            black_box(accts.search(&format!("{} {}", WORDS[q % 10], WORDS[(q / 3) % 10]), 25).unwrap().len())
        })
    });
    g.finish();
}

struct CountingSink(u64);

impl std::io::Write for CountingSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(5)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
