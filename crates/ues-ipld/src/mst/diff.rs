//! Diffs between two MST roots, covering proofs, and operation inversion.
//!
//! The diff walks both trees in key order at once and skips every subtree whose CID is equal on
//! both sides, so it reads O(d * log n) nodes for d differences.

use std::collections::BTreeSet;

use cid::Cid;
use parking_lot::Mutex;
use ues_storage::Blockstore;

use super::{Mst, MstLimits, from_wire, node};
use crate::MstError;

/// One record-level change between two trees.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct RecordOp {
    /// The key (`collection/rkey`).
    pub path: String,
    /// Value before (`None`: created).
    pub old: Option<Cid>,
    /// Value after (`None`: deleted).
    pub new: Option<Cid>,
}

/// What changed between two roots.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MstDiff {
    /// Nodes of the new tree that the old one does not have.
    pub created_nodes: BTreeSet<Cid>,
    /// Nodes of the old tree that the new one does not have.
    pub deleted_nodes: BTreeSet<Cid>,
    /// Record changes, in key order.
    pub ops: Vec<RecordOp>,
    /// Nodes read to compute the diff (for benchmarks: O(d log n)).
    pub nodes_read: usize,
}

#[derive(Debug, Clone)]
enum Item {
    Leaf(Vec<u8>, Cid),
    Tree(Cid, u8),
}

struct Walker<'a, B> {
    store: &'a B,
    limits: MstLimits,
    stack: Vec<std::vec::IntoIter<Item>>,
    current: Option<Item>,
    opened: Vec<Cid>,
}

impl<'a, B: Blockstore> Walker<'a, B> {
    fn new(store: &'a B, root: Cid, limits: MstLimits) -> Result<Self, MstError> {
        let n = load_root_layer(store, &root, limits)?;
        Ok(Self { store, limits, stack: Vec::new(), current: Some(Item::Tree(root, n)), opened: Vec::new() })
    }

    fn advance(&mut self) {
        self.current = None;
        while let Some(top) = self.stack.last_mut() {
            if let Some(item) = top.next() {
                self.current = Some(item);
                return;
            }
            self.stack.pop();
        }
    }

    /// Replaces the current subtree item with its contents.
    fn step_into(&mut self) -> Result<(), MstError> {
        let Some(Item::Tree(cid, layer)) = self.current.take() else { unreachable!("step_into on a leaf") };
        let bytes = self.store.get(&cid)?.ok_or(MstError::MissingNode(cid))?;
        let wire = node::decode(&bytes, self.limits.max_entries)?;
        let node = from_wire(cid, wire, Some(layer))?;
        self.opened.push(cid);
        let child_layer = layer.saturating_sub(1);
        let mut items = Vec::with_capacity(node.entries.len() * 2 + 1);
        let as_item = |l: &super::Link| match l {
            super::Link::Stored(c) => Some(Item::Tree(*c, child_layer)),
            _ => None,
        };
        items.extend(as_item(&node.left));
        for e in &node.entries {
            items.push(Item::Leaf(e.key.to_vec(), e.value));
            items.extend(as_item(&e.right));
        }
        self.stack.push(items.into_iter());
        self.advance();
        Ok(())
    }
}

/// The layer of a root node (its first key's height; 0 for the empty tree).
fn load_root_layer<B: Blockstore>(store: &B, root: &Cid, limits: MstLimits) -> Result<u8, MstError> {
    let bytes = store.get(root)?.ok_or(MstError::MissingNode(*root))?;
    let wire = node::decode(&bytes, limits.max_entries)?;
    Ok(from_wire(*root, wire, None)?.layer)
}

fn path_of(key: &[u8]) -> String {
    String::from_utf8_lossy(key).into_owned()
}

