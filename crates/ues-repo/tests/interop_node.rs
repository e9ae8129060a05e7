//! A repository exported by UES, verified by Bluesky's own implementation (`@atproto/repo`'s
//! `verifyRepoCar`) against the account's did:key; a tampered copy must fail there too.

#[path = "../../../tests/support/shared.rs"]
mod shared;

use std::process::Command;

use ues_ipld::Ipld;
use ues_ipld::storage::MemoryBlockstore;
use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::repo::{Repo, Write};
use ues_repo::syntax::{Did, Nsid, RecordKey, TidGenerator};

fn verify_with_node(dir: &std::path::Path, car: &std::path::Path, did: &str, key: &str) -> serde_json::Value {
    let out = Command::new("node")
        .arg(dir.join("verify_repo_car.mjs"))
        .args([car.to_str().unwrap(), did, key])
        .current_dir(dir)
        .output()
        .expect("node runs");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
        panic!("node said: {} {}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    })
}

#[test]
fn atproto_repo_verifies_our_export_and_refuses_a_tampered_one() {
    let Some(js) = shared::node_tests() else { return };
    for kind in [KeyType::K256, KeyType::P256] {
        let key = Keypair::generate(kind);
        let did = Did::new("did:plc:ewvi7nxzyoun6zhxrhs64oiz").unwrap();
        let tids = TidGenerator::new(5);
        let (mut repo, _) = Repo::create(MemoryBlockstore::new(), did.clone(), &key, tids.next()).unwrap();
        let colls = ["app.bsky.feed.post", "app.bsky.feed.like", "app.bsky.graph.follow"];
        for batch in 0..6 {
            let writes: Vec<Write> = (0..50)
                .map(|i| {
                    let c = colls[(batch + i) % 3];
                    Write::Create {
                        collection: Nsid::new(c).unwrap(),
                        rkey: RecordKey::new(tids.next().to_string()).unwrap(),
                        record: Ipld::Map(
                            [
                                ("$type".to_string(), Ipld::String(c.into())),
                                ("text".to_string(), Ipld::String(format!("record {batch}/{i}"))),
                                ("createdAt".to_string(), Ipld::String("2026-11-24T12:00:00.000Z".into())),
                            ]
                            .into(),
                        ),
                    }
                })
                .collect();
            repo.apply_writes(&writes, &key, tids.next(), None).unwrap();
        }
        let dir = tempfile::tempdir().unwrap();
        let car_path = dir.path().join("repo.car");
        let car = repo.export_car(Vec::new()).unwrap();
        std::fs::write(&car_path, &car).unwrap();
        let did_key = key.public().did_key();

        let v = verify_with_node(&js, &car_path, did.as_str(), &did_key);
        assert_eq!(v["ok"], true, "{kind:?}: {v}");
        assert_eq!(v["records"], 300);
        assert_eq!(v["rev"], repo.commit().rev.as_str());
        assert_eq!(v["commit"], repo.head().to_string());

        // A changed byte inside a record block: @atproto/repo must refuse it too.
        let mut bad = car.clone();
        let at = bad.len() - 20;
        bad[at] ^= 0x01;
        std::fs::write(&car_path, &bad).unwrap();
        let v = verify_with_node(&js, &car_path, did.as_str(), &did_key);
        assert_eq!(v["ok"], false, "{kind:?}: tampered CAR accepted: {v}");
        // The right CAR under another key is refused.
        std::fs::write(&car_path, &car).unwrap();
        let other = Keypair::generate(kind).public().did_key();
        assert_eq!(verify_with_node(&js, &car_path, did.as_str(), &other)["ok"], false);
    }
}
