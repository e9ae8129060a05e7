//! Sizes of `#commit` firehose events: the blocks the node sends (the commit, new records and
//! MST nodes, the inversion proof) beside what a covering proof (every touched key's search
//! path plus both neighbours' paths) would add. One repository of N posts, then 2,000 single-op
//! commits: 70% creates, 20% deletes, 10% updates of random existing posts.
//! Run: `cargo run --release -p ues-repo --example event_sizes -- 10000`
use std::collections::HashSet;

use ues_ipld::Ipld;
use ues_ipld::storage::{Blockstore, MemoryBlockstore};
use ues_repo::crypto::{KeyType, Keypair};
use ues_repo::repo::{Repo, Write};
use ues_repo::syntax::{Did, Nsid, RecordKey, TidGenerator};

fn post(i: usize) -> Ipld {
    Ipld::Map(
        [
            ("$type".to_string(), Ipld::String("app.bsky.feed.post".into())),
            ("text".to_string(), Ipld::String(format!("post {i} with some ordinary text in it"))),
            ("createdAt".to_string(), Ipld::String("2026-11-24T12:00:00.000Z".into())),
        ]
        .into_iter()
        .collect(),
    )
}

fn main() {
    let n: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(10_000);
    let store = MemoryBlockstore::new();
    let key = Keypair::generate(KeyType::K256);
    let tids = TidGenerator::new(3);
    let did = Did::new("did:plc:sizessizessizessizessize").unwrap();
    let coll = Nsid::new("app.bsky.feed.post").unwrap();
    let (mut repo, _) = Repo::create(&store, did, &key, tids.next()).unwrap();
    let mut keys: Vec<RecordKey> = Vec::new();
    for chunk in 0..n.div_ceil(1000) {
        let writes: Vec<Write> = (chunk * 1000..((chunk + 1) * 1000).min(n))
            .map(|i| {
                let rkey = RecordKey::new(tids.next().to_string()).unwrap();
                keys.push(rkey.clone());
                Write::Create { collection: coll.clone(), rkey, record: post(i) }
            })
            .collect();
        repo.apply_writes(&writes, &key, tids.next(), None).unwrap();
    }
    let mut state = 0x9E37_79B9_7F4A_7C15u64;
    let mut rand = |m: usize| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state % m as u64) as usize
    };
    let (mut sent, mut covering, mut sent_blocks, mut covering_blocks) = (Vec::new(), Vec::new(), 0usize, 0usize);
    for i in 0..2000 {
        let w = match rand(10) {
            0..=6 => {
                let rkey = RecordKey::new(tids.next().to_string()).unwrap();
                keys.push(rkey.clone());
                Write::Create { collection: coll.clone(), rkey, record: post(n + i) }
            }
            7 | 8 => Write::Delete { collection: coll.clone(), rkey: keys.swap_remove(rand(keys.len())), swap: None },
            _ => Write::Update {
                collection: coll.clone(),
                rkey: keys[rand(keys.len())].clone(),
                record: post(n + i),
                swap: None,
            },
        };
        let res = repo.apply_writes(&[w], &key, tids.next(), None).unwrap();
        let event = repo.commit_event_blocks(&res).unwrap();
        sent.push(event.iter().map(|b| b.1.len()).sum::<usize>());
        sent_blocks += event.len();
        let paths: Vec<&str> = res.ops.iter().map(|o| o.path.as_str()).collect();
        let proof = ues_ipld::mst::covering_proof(&store, res.commit.data, &paths).unwrap();
        let have: HashSet<_> = res.blocks.iter().map(|b| b.0).collect();
        let extra: Vec<Vec<u8>> =
            proof.iter().filter(|c| !have.contains(c)).map(|c| store.get(c).unwrap().unwrap()).collect();
        covering.push(res.blocks.iter().map(|b| b.1.len()).sum::<usize>() + extra.iter().map(Vec::len).sum::<usize>());
        covering_blocks += res.blocks.len() + extra.len();
    }
    let stats = |v: &mut Vec<usize>| {
        v.sort();
        (v.iter().sum::<usize>() as f64 / v.len() as f64, v[v.len() / 2], v[v.len() * 99 / 100])
    };
    let (s, c) = (stats(&mut sent), stats(&mut covering));
    println!(
        "{n} records, 2000 commits: inversion proof {:.0} B mean (p50 {}, p99 {}), {:.2} blocks; covering proof {:.0} B mean (p50 {}, p99 {}), {:.2} blocks",
        s.0,
        s.1,
        s.2,
        sent_blocks as f64 / 2000.0,
        c.0,
        c.1,
        c.2,
        covering_blocks as f64 / 2000.0
    );
}
