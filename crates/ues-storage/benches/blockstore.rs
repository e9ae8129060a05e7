//! Blockstore put/get/has for 1 KiB and 64 KiB blocks, side by side with raw RocksDB opened with
//! the same options (`tuned_db_options`) in the same run.
//!
//! Run: `cargo bench -p ues-storage --bench blockstore`

#![allow(missing_docs)] // criterion_group! generates undocumented items

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rocksdb::{Cache, DB, WriteOptions};
use ues_storage::{Blockstore, Cid, RocksConfig, RocksStore, SHA2_256, cid_for, tuned_db_options};

const N: usize = 4096;

fn blocks(size: usize, salt: u64) -> Vec<(Cid, Vec<u8>)> {
    (0..N as u64)
        .map(|i| {
            let mut data = vec![0u8; size];
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ salt;
            for chunk in data.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            (cid_for(0x71, SHA2_256, &data).unwrap(), data)
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for size in [1024usize, 64 * 1024] {
        let label = if size == 1024 { "1KiB" } else { "64KiB" };
        let data = blocks(size, 1);
        let absent = blocks(16, 2);

        let ues_dir = tempfile::tempdir().unwrap();
        let ues_verify = RocksStore::open(ues_dir.path(), &RocksConfig::default()).unwrap();
        let bs = ues_verify.blockstore();
        let raw_dir = tempfile::tempdir().unwrap();
        let cfg = RocksConfig::default();
        let cache = Cache::new_lru_cache(cfg.block_cache_bytes);
        let mut opts = tuned_db_options(&cfg, &cache);
        opts.create_if_missing(true);
        let raw = DB::open(&opts, raw_dir.path()).unwrap();
        let wo = WriteOptions::default();

        let mut g = c.benchmark_group(format!("put/{label}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0;
        g.bench_function(BenchmarkId::new("ues", label), |b| {
            b.iter(|| {
                let (cid, d) = &data[i % N];
                i += 1;
                bs.put(cid, d).unwrap();
            })
        });
        let mut i = 0;
        g.bench_function(BenchmarkId::new("raw-rocksdb", label), |b| {
            b.iter(|| {
                let (cid, d) = &data[i % N];
                i += 1;
                raw.put_opt(cid.to_bytes(), d, &wo).unwrap();
            })
        });
        g.finish();

        // Make sure both stores hold every block (the put bench may have run only a few
        // iterations), then flush so reads come from SST files and the cache.
        bs.put_many(&data).unwrap();
        for (cid, d) in &data {
            raw.put_opt(cid.to_bytes(), d, &wo).unwrap();
        }
        ues_verify.compact().unwrap();
        raw.flush().unwrap();
        drop(bs); // the blockstore view shares the database handle
        drop(ues_verify);
        let ues_verify = RocksStore::open(ues_dir.path(), &RocksConfig::default()).unwrap();
        let noverify_cfg = RocksConfig { verify_reads: false, ..RocksConfig::default() };
        let bs = ues_verify.blockstore();

        let mut g = c.benchmark_group(format!("get/{label}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0;
        g.bench_function(BenchmarkId::new("ues-verified", label), |b| {
            b.iter(|| {
                i += 7919;
                black_box(bs.get(&data[i % N].0).unwrap().unwrap());
            })
        });
        let mut i = 0;
        g.bench_function(BenchmarkId::new("raw-rocksdb", label), |b| {
            b.iter(|| {
                i += 7919;
                black_box(raw.get(data[i % N].0.to_bytes()).unwrap().unwrap());
            })
        });
        drop(bs);
        drop(ues_verify);
        let ues_plain = RocksStore::open(ues_dir.path(), &noverify_cfg).unwrap();
        let bs = ues_plain.blockstore();
        let mut i = 0;
        g.bench_function(BenchmarkId::new("ues-unverified", label), |b| {
            b.iter(|| {
                i += 7919;
                black_box(bs.get(&data[i % N].0).unwrap().unwrap());
            })
        });
        g.finish();

        let mut g = c.benchmark_group(format!("has/{label}"));
        g.throughput(Throughput::Elements(1));
        let mut i = 0;
        g.bench_function(BenchmarkId::new("ues-present", label), |b| {
            b.iter(|| {
                i += 7919;
                assert!(bs.has(&data[i % N].0).unwrap());
            })
        });
        let mut i = 0;
        g.bench_function(BenchmarkId::new("ues-absent", label), |b| {
            b.iter(|| {
                i += 7919;
                assert!(!bs.has(&absent[i % N].0).unwrap());
            })
        });
        let mut i = 0;
        g.bench_function(BenchmarkId::new("raw-rocksdb-absent", label), |b| {
            b.iter(|| {
                i += 7919;
                let key = absent[i % N].0.to_bytes();
                assert!(!raw.key_may_exist(&key) || raw.get_pinned(&key).unwrap().is_none());
            })
        });
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = bench
}
criterion_main!(benches);
