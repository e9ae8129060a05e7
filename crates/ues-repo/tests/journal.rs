//! The block journal: with a blockstore that syncs its writes, commits write their blocks to it
//! unsynced and carry them in their own (synced) SQLite transaction; opening the store puts
//! back what the blockstore lost, and a checkpoint drops what the blockstore has synced.

use std::sync::Arc;

use ues_ipld::Ipld;
use ues_ipld::storage::{Blockstore, Durability, Kv, RocksConfig, RocksStore, Sqlite, SqliteConfig};
use ues_repo::accounts::Accounts;
use ues_repo::crypto::KeyType;
use ues_repo::repo::Write;
use ues_repo::seal::SealKey;
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey};

fn journal_rows(db: &Sqlite) -> i64 {
    db.read(|c| c.query_row("SELECT count(*) FROM block_journal", [], |r| r.get(0))).unwrap()
}

fn write(i: usize) -> Write {
    let record = Ipld::Map(
        [("$type".to_string(), Ipld::String("dev.ues.test.j".into())), ("n".to_string(), Ipld::Integer(i as i128))]
            .into_iter()
            .collect(),
    );
    Write::Create {
        collection: Nsid::new("dev.ues.test.j").unwrap(),
        rkey: RecordKey::new(format!("r{i:04}")).unwrap(),
        record,
    }
}

fn open(rocks: &Arc<RocksStore>, db: &Arc<Sqlite>, seal: &SealKey) -> Accounts<ues_ipld::storage::RocksBlockstore> {
    let owners: Arc<dyn Kv> = Arc::new(rocks.kv());
    Accounts::open_with(rocks.blockstore(), owners, db.clone(), 1, seal.clone()).unwrap()
}

/// A store on RocksDB (`durability`) and SQLite in a fresh directory, with one account `did`.
struct Fixture {
    _dir: tempfile::TempDir,
    rocks: Arc<RocksStore>,
    db: Arc<Sqlite>,
    seal: SealKey,
    did: Did,
}

impl Fixture {
    fn new(durability: Durability, did: &str) -> (Self, Accounts<ues_ipld::storage::RocksBlockstore>) {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RocksConfig { durability, ..RocksConfig::default() };
        let rocks = RocksStore::open(dir.path().join("rocks"), &cfg).unwrap();
        let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
        let seal = SealKey::generate();
        let did = Did::new(did).unwrap();
        let accts = open(&rocks, &db, &seal);
        accts
            .create(did.clone(), Handle::new(format!("{}.test", &did.as_str()[8..12])).unwrap(), KeyType::K256)
            .unwrap();
        (Fixture { _dir: dir, rocks, db, seal, did }, accts)
    }

    fn reopen(&self) -> Accounts<ues_ipld::storage::RocksBlockstore> {
        open(&self.rocks, &self.db, &self.seal)
    }
}

#[test]
fn lost_blocks_come_back_from_the_journal_and_a_checkpoint_empties_it() {
    let (f, accts) = Fixture::new(Durability::Fsync, "did:plc:jjjjjjjjjjjjjjjjjjjjjjjj");
    let (rocks, db, did) = (&f.rocks, &f.db, &f.did);
    let mut written = Vec::new();
    for i in 0..30 {
        let res = accts.apply_writes(did, &[write(i)], None).unwrap();
        written.extend(res.blocks.iter().map(|b| b.0));
    }
    assert_eq!(journal_rows(db), 30, "one journal row per commit");
    let car_before = accts.export_car(did, None, Vec::new()).unwrap();
    drop(accts);

    // What a power cut takes from a blockstore that had not synced: every block since.
    let blocks = rocks.blockstore();
    for cid in &written {
        blocks.delete(cid).unwrap();
    }
    assert!(blocks.get(&written[written.len() - 1]).unwrap().is_none());

    let accts = f.reopen();
    assert_eq!(journal_rows(db), 0, "replayed rows are dropped once the blockstore is synced");
    for cid in &written {
        assert!(blocks.has(cid).unwrap(), "{cid} put back");
        assert!(accts.owns_block(did, cid).unwrap(), "{cid} owned again");
    }
    assert_eq!(accts.export_car(did, None, Vec::new()).unwrap(), car_before, "the same repository");
    let coll = Nsid::new("dev.ues.test.j").unwrap();
    assert!(accts.repo(did).unwrap().get_record(&coll, &RecordKey::new("r0029").unwrap()).unwrap().is_some());

    // A checkpoint syncs the blockstore and drops the rows it covers.
    for i in 30..40 {
        accts.apply_writes(did, &[write(i)], None).unwrap();
    }
    assert_eq!(journal_rows(db), 10);
    assert_eq!(accts.checkpoint().unwrap(), 10);
    assert_eq!(journal_rows(db), 0);
    assert_eq!(accts.checkpoint().unwrap(), 0, "nothing left to drop");
}

#[test]
fn a_store_that_promises_only_the_process_keeps_no_journal() {
    let (f, accts) = Fixture::new(Durability::Process, "did:plc:pppppppppppppppppppppppp");
    let (db, did) = (&f.db, &f.did);
    for i in 0..5 {
        accts.apply_writes(did, &[write(i)], None).unwrap();
    }
    assert_eq!(journal_rows(db), 0);
    assert_eq!(accts.checkpoint().unwrap(), 0);
}

#[test]
fn a_damaged_journal_row_is_skipped_and_the_rest_put_back() {
    let (f, accts) = Fixture::new(Durability::Fsync, "did:plc:dddddddddddddddddddddddd");
    let (rocks, db, did) = (&f.rocks, &f.db, &f.did);
    let mut written = Vec::new();
    for i in 0..5 {
        written.push(accts.apply_writes(did, &[write(i)], None).unwrap().blocks);
    }
    drop(accts);
    for (cid, _) in written.iter().flatten() {
        rocks.blockstore().delete(cid).unwrap();
    }
    // The first commit's row: its CAR's last bytes flipped.
    db.write(|tx| {
        Ok::<_, ues_ipld::storage::Error>(tx.execute(
            "UPDATE block_journal SET blocks = CAST(substr(blocks, 1, length(blocks) - 4) || x'00000000' AS BLOB) \
             WHERE id = (SELECT min(id) FROM block_journal)",
            [],
        )?)
    })
    .unwrap();
    let accts = f.reopen();
    assert_eq!(journal_rows(db), 0);
    let blocks = rocks.blockstore();
    for (cid, _) in written[1..].iter().flatten() {
        assert!(blocks.has(cid).unwrap(), "{cid} of an intact row put back");
    }
    assert!(written[0].iter().any(|(cid, _)| !blocks.has(cid).unwrap()), "the damaged row's blocks stay lost");
    // The node still answers for the account: the latest record reads back.
    let coll = Nsid::new("dev.ues.test.j").unwrap();
    assert!(accts.repo(did).unwrap().get_record(&coll, &RecordKey::new("r0004").unwrap()).unwrap().is_some());
}
