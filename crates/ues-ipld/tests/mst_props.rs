//! Property tests of the MST: the shape is a function of the contents.

use std::collections::BTreeMap;

use proptest::prelude::*;
use ues_ipld::storage::MemoryBlockstore;
use ues_ipld::{DAG_CBOR, Mst, cid_sha256};

fn value(n: u32) -> cid::Cid {
    cid_sha256(DAG_CBOR, &n.to_be_bytes())
}

fn key_strategy() -> impl Strategy<Value = String> {
    // Few collections and short rkeys: plenty of shared prefixes and collisions.
    (0..3u8, "[a-z0-9]{1,6}")
        .prop_map(|(c, rk)| format!("app.bsky.{}/{rk}", ["feed.post", "feed.like", "graph.follow"][c as usize]))
}

fn root_of(entries: &BTreeMap<String, u32>) -> cid::Cid {
    let mut m = Mst::new(MemoryBlockstore::new());
    for (k, v) in entries {
        m.insert(k, value(*v)).unwrap();
    }
    m.root().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn insertion_order_never_changes_the_root(entries in prop::collection::btree_map(key_strategy(), 0u32..1000, 0..120), seed in any::<u64>()) {
        let expected = root_of(&entries);
        let mut shuffled: Vec<_> = entries.iter().collect();
        // Deterministic shuffle from the seed.
        let mut x = seed | 1;
        for i in (1..shuffled.len()).rev() {
            x ^= x << 13; x ^= x >> 7; x ^= x << 17;
            shuffled.swap(i, (x % (i as u64 + 1)) as usize);
        }
        let mut m = Mst::new(MemoryBlockstore::new());
        for (k, v) in shuffled {
            m.insert(k, value(*v)).unwrap();
        }
        prop_assert_eq!(m.root().unwrap(), expected);
    }

    #[test]
    fn delete_undoes_put_through_the_store(base in prop::collection::btree_map(key_strategy(), 0u32..1000, 0..80), extra in prop::collection::btree_map(key_strategy(), 0u32..1000, 1..20)) {
        let store = MemoryBlockstore::new();
        let mut m = Mst::new(&store);
        for (k, v) in &base {
            m.insert(k, value(*v)).unwrap();
        }
        let before = m.root().unwrap();
        let mut m = Mst::load(&store, before).unwrap();
        let mut added = Vec::new();
        for (k, v) in &extra {
            if !base.contains_key(k) {
                m.insert(k, value(*v)).unwrap();
                added.push(k.clone());
            }
        }
        let mid = m.root().unwrap();
        let mut all = base.clone();
        for k in &added { all.insert(k.clone(), extra[k]); }
        prop_assert_eq!(mid, root_of(&all));
        let mut m = Mst::load(&store, mid).unwrap();
        for k in &added {
            prop_assert!(m.remove(k).unwrap().is_some());
        }
        prop_assert_eq!(m.root().unwrap(), before);
        // Listing gives every key in order.
        let listed: Vec<String> = m.list(None, usize::MAX).unwrap().into_iter().map(|e| e.0).collect();
        prop_assert_eq!(listed, base.keys().cloned().collect::<Vec<_>>());
        for (k, v) in &base {
            prop_assert_eq!(m.get(k).unwrap(), Some(value(*v)));
        }
    }
}