/// Diffs the tree at `old` against the tree at `new`, both readable from `store`.
pub fn diff<B: Blockstore>(store: &B, old: Option<Cid>, new: Cid) -> Result<MstDiff, MstError> {
    let limits = MstLimits::default();
    let mut b = Walker::new(store, new, limits)?;
    let mut a = match old {
        Some(root) => Walker::new(store, root, limits)?,
        None => Walker { store, limits, stack: Vec::new(), current: None, opened: Vec::new() },
    };
    let mut ops = Vec::new();
    loop {
        match (a.current.clone(), b.current.clone()) {
            (None, None) => break,
            (Some(Item::Leaf(k, v)), None) => {
                ops.push(RecordOp { path: path_of(&k), old: Some(v), new: None });
                a.advance();
            }
            (None, Some(Item::Leaf(k, v))) => {
                ops.push(RecordOp { path: path_of(&k), old: None, new: Some(v) });
                b.advance();
            }
            (Some(Item::Tree(..)), None) => a.step_into()?,
            (None, Some(Item::Tree(..))) => b.step_into()?,
            (Some(Item::Leaf(ka, va)), Some(Item::Leaf(kb, vb))) => match ka.cmp(&kb) {
                std::cmp::Ordering::Equal => {
                    if va != vb {
                        ops.push(RecordOp { path: path_of(&ka), old: Some(va), new: Some(vb) });
                    }
                    a.advance();
                    b.advance();
                }
                std::cmp::Ordering::Less => {
                    ops.push(RecordOp { path: path_of(&ka), old: Some(va), new: None });
                    a.advance();
                }
                std::cmp::Ordering::Greater => {
                    ops.push(RecordOp { path: path_of(&kb), old: None, new: Some(vb) });
                    b.advance();
                }
            },
            (Some(Item::Tree(ca, la)), Some(Item::Tree(cb, lb))) => {
                if ca == cb {
                    a.advance();
                    b.advance();
                } else if la > lb {
                    a.step_into()?;
                } else if lb > la {
                    b.step_into()?;
                } else {
                    a.step_into()?;
                    b.step_into()?;
                }
            }
            (Some(Item::Tree(..)), Some(Item::Leaf(..))) => a.step_into()?,
            (Some(Item::Leaf(..)), Some(Item::Tree(..))) => b.step_into()?,
        }
    }
    let opened_a: BTreeSet<Cid> = a.opened.iter().copied().collect();
    let opened_b: BTreeSet<Cid> = b.opened.iter().copied().collect();
    Ok(MstDiff {
        created_nodes: opened_b.difference(&opened_a).copied().collect(),
        deleted_nodes: opened_a.difference(&opened_b).copied().collect(),
        nodes_read: a.opened.len() + b.opened.len(),
        ops,
    })
}

/// A read-only view of a store that records which blocks were read.
struct Tracking<'a, B> {
    inner: &'a B,
    read: Mutex<BTreeSet<Cid>>,
}

impl<B: Blockstore> Blockstore for Tracking<'_, B> {
    fn put(&self, _: &Cid, _: &[u8]) -> ues_storage::Result<()> {
        Ok(())
    }
    fn put_many(&self, _: &[(Cid, Vec<u8>)]) -> ues_storage::Result<()> {
        Ok(())
    }
    fn get(&self, cid: &Cid) -> ues_storage::Result<Option<Vec<u8>>> {
        let found = self.inner.get(cid)?;
        if found.is_some() {
            self.read.lock().insert(*cid);
        }
        Ok(found)
    }
    fn has(&self, cid: &Cid) -> ues_storage::Result<bool> {
        self.inner.has(cid)
    }
    fn delete(&self, _: &Cid) -> ues_storage::Result<()> {
        Ok(())
    }
    fn iter(&self) -> Box<dyn Iterator<Item = ues_storage::Result<(Cid, Vec<u8>)>> + '_> {
        self.inner.iter()
    }
}

