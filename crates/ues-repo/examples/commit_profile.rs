//! Single-write commits through `Accounts` on RocksDB + SQLite, as `ues run` stacks the store
//! (for profiling the commit path). Run: `cargo run --release -p ues-repo --example commit_profile -- 10000`
use std::sync::Arc;
use std::time::Instant;

use ues_ipld::Ipld;
use ues_ipld::storage::{CachedBlockstore, RocksConfig, RocksStore, Sqlite, SqliteConfig};
use ues_repo::accounts::Accounts;
use ues_repo::crypto::KeyType;
use ues_repo::repo::Write;
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey, TidGenerator};

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let dir = tempfile::tempdir().unwrap();
    let rocks = RocksStore::open(dir.path().join("rocks"), &RocksConfig::default()).unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let kv: Arc<dyn ues_ipld::storage::Kv> = Arc::new(rocks.kv());
    let accts = Accounts::open_with(
        CachedBlockstore::new(rocks.blockstore(), 128 << 20),
        kv,
        db,
        1,
        ues_repo::seal::SealKey::generate(),
    )
    .unwrap();
    let did = Did::new("did:plc:benchbenchbenchbenchbenc").unwrap();
    accts.create(did.clone(), Handle::new("bench.test").unwrap(), KeyType::K256).unwrap();
    let coll = Nsid::new("app.bsky.feed.post").unwrap();
    let tids = TidGenerator::new(9);
    let t = Instant::now();
    for i in 0..n {
        let w = Write::Create {
            collection: coll.clone(),
            rkey: RecordKey::new(tids.next().to_string()).unwrap(),
            record: Ipld::Map(
                [
                    ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
                    ("text".to_string(), Ipld::String(format!("post {i} with some ordinary text in it"))),
                    ("createdAt".to_string(), Ipld::String("2026-11-24T12:00:00.000Z".into())),
                ]
                .into(),
            ),
        };
        accts.apply_writes(&did, &[w], None).unwrap();
    }
    let s = t.elapsed().as_secs_f64();
    println!(
        "{n} single-write commits in {:.2} s = {:.0} commits/s ({:.0} µs each)",
        s,
        n as f64 / s,
        s * 1e6 / n as f64
    );
}
