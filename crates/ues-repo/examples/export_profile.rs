//! Fills a 100k-record repository on RocksDB and times CAR exports (for profiling).
//! Run: `cargo run --release -p ues-repo --example export_profile`
use std::sync::Arc;
use std::time::Instant;

use ues_ipld::Ipld;
use ues_ipld::storage::{CachedBlockstore, RocksConfig, RocksStore, Sqlite, SqliteConfig};
use ues_repo::accounts::Accounts;
use ues_repo::crypto::KeyType;
use ues_repo::repo::Write;
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey, TidGenerator};

fn main() {
    let verify = std::env::args().nth(1).is_none_or(|a| a != "noverify");
    let dir = tempfile::tempdir().unwrap();
    let cfg = RocksConfig { verify_reads: verify, ..RocksConfig::default() };
    let rocks = RocksStore::open(dir.path().join("rocks"), &cfg).unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    // As `ues run` stacks it: a cache of whole blocks (128 MiB) in front of RocksDB.
    let accts = Accounts::open(CachedBlockstore::new(rocks.blockstore(), 128 << 20), db.clone(), 1).unwrap();
    let did = Did::new("did:plc:benchbenchbenchbenchbenc").unwrap();
    accts.create(did.clone(), Handle::new("bench.test").unwrap(), KeyType::K256).unwrap();
    let coll = Nsid::new("app.bsky.feed.post").unwrap();
    let tids = TidGenerator::new(9);
    for b in 0..500 {
        let batch: Vec<Write> = (0..200)
            .map(|i| Write::Create {
                collection: coll.clone(),
                rkey: RecordKey::new(tids.next().to_string()).unwrap(),
                record: Ipld::Map(
                    [
                        ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
                        ("text".to_string(), Ipld::String(format!("post {b}/{i} with some ordinary text in it"))),
                        ("createdAt".to_string(), Ipld::String("2026-11-24T12:00:00.000Z".into())),
                    ]
                    .into(),
                ),
            })
            .collect();
        accts.apply_writes(&did, &batch, None).unwrap();
    }
    rocks.compact().unwrap();
    // An export through a fresh block cache: every block comes from RocksDB (its own cache warm).
    let cold = Accounts::open(CachedBlockstore::new(rocks.blockstore(), 128 << 20), db, 1).unwrap();
    let t = Instant::now();
    let out = cold.export_car(&did, None, Vec::with_capacity(32 << 20)).unwrap();
    let s = t.elapsed().as_secs_f64();
    println!(
        "first export, block cache empty: {} bytes in {:.0} ms = {:.0} MB/s",
        out.len(),
        s * 1e3,
        out.len() as f64 / s / 1e6
    );
    let rounds: usize = std::env::args().nth(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    for _ in 0..rounds {
        let t = Instant::now();
        let out = accts.export_car(&did, None, Vec::with_capacity(32 << 20)).unwrap();
        let s = t.elapsed().as_secs_f64();
        println!("verify={verify}: {} bytes in {:.0} ms = {:.0} MB/s", out.len(), s * 1e3, out.len() as f64 / s / 1e6);
    }
}
