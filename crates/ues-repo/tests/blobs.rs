//! Blobs: limits, references from records, listings, missing blobs, garbage collection.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use ues_ipld::Ipld;
use ues_ipld::storage::{MemoryBlockstore, MemoryKv, Sqlite, SqliteConfig};
use ues_repo::accounts::{AccountError, Accounts};
use ues_repo::blobs::{BlobError, BlobLimits, BlobStore};
use ues_repo::crypto::KeyType;
use ues_repo::repo::Write;
use ues_repo::syntax::{Did, Handle, Nsid, RecordKey};

#[test]
fn upload_reference_list_gc() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let blocks = MemoryBlockstore::new();
    let accts = Accounts::open(&blocks, db.clone(), 1).unwrap();
    let limits =
        BlobLimits { max_size: 1_000_000, accept: vec!["image/*".into(), "video/mp4".into()], quota: 10 << 30 };
    let blobs = BlobStore::new(&blocks, MemoryKv::new(), db.clone(), limits);
    let did = Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap();
    accts.create(did.clone(), Handle::new("a.test").unwrap(), KeyType::K256).unwrap();

    let png: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    let blob = blobs.upload(&did, "image/png", &mut &png[..]).unwrap();
    assert_eq!(blob.size, Some(png.len() as u64));
    assert!(matches!(blobs.upload(&did, "text/html", &mut &b"<p>"[..]), Err(BlobError::MimeType(_))));
    let big = vec![0u8; 1_000_001];
    assert!(matches!(blobs.upload(&did, "video/mp4", &mut &big[..]), Err(BlobError::TooLarge { .. })));

    let (mime, mut reader) = blobs.open(&did, &blob.cid).unwrap().unwrap();
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    assert_eq!((mime.as_str(), back == png), ("image/png", true));
    let other = Did::new("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb").unwrap();
    assert!(blobs.open(&other, &blob.cid).unwrap().is_none(), "blobs are per account");

    let post = |img: &ues_ipld::json::BlobRef| {
        Ipld::Map(
            [
                ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
                ("text".to_string(), Ipld::String("look".into())),
                ("embed".to_string(), Ipld::Map([("image".to_string(), img.to_ipld())].into())),
            ]
            .into(),
        )
    };
    let coll = Nsid::new("app.bsky.feed.post").unwrap();
    // A record referencing a blob nobody uploaded is refused.
    let mut ghost = blob.clone();
    ghost.cid = ues_ipld::cid_sha256(0x55, b"never uploaded");
    let w = Write::Create { collection: coll.clone(), rkey: RecordKey::new("p1").unwrap(), record: post(&ghost) };
    assert!(matches!(accts.apply_writes(&did, &[w], None), Err(AccountError::BlobNotFound(_))));

    // Referenced: listed, and survives GC.
    let w = Write::Create { collection: coll.clone(), rkey: RecordKey::new("p1").unwrap(), record: post(&blob) };
    accts.apply_writes(&did, &[w], None).unwrap();
    assert_eq!(blobs.list(&did, None, 10).unwrap(), vec![blob.cid.to_string()]);
    assert_eq!(blobs.gc(Duration::ZERO).unwrap(), 0);
    assert!(blobs.open(&did, &blob.cid).unwrap().is_some());

    // An unreferenced upload is kept during the grace period, then collected.
    let tmp = blobs.upload(&did, "image/jpeg", &mut &b"jpeg bytes"[..]).unwrap();
    assert_eq!(blobs.gc(Duration::from_secs(3600)).unwrap(), 0);
    assert_eq!(blobs.gc(Duration::ZERO).unwrap(), 1);
    assert!(blobs.open(&did, &tmp.cid).unwrap().is_none());

    // Deleting the record releases the blob.
    let w = Write::Delete { collection: coll.clone(), rkey: RecordKey::new("p1").unwrap(), swap: None };
    accts.apply_writes(&did, &[w], None).unwrap();
    assert!(blobs.list(&did, None, 10).unwrap().is_empty());
    assert_eq!(blobs.gc(Duration::ZERO).unwrap(), 1);
    assert!(blobs.open(&did, &blob.cid).unwrap().is_none());

    // Records imported with blobs this node lacks show up as missing.
    db.write(|tx| {
        tx.execute(
            "INSERT INTO record_blob (did, path, cid) VALUES (?1, 'app.bsky.feed.post/x', ?2)",
            [did.as_str(), &ghost.cid.to_string()],
        )?;
        Ok::<_, ues_ipld::storage::Error>(())
    })
    .unwrap();
    assert_eq!(blobs.missing(&did, 10).unwrap(), vec![(ghost.cid.to_string(), "app.bsky.feed.post/x".to_string())]);
}

/// An account's blobs stop at its quota: an upload that would pass it is refused (read only up to
/// the room left), and nothing of it is kept; other accounts are not affected.
#[test]
fn uploads_stop_at_the_account_quota() {
    let dir = tempfile::tempdir().unwrap();
    let db = Arc::new(Sqlite::open(dir.path().join("i.sqlite"), &SqliteConfig::default()).unwrap());
    let blocks = MemoryBlockstore::new();
    let accts = Accounts::open(&blocks, db.clone(), 1).unwrap();
    let limits = BlobLimits { max_size: 1_000_000, accept: vec!["*/*".into()], quota: 1_500_000 };
    let blobs = BlobStore::new(&blocks, MemoryKv::new(), db.clone(), limits);
    let (a, b) =
        (Did::new("did:plc:aaaaaaaaaaaaaaaaaaaaaaaa").unwrap(), Did::new("did:plc:bbbbbbbbbbbbbbbbbbbbbbbb").unwrap());
    accts.create(a.clone(), Handle::new("a.test").unwrap(), KeyType::K256).unwrap();
    accts.create(b.clone(), Handle::new("b.test").unwrap(), KeyType::K256).unwrap();
    let data = |seed: u8, n: usize| -> Vec<u8> { (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect() };
    blobs.upload(&a, "image/png", &mut &data(3, 900_000)[..]).unwrap();
    assert_eq!(blobs.usage(&a).unwrap(), 900_000);
    let err = blobs.upload(&a, "image/png", &mut &data(5, 700_000)[..]).unwrap_err();
    assert!(matches!(err, BlobError::QuotaExceeded { quota: 1_500_000 }), "{err}");
    assert_eq!(blobs.usage(&a).unwrap(), 900_000, "the refused upload left nothing");
    blobs.upload(&a, "image/png", &mut &data(7, 600_000)[..]).unwrap();
    assert!(matches!(blobs.upload(&a, "image/png", &mut &b"x"[..]), Err(BlobError::QuotaExceeded { .. })));
    blobs.upload(&b, "image/png", &mut &data(5, 700_000)[..]).unwrap();
}