/// The nodes of the tree at `root` on the search path of each key: an inclusion proof for keys
/// present and an exclusion proof for keys absent.
pub fn proof_nodes<B: Blockstore>(
    store: &B,
    root: Cid,
    keys: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<BTreeSet<Cid>, MstError> {
    let mut keys = keys.into_iter().peekable();
    // No key, no path: nothing to prove (the root itself is in the commit).
    if keys.peek().is_none() {
        return Ok(BTreeSet::new());
    }
    tracked(store, root, |mst| {
        for k in keys {
            mst.touch_search_path(k.as_ref())?;
        }
        Ok(())
    })
}

/// Runs `f` on the tree at `root` read through a tracking view; returns the nodes it read.
fn tracked<B: Blockstore>(
    store: &B,
    root: Cid,
    f: impl FnOnce(&mut Mst<&Tracking<'_, B>>) -> Result<(), MstError>,
) -> Result<BTreeSet<Cid>, MstError> {
    let tracking = Tracking { inner: store, read: Mutex::new(BTreeSet::new()) };
    f(&mut Mst::load(&tracking, root)?)?;
    Ok(tracking.read.into_inner())
}

/// The covering proof of `keys` in the tree at `root`: for each key, the nodes on its search path
/// and on the paths to its left and right neighbours. With these blocks alone a reader can check
/// each key's presence or absence and invert operations on those keys.
pub fn covering_proof<B: Blockstore>(
    store: &B,
    root: Cid,
    keys: impl IntoIterator<Item = impl AsRef<str>>,
) -> Result<BTreeSet<Cid>, MstError> {
    tracked(store, root, |mst| {
        for k in keys {
            mst.touch_covering_path(k.as_ref())?;
        }
        Ok(())
    })
}

/// Applies `ops` in reverse to the tree at `new` (reading only from `store`) and returns the
/// resulting root, which equals the previous root when `ops` is the complete set of changes;
/// also returns the nodes the inversion had to read (the "inductive proof").
pub fn invert<B: Blockstore>(store: &B, new: Cid, ops: &[RecordOp]) -> Result<(Cid, BTreeSet<Cid>), MstError> {
    if ops.is_empty() {
        return Ok((new, BTreeSet::new()));
    }
    let tracking = Tracking { inner: store, read: Mutex::new(BTreeSet::new()) };
    let mut mst = Mst::load(&tracking, new)?;
    for op in ops.iter().rev() {
        match (op.old, op.new) {
            (None, Some(_)) => {
                if mst.remove(&op.path)?.is_none() {
                    return Err(MstError::Malformed(format!("inverting a create of {}: key absent", op.path)));
                }
            }
            (Some(old), _) => {
                mst.insert(&op.path, old)?;
            }
            (None, None) => {}
        }
    }
    let (root, _) = mst.root_and_blocks();
    Ok((root, tracking.read.into_inner()))
}

/// Everything a commit from one tree to another proves and needs: the diff, the proof nodes
/// (each changed key's inclusion or exclusion path in the new tree) and the inversion proof
/// (the new tree's nodes that undoing the operations, in reverse key order, reads).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// Created and deleted nodes and the record operations.
    pub diff: MstDiff,
    /// Inclusion proofs of created and updated keys, exclusion proofs of deleted ones.
    pub proof_nodes: BTreeSet<Cid>,
    /// The nodes inverting the operations reads.
    pub inductive_proof_nodes: BTreeSet<Cid>,
}

/// The [`DiffReport`] from `old` to `new`; fails if undoing the operations does not give `old`.
pub fn diff_report<B: Blockstore>(store: &B, old: Cid, new: Cid) -> Result<DiffReport, MstError> {
    let d = diff(store, Some(old), new)?;
    let proof = proof_nodes(store, new, d.ops.iter().map(|o| o.path.as_str()))?;
    let (back, inductive) = invert(store, new, &d.ops)?;
    if back != old {
        return Err(MstError::Malformed(format!("inverting the diff's operations gave {back}, not {old}")));
    }
    Ok(DiffReport { diff: d, proof_nodes: proof, inductive_proof_nodes: inductive })
}

/// What a full check of a tree found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeStats {
    /// Nodes in the tree.
    pub nodes: usize,
    /// Keys in the tree.
    pub entries: usize,
    /// Layer of the root (0 for a one-level tree).
    pub root_layer: u8,
    /// Leaf values (records) the store does not hold.
    pub missing_records: usize,
}

/// Walks the whole tree at `root` and checks everything the format requires: strict node
/// encoding, key heights equal to their node's layer, keys strictly ascending across the whole
/// tree (every subtree inside its parent's key range), no empty nodes except intermediate ones
/// and the empty root, blessed CIDs for node links. Counts leaf values absent from `store`.
pub fn verify_tree<B: Blockstore>(store: &B, root: Cid) -> Result<TreeStats, MstError> {
    let limits = MstLimits::default();
    let bytes = store.get(&root)?.ok_or(MstError::MissingNode(root))?;
    let top = from_wire(root, node::decode(&bytes, limits.max_entries)?, None)?;
    let mut stats = TreeStats { root_layer: top.layer, ..TreeStats::default() };
    let mut last: Option<Vec<u8>> = None;
    check_node(store, limits, &top, true, &mut last, &mut stats)?;
    Ok(stats)
}

fn check_node<B: Blockstore>(
    store: &B,
    limits: MstLimits,
    n: &super::Node,
    is_root: bool,
    last: &mut Option<Vec<u8>>,
    stats: &mut TreeStats,
) -> Result<(), MstError> {
    stats.nodes += 1;
    if !is_root && n.is_void() {
        return Err(MstError::Malformed("an empty node below the root".into()));
    }
    let child = |link: &super::Link, last: &mut Option<Vec<u8>>, stats: &mut TreeStats| -> Result<(), MstError> {
        if let super::Link::Stored(cid) = link {
            let layer =
                n.layer.checked_sub(1).ok_or_else(|| MstError::Malformed("layer 0 node has children".into()))?;
            let bytes = store.get(cid)?.ok_or(MstError::MissingNode(*cid))?;
            if bytes.len() > limits.max_node_bytes {
                return Err(MstError::NodeTooLarge { cid: *cid, bytes: bytes.len() });
            }
            let sub = from_wire(*cid, node::decode(&bytes, limits.max_entries)?, Some(layer))?;
            check_node(store, limits, &sub, false, last, stats)?;
        }
        Ok(())
    };
    child(&n.left, last, stats)?;
    for e in &n.entries {
        if last.as_deref().is_some_and(|prev| prev >= &*e.key) {
            return Err(MstError::UnsortedKeys(path_of(&e.key)));
        }
        *last = Some(e.key.to_vec());
        stats.entries += 1;
        if !store.has(&e.value)? {
            stats.missing_records += 1;
        }
        child(&e.right, last, stats)?;
    }
    Ok(())
}
