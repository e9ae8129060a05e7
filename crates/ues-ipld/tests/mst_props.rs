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

fn tree(store: &MemoryBlockstore, entries: &BTreeMap<String, u32>) -> cid::Cid {
    let mut m = Mst::new(store);
    for (k, v) in entries {
        m.insert(k, value(*v)).unwrap();
    }
    m.root().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn diff_applied_to_a_gives_b_and_inverts_back(
        a in prop::collection::btree_map(key_strategy(), 0u32..5, 0..100),
        b in prop::collection::btree_map(key_strategy(), 0u32..5, 0..100),
    ) {
        use ues_ipld::mst::{covering_proof, diff, invert};
        use ues_ipld::storage::Blockstore;
        let store = MemoryBlockstore::new();
        let (ra, rb) = (tree(&store, &a), tree(&store, &b));
        let d = diff(&store, Some(ra), rb).unwrap();
        // Apply the ops to a: we get b.
        let mut m = Mst::load(&store, ra).unwrap();
        for op in &d.ops {
            match op.new {
                Some(v) => { m.insert(&op.path, v).unwrap(); }
                None => { prop_assert!(m.remove(&op.path).unwrap().is_some()); }
            }
        }
        prop_assert_eq!(m.root().unwrap(), rb);
        // Every op is a real difference.
        for op in &d.ops {
            prop_assert_ne!(op.old, op.new);
        }
        let changed = a.iter().filter(|(k, v)| b.get(*k) != Some(*v)).count()
            + b.keys().filter(|k| !a.contains_key(*k)).count();
        prop_assert_eq!(d.ops.len(), changed);
        // Created nodes are exactly the new tree's nodes the old tree lacks.
        let nodes = |root| -> std::collections::BTreeSet<cid::Cid> {
            let mut all = std::collections::BTreeSet::new();
            collect_nodes(&store, root, &mut all);
            all
        };
        let (na, nb) = (nodes(ra), nodes(rb));
        prop_assert_eq!(&d.created_nodes, &nb.difference(&na).copied().collect());
        prop_assert_eq!(&d.deleted_nodes, &na.difference(&nb).copied().collect());
        // Inverting on the covering proof alone gives a back.
        let keys: Vec<&str> = d.ops.iter().map(|o| o.path.as_str()).collect();
        let proof = covering_proof(&store, rb, &keys).unwrap();
        let only = MemoryBlockstore::verifying();
        for c in &proof { only.put(c, &store.get(c).unwrap().unwrap()).unwrap(); }
        let (back, _) = invert(&only, rb, &d.ops).unwrap();
        prop_assert_eq!(back, ra);
    }

    #[test]
    fn proofs_verify_and_tampering_fails(entries in prop::collection::btree_map(key_strategy(), 0u32..1000, 1..100), probe in key_strategy(), flip in any::<usize>()) {
        use ues_ipld::mst::covering_proof;
        use ues_ipld::storage::Blockstore;
        let store = MemoryBlockstore::new();
        let root = tree(&store, &entries);
        let key = entries.keys().nth(flip % entries.len()).unwrap().clone();
        for k in [key.as_str(), probe.as_str()] {
            let proof = covering_proof(&store, root, [k]).unwrap();
            let only = MemoryBlockstore::verifying();
            for c in &proof { only.put(c, &store.get(c).unwrap().unwrap()).unwrap(); }
            // The proof alone answers the lookup: present with its value, or absent.
            let got = Mst::load(&only, root).unwrap().get(k).unwrap();
            prop_assert_eq!(got, entries.get(k).map(|v| value(*v)));
            // Flip one byte of a block on the search path: the lookup must fail, never answer.
            let path = ues_ipld::mst::proof_nodes(&store, root, [k]).unwrap();
            prop_assert!(path.is_subset(&proof));
            // The path's blocks the lookup reads (those it fails without; the path may also
            // hold the node just below the key's layer, which a lookup by key height skips).
            let read: Vec<cid::Cid> = path
                .iter()
                .filter(|v| {
                    let without = MemoryBlockstore::verifying();
                    for c in proof.iter().filter(|c| c != v) {
                        without.put(c, &store.get(c).unwrap().unwrap()).unwrap();
                    }
                    Mst::load(&without, root).and_then(|mut m| m.get(k)).is_err()
                })
                .copied()
                .collect();
            prop_assert!(read.contains(&root));
            let victim = read[flip % read.len()];
            let mut bytes = store.get(&victim).unwrap().unwrap();
            let at = flip % bytes.len();
            bytes[at] ^= 0x01;
            only.corrupt_block_for_test(&victim, &bytes);
            prop_assert!(Mst::load(&only, root).and_then(|mut m| m.get(k)).is_err());
        }
    }
}

fn collect_nodes(store: &MemoryBlockstore, root: cid::Cid, out: &mut std::collections::BTreeSet<cid::Cid>) {
    use ues_ipld::storage::Blockstore;
    let bytes = store.get(&root).unwrap().unwrap();
    out.insert(root);
    let node = ues_ipld::mst::decode_node(&bytes, 4096).unwrap();
    for c in node.left.iter().chain(node.entries.iter().filter_map(|e| e.2.as_ref())) {
        collect_nodes(store, *c, out);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn bulk_build_equals_inserts(entries in prop::collection::vec((key_strategy(), 0u32..1000), 0..150)) {
        let mut inserted = Mst::new(MemoryBlockstore::new());
        for (k, v) in &entries {
            inserted.insert(k, value(*v)).unwrap();
        }
        let mut bulk = Mst::from_entries(MemoryBlockstore::new(), entries.iter().map(|(k, v)| (k.clone(), value(*v)))).unwrap();
        prop_assert_eq!(bulk.root().unwrap(), inserted.root().unwrap());
    }
}
