//! Hostile trees give typed errors, never panics or unbounded work.

use cid::Cid;
use ues_ipld::mst::{encode_node, key_height, node_cid, verify_tree};
use ues_ipld::storage::{Blockstore, MemoryBlockstore};
use ues_ipld::{DAG_CBOR, Mst, MstError, MstLimits, cid_sha256};

fn val() -> Cid {
    cid_sha256(DAG_CBOR, b"record")
}

/// Stores a node built from (key, right) pairs and returns its CID.
fn put_node(store: &MemoryBlockstore, left: Option<Cid>, entries: &[(&str, Option<Cid>)]) -> Cid {
    let v = val();
    let bytes = encode_node(left.as_ref(), entries.iter().map(|(k, r)| (k.as_bytes(), &v, r.as_ref())));
    let cid = node_cid(&bytes);
    store.put(&cid, &bytes).unwrap();
    cid
}

/// Keys of a given height, found by counting up.
fn keys_of_height(h: u8, n: usize) -> Vec<String> {
    (0..).map(|i| format!("app.bsky.feed.post/k{i}")).filter(|k| key_height(k.as_bytes()) == h).take(n).collect()
}

#[test]
fn wrong_key_height_is_refused() {
    let store = MemoryBlockstore::new();
    let k0 = keys_of_height(0, 1);
    let k1 = keys_of_height(1, 1);
    // A root with a height-0 key pointing to a child that holds a height-1 key.
    let child = put_node(&store, None, &[(&k1[0], None)]);
    let root = put_node(&store, Some(child), &[(&k0[0], None)]);
    let err = Mst::load(&store, root).map(|_| ()).unwrap_err();
    assert!(matches!(err, MstError::Malformed(_)), "{err}"); // layer 0 with children
    let k1b = keys_of_height(1, 2);
    let bad_child = put_node(&store, None, &[(&k1b[1], None)]);
    let root = put_node(&store, Some(bad_child), &[(&k1b[0], None)]);
    let err = verify_tree(&store, root).unwrap_err();
    assert!(matches!(err, MstError::WrongHeight { layer: 0, height: 1, .. }), "{err}");
}

#[test]
fn unsorted_keys_are_refused_within_and_across_nodes() {
    let store = MemoryBlockstore::new();
    let ks = keys_of_height(0, 2);
    let (a, b) = if ks[0] < ks[1] { (&ks[0], &ks[1]) } else { (&ks[1], &ks[0]) };
    let root = put_node(&store, None, &[(b, None), (a, None)]);
    assert!(matches!(Mst::load(&store, root).map(|_| ()), Err(MstError::UnsortedKeys(_))));
    // Across nodes: a left subtree holding a key greater than its parent's first key.
    let hi = keys_of_height(1, 1);
    let lo: Vec<String> = keys_of_height(0, 50).into_iter().filter(|k| k > &hi[0]).take(1).collect();
    let child = put_node(&store, None, &[(&lo[0], None)]);
    let root = put_node(&store, Some(child), &[(&hi[0], None)]);
    assert!(matches!(verify_tree(&store, root), Err(MstError::UnsortedKeys(_))));
}

#[test]
fn oversized_nodes_and_foreign_links_are_refused() {
    let store = MemoryBlockstore::new();
    let ks = keys_of_height(0, 40);
    let mut sorted = ks.clone();
    sorted.sort();
    let entries: Vec<(&str, Option<Cid>)> = sorted.iter().map(|k| (k.as_str(), None)).collect();
    let root = put_node(&store, None, &entries);
    let limits = MstLimits { max_entries: 16, ..MstLimits::default() };
    assert!(matches!(
        Mst::load_with(&store, root, limits).map(|_| ()),
        Err(MstError::TooManyEntries { entries: 40, max: 16 })
    ));
    let limits = MstLimits { max_node_bytes: 100, ..MstLimits::default() };
    assert!(matches!(Mst::load_with(&store, root, limits).map(|_| ()), Err(MstError::NodeTooLarge { .. })));
    // A subtree link with the raw codec is not a blessed MST node link.
    let raw_link = cid_sha256(0x55, b"x");
    let k1 = keys_of_height(1, 1);
    let root = put_node(&store, Some(raw_link), &[(&k1[0], None)]);
    assert!(matches!(Mst::load(&store, root).map(|_| ()), Err(MstError::BadNodeLink(_))));
}

#[test]
fn missing_and_garbage_nodes_are_typed_errors() {
    let store = MemoryBlockstore::new();
    let absent = cid_sha256(DAG_CBOR, b"nothing");
    assert!(matches!(Mst::load(&store, absent).map(|_| ()), Err(MstError::MissingNode(_))));
    let garbage = b"\xa2\x61e\x80\x61l\xf6\x00".to_vec(); // a valid node plus a trailing byte
    let cid = cid_sha256(DAG_CBOR, &garbage);
    store.put(&cid, &garbage).unwrap();
    assert!(matches!(Mst::load(&store, cid).map(|_| ()), Err(MstError::Cbor(_))));
    // A child that is missing surfaces when a lookup needs it.
    let k1 = keys_of_height(1, 1);
    let root = put_node(&store, Some(absent), &[(&k1[0], None)]);
    let mut mst = Mst::load(&store, root).unwrap();
    let before: String = keys_of_height(0, 100).into_iter().find(|k| k < &k1[0]).unwrap();
    assert!(matches!(mst.get(&before), Err(MstError::MissingNode(c)) if c == absent));
}
