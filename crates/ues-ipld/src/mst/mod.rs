//! The AT Protocol Merkle Search Tree over a [`Blockstore`].
//!
//! Nodes load lazily: a write reads only the O(log n) nodes on its path. Changed nodes are
//! re-encoded once, when [`Mst::root`] is asked for, bottom-up; unchanged subtrees keep their
//! CIDs and are never touched. The shape is a pure function of the key/value set, so the root
//! CID matches Bluesky's `@atproto/repo` bit for bit.

mod diff;
mod node;

use std::cmp::Ordering;

use cid::Cid;
use ues_storage::Blockstore;

pub use diff::{
    DiffReport, MstDiff, RecordOp, TreeStats, covering_proof, diff, diff_report, invert, proof_nodes, verify_tree,
};
pub use node::{WireNode, common_prefix_len, decode as decode_node, encode as encode_node, key_height, node_cid};

use crate::MstError;

/// Longest key accepted (AT Protocol repository paths are far shorter).
pub const MAX_KEY_LEN: usize = 1024;

/// Limits applied to nodes read from the store.
#[derive(Debug, Clone, Copy)]
pub struct MstLimits {
    /// Entries one node may hold.
    pub max_entries: usize,
    /// Encoded size of one node.
    pub max_node_bytes: usize,
}

impl Default for MstLimits {
    fn default() -> Self {
        // A fanout-4 tree averages 4 entries a node; these bounds are far out of statistical
        // reach for honest keys and still cheap to hold.
        Self { max_entries: 2048, max_node_bytes: 512 * 1024 }
    }
}

#[derive(Debug, Clone)]
enum Link {
    Empty,
    Stored(Cid),
    Loaded(Box<Node>),
}

impl Link {
    fn is_empty(&self) -> bool {
        matches!(self, Link::Empty)
    }
}

/// Keys up to 48 bytes (every AT Protocol path in practice) live inside the entry, so a binary
/// search over a node touches only the node's own memory, not a heap allocation per key.
type Key = smallvec::SmallVec<[u8; 48]>;

#[derive(Debug, Clone)]
struct Entry {
    key: Key,
    value: Cid,
    right: Link,
}

#[derive(Debug, Clone)]
struct Node {
    layer: u8,
    left: Link,
    entries: Vec<Entry>,
    /// The node's CID while it is unchanged since it was loaded or last encoded.
    cid: Option<Cid>,
}

impl Node {
    fn empty(layer: u8) -> Self {
        Self { layer, left: Link::Empty, entries: Vec::new(), cid: None }
    }

    fn is_void(&self) -> bool {
        self.entries.is_empty() && self.left.is_empty()
    }

    /// The link just before entry `i` (the left link for 0, else entry i-1's right).
    fn link_mut(&mut self, i: usize) -> &mut Link {
        if i == 0 { &mut self.left } else { &mut self.entries[i - 1].right }
    }

    fn position(&self, key: &[u8]) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| (*e.key).cmp(key))
    }
}

struct Ctx<'a, B> {
    store: &'a B,
    limits: MstLimits,
}

impl<B: Blockstore> Ctx<'_, B> {
    fn load(&self, cid: &Cid, layer: u8) -> Result<Box<Node>, MstError> {
        let bytes = self.store.get(cid)?.ok_or(MstError::MissingNode(*cid))?;
        if bytes.len() > self.limits.max_node_bytes {
            return Err(MstError::NodeTooLarge { cid: *cid, bytes: bytes.len() });
        }
        let wire = node::decode(&bytes, self.limits.max_entries)?;
        from_wire(*cid, wire, Some(layer))
    }

    /// Resolves a link in place (loading it) and returns the node, if any.
    fn resolve<'n>(&self, link: &'n mut Link, layer: u8) -> Result<Option<&'n mut Node>, MstError> {
        if let Link::Stored(cid) = link {
            *link = Link::Loaded(self.load(cid, layer)?);
        }
        Ok(match link {
            Link::Loaded(n) => Some(n),
            _ => None,
        })
    }

    fn take(&self, link: &mut Link, layer: u8) -> Result<Option<Box<Node>>, MstError> {
        Ok(match std::mem::replace(link, Link::Empty) {
            Link::Empty => None,
            Link::Stored(cid) => Some(self.load(&cid, layer)?),
            Link::Loaded(n) => Some(n),
        })
    }
}

/// Builds a node from its wire form, checking every key's height against the node's layer
/// (`expected`, or the first key's height for a root).
fn from_wire(cid: Cid, wire: WireNode, expected: Option<u8>) -> Result<Box<Node>, MstError> {
    let layer = match (expected, wire.entries.first()) {
        (Some(l), _) => l,
        (None, Some((k, _, _))) => key_height(k),
        (None, None) if wire.left.is_none() => 0,
        (None, None) => return Err(MstError::Malformed("root is an empty node pointing to a subtree".into())),
    };
    let has_children = wire.left.is_some() || wire.entries.iter().any(|e| e.2.is_some());
    if layer == 0 && has_children {
        return Err(MstError::Malformed("a node on layer 0 has children".into()));
    }
    let mut entries = Vec::with_capacity(wire.entries.len());
    for (key, value, right) in wire.entries {
        let h = key_height(&key);
        if h != layer {
            return Err(MstError::WrongHeight { key: String::from_utf8_lossy(&key).into_owned(), height: h, layer });
        }
        entries.push(Entry { key: Key::from_vec(key), value, right: right.map_or(Link::Empty, Link::Stored) });
    }
    Ok(Box::new(Node { layer, left: wire.left.map_or(Link::Empty, Link::Stored), entries, cid: Some(cid) }))
}

/// A possibly empty subtree, loaded.
type Subtree = Option<Box<Node>>;

fn normalize(n: Box<Node>) -> Option<Box<Node>> {
    if n.is_void() { None } else { Some(n) }
}

fn into_link(n: Option<Box<Node>>) -> Link {
    n.map_or(Link::Empty, Link::Loaded)
}

/// Splits a subtree around `key` (which it does not contain) into the parts before and after.
fn split<B: Blockstore>(ctx: &Ctx<'_, B>, node: Option<Box<Node>>, key: &[u8]) -> Result<(Subtree, Subtree), MstError> {
    let Some(mut n) = node else { return Ok((None, None)) };
    n.cid = None;
    let i = n.position(key).unwrap_or_else(|i| i);
    let below = n.layer.checked_sub(1);
    let boundary = match below {
        Some(l) => ctx.take(n.link_mut(i), l)?,
        None => None,
    };
    let (lo, hi) = split(ctx, boundary, key)?;
    let right_entries = n.entries.split_off(i);
    *n.link_mut(i) = into_link(lo);
    let right = Box::new(Node { layer: n.layer, left: into_link(hi), entries: right_entries, cid: None });
    Ok((normalize(n), normalize(right)))
}

/// Joins two adjacent subtrees of the same layer (every key of `a` before every key of `b`).
fn merge<B: Blockstore>(
    ctx: &Ctx<'_, B>,
    a: Option<Box<Node>>,
    b: Option<Box<Node>>,
) -> Result<Option<Box<Node>>, MstError> {
    let (mut a, mut b) = match (a, b) {
        (None, x) | (x, None) => return Ok(x),
        (Some(a), Some(b)) => (a, b),
    };
    a.cid = None;
    if let Some(l) = a.layer.checked_sub(1) {
        let last = a.entries.len();
        let a_edge = std::mem::replace(a.link_mut(last), Link::Empty);
        let b_edge = std::mem::replace(&mut b.left, Link::Empty);
        *a.link_mut(last) = merge_links(ctx, a_edge, b_edge, l)?;
    }
    a.entries.append(&mut b.entries);
    Ok(normalize(a))
}

/// Merges two adjacent subtrees on `layer`, reading only what the merge changes: when one side
/// is empty the other stays as it is, unread (an inversion proof then needs no block of it).
fn merge_links<B: Blockstore>(ctx: &Ctx<'_, B>, mut a: Link, mut b: Link, layer: u8) -> Result<Link, MstError> {
    if a.is_empty() {
        return Ok(b);
    }
    if b.is_empty() {
        return Ok(a);
    }
    let (a, b) = (ctx.take(&mut a, layer)?, ctx.take(&mut b, layer)?);
    Ok(into_link(merge(ctx, a, b)?))
}

fn insert<B: Blockstore>(
    ctx: &Ctx<'_, B>,
    node: &mut Node,
    key: &[u8],
    height: u8,
    value: Cid,
) -> Result<Option<Cid>, MstError> {
    match node.position(key) {
        Ok(i) => {
            let old = std::mem::replace(&mut node.entries[i].value, value);
            if old != value {
                node.cid = None;
            }
            Ok(Some(old))
        }
        Err(i) if height == node.layer => {
            node.cid = None;
            let (lo, hi) = match node.layer.checked_sub(1) {
                Some(l) => {
                    let sub = ctx.take(node.link_mut(i), l)?;
                    split(ctx, sub, key)?
                }
                None => (None, None),
            };
            *node.link_mut(i) = into_link(lo);
            node.entries.insert(i, Entry { key: Key::from_slice(key), value, right: into_link(hi) });
            Ok(None)
        }
        Err(i) => {
            let below = node.layer - 1; // height < layer here
            let link = node.link_mut(i);
            if link.is_empty() {
                *link = Link::Loaded(Box::new(Node::empty(below)));
            }
            let child = ctx.resolve(link, below)?.expect("just ensured");
            let old = insert(ctx, child, key, height, value)?;
            if old != Some(value) {
                node.cid = None;
            }
            Ok(old)
        }
    }
}

fn remove<B: Blockstore>(ctx: &Ctx<'_, B>, node: &mut Node, key: &[u8], height: u8) -> Result<Option<Cid>, MstError> {
    match node.position(key) {
        Ok(i) => {
            node.cid = None;
            let entry = node.entries.remove(i);
            if let Some(l) = node.layer.checked_sub(1) {
                let before = std::mem::replace(node.link_mut(i), Link::Empty);
                *node.link_mut(i) = merge_links(ctx, before, entry.right, l)?;
            }
            Ok(Some(entry.value))
        }
        Err(_) if height >= node.layer => Ok(None),
        Err(i) => {
            let below = node.layer - 1;
            let link = node.link_mut(i);
            let Some(child) = ctx.resolve(link, below)? else { return Ok(None) };
            let old = remove(ctx, child, key, height)?;
            if old.is_some() {
                if child.is_void() {
                    *link = Link::Empty;
                }
                node.cid = None;
            }
            Ok(old)
        }
    }
}

fn get<B: Blockstore>(ctx: &Ctx<'_, B>, node: &mut Node, key: &[u8], height: u8) -> Result<Option<Cid>, MstError> {
    match node.position(key) {
        Ok(i) => Ok(Some(node.entries[i].value)),
        Err(_) if height >= node.layer => Ok(None),
        Err(i) => {
            let below = node.layer - 1;
            match ctx.resolve(node.link_mut(i), below)? {
                Some(child) => get(ctx, child, key, height),
                None => Ok(None),
            }
        }
    }
}

/// Descends toward `key` (of height `height`) as a proof of its presence or absence is read:
/// a node on a layer below the key's ends the path (the key cannot be there); otherwise the
/// node holds the key, or the path goes on into the subtree where the key would be, if any.
/// This is the walk of the independent MST test suite and of atmst, so proofs agree with
/// theirs node for node.
fn walk_search_path<B: Blockstore>(ctx: &Ctx<'_, B>, node: &mut Node, key: &[u8], height: u8) -> Result<(), MstError> {
    if height > node.layer {
        return Ok(());
    }
    if let Err(i) = node.position(key)
        && let Some(l) = node.layer.checked_sub(1)
        && let Some(child) = ctx.resolve(node.link_mut(i), l)?
    {
        walk_search_path(ctx, child, key, height)?;
    }
    Ok(())
}

/// Descends toward `key` the way a proof of its left neighbour does: at every node, into the
/// subtree just before the first entry >= `key` (loading it, which the store may record).
fn walk_left_neighbour<B: Blockstore>(ctx: &Ctx<'_, B>, node: &mut Node, key: &[u8]) -> Result<(), MstError> {
    let i = node.entries.partition_point(|e| &*e.key < key);
    if let Some(l) = node.layer.checked_sub(1)
        && let Some(child) = ctx.resolve(node.link_mut(i), l)?
    {
        walk_left_neighbour(ctx, child, key)?;
    }
    Ok(())
}

/// The mirror of [`walk_left_neighbour`]: into the subtree just after the last entry <= `key`.
fn walk_right_neighbour<B: Blockstore>(ctx: &Ctx<'_, B>, node: &mut Node, key: &[u8]) -> Result<(), MstError> {
    let i = node.entries.partition_point(|e| &*e.key <= key);
    if let Some(l) = node.layer.checked_sub(1)
        && let Some(child) = ctx.resolve(node.link_mut(i), l)?
    {
        walk_right_neighbour(ctx, child, key)?;
    }
    Ok(())
}

/// Builds the subtree on `layer` holding `items` (all of height <= `layer`), taking their keys.
fn build_sorted(items: &mut [(Key, Cid, u8)], layer: u8) -> Option<Box<Node>> {
    if items.is_empty() {
        return None;
    }
    let mut node = Box::new(Node::empty(layer));
    let mut start = 0;
    for i in 0..items.len() {
        if items[i].2 != layer {
            continue;
        }
        let sub = match layer.checked_sub(1) {
            Some(l) => build_sorted(&mut items[start..i], l),
            None => None,
        };
        let at = node.entries.len();
        *node.link_mut(at) = into_link(sub);
        let key = std::mem::take(&mut items[i].0);
        node.entries.push(Entry { key, value: items[i].1, right: Link::Empty });
        start = i + 1;
    }
    if let Some(l) = layer.checked_sub(1) {
        let at = node.entries.len();
        *node.link_mut(at) = into_link(build_sorted(&mut items[start..], l));
    }
    normalize(node)
}

/// Encodes every changed node under `node` (children first), appending new blocks to `out`.
fn encode_dirty(node: &mut Node, out: &mut Vec<(Cid, Vec<u8>)>) -> Cid {
    if let Some(cid) = node.cid {
        return cid;
    }
    fn link_cid(link: &mut Link, out: &mut Vec<(Cid, Vec<u8>)>) -> Option<Cid> {
        match link {
            Link::Empty => None,
            Link::Stored(c) => Some(*c),
            Link::Loaded(n) => Some(encode_dirty(n, out)),
        }
    }
    let left = link_cid(&mut node.left, out);
    let rights: Vec<Option<Cid>> = node.entries.iter_mut().map(|e| link_cid(&mut e.right, out)).collect();
    let bytes =
        node::encode(left.as_ref(), node.entries.iter().zip(&rights).map(|(e, r)| (&*e.key, &e.value, r.as_ref())));
    let cid = node::node_cid(&bytes);
    node.cid = Some(cid);
    out.push((cid, bytes));
    cid
}

/// Collects entries in key order with key > `after`, up to `limit`.
fn walk<B: Blockstore>(
    ctx: &Ctx<'_, B>,
    node: &mut Node,
    after: Option<&[u8]>,
    limit: usize,
    out: &mut Vec<(String, Cid)>,
) -> Result<(), MstError> {
    let start = match after {
        Some(a) => match node.position(a) {
            Ok(i) => i + 1,
            Err(i) => i,
        },
        None => 0,
    };
    let below = node.layer.checked_sub(1);
    // The subtree before entry `start` may hold keys after `after`.
    for i in start..=node.entries.len() {
        if out.len() >= limit {
            return Ok(());
        }
        if let Some(l) = below
            && let Some(child) = ctx.resolve(node.link_mut(i), l)?
        {
            walk(ctx, child, after, limit, out)?;
        }
        if i < node.entries.len() && out.len() < limit {
            let e = &node.entries[i];
            out.push((String::from_utf8_lossy(&e.key).into_owned(), e.value));
        }
    }
    Ok(())
}

fn check_key(key: &str) -> Result<(), MstError> {
    if key.is_empty() || key.len() > MAX_KEY_LEN {
        return Err(MstError::InvalidKey(key.chars().take(64).collect()));
    }
    Ok(())
}

/// A Merkle Search Tree whose nodes live in `B`.
pub struct Mst<B> {
    store: B,
    root: Box<Node>,
    limits: MstLimits,
}

impl<B: Blockstore> Mst<B> {
    /// An empty tree.
    pub fn new(store: B) -> Self {
        Self { store, root: Box::new(Node::empty(0)), limits: MstLimits::default() }
    }

    /// The tree whose root node is `root` (loaded now; everything below loads on demand).
    pub fn load(store: B, root: Cid) -> Result<Self, MstError> {
        Self::load_with(store, root, MstLimits::default())
    }

    /// As [`Mst::load`], with explicit limits.
    pub fn load_with(store: B, root: Cid, limits: MstLimits) -> Result<Self, MstError> {
        let bytes = store.get(&root)?.ok_or(MstError::MissingNode(root))?;
        if bytes.len() > limits.max_node_bytes {
            return Err(MstError::NodeTooLarge { cid: root, bytes: bytes.len() });
        }
        let wire = node::decode(&bytes, limits.max_entries)?;
        let root = from_wire(root, wire, None)?;
        Ok(Self { store, root, limits })
    }

    /// Builds a tree from entries in any order (duplicates: the last value wins): sorts, then
    /// builds in one pass with [`Mst::from_sorted`].
    pub fn from_entries(store: B, entries: impl IntoIterator<Item = (String, Cid)>) -> Result<Self, MstError> {
        let mut all: Vec<(String, Cid)> = entries.into_iter().collect();
        // Stable sort keeps insertion order among equal keys; keep the last of each run.
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut deduped: Vec<(String, Cid)> = Vec::with_capacity(all.len());
        for e in all {
            match deduped.last_mut() {
                Some(last) if last.0 == e.0 => *last = e,
                _ => deduped.push(e),
            }
        }
        Self::from_sorted(store, deduped)
    }

    /// Builds a tree in one pass from entries in strictly ascending key order (O(n · depth),
    /// no rebalancing): the fast path for imports and benchmarks.
    pub fn from_sorted(store: B, entries: impl IntoIterator<Item = (String, Cid)>) -> Result<Self, MstError> {
        let mut items: Vec<(Key, Cid, u8)> = Vec::new();
        for (k, v) in entries {
            check_key(&k)?;
            if items.last().is_some_and(|(prev, _, _)| **prev >= *k.as_bytes()) {
                return Err(MstError::UnsortedKeys(k));
            }
            let h = key_height(k.as_bytes());
            items.push((Key::from_vec(k.into_bytes()), v, h));
        }
        let Some(top) = items.iter().map(|i| i.2).max() else { return Ok(Self::new(store)) };
        let root = build_sorted(&mut items, top).expect("non-empty input gives a root");
        Ok(Self { store, root, limits: MstLimits::default() })
    }

    fn ctx(&self) -> Ctx<'_, B> {
        Ctx { store: &self.store, limits: self.limits }
    }

    /// The store the tree reads from and writes to.
    pub fn store(&self) -> &B {
        &self.store
    }

    /// The value under `key`.
    pub fn get(&mut self, key: &str) -> Result<Option<Cid>, MstError> {
        let ctx = Ctx { store: &self.store, limits: self.limits };
        get(&ctx, &mut self.root, key.as_bytes(), key_height(key.as_bytes()))
    }

    /// Sets `key` to `value`; returns the previous value.
    pub fn insert(&mut self, key: &str, value: Cid) -> Result<Option<Cid>, MstError> {
        check_key(key)?;
        let k = key.as_bytes();
        let height = key_height(k);
        let ctx = Ctx { store: &self.store, limits: self.limits };
        if height > self.root.layer {
            if self.root.is_void() {
                self.root.layer = height;
                self.root.cid = None;
            } else {
                while self.root.layer < height {
                    let layer = self.root.layer + 1;
                    let old = std::mem::replace(&mut self.root, Box::new(Node::empty(layer)));
                    self.root.left = Link::Loaded(old);
                }
            }
        }
        let old = insert(&ctx, &mut self.root, k, height, value)?;
        self.trim()?;
        Ok(old)
    }

    /// Removes `key`; returns its value if it was present.
    pub fn remove(&mut self, key: &str) -> Result<Option<Cid>, MstError> {
        let k = key.as_bytes();
        let ctx = Ctx { store: &self.store, limits: self.limits };
        let old = remove(&ctx, &mut self.root, k, key_height(k))?;
        if old.is_some() {
            self.trim()?;
        }
        Ok(old)
    }

    /// Prunes empty nodes from the top; the empty tree is one empty node on layer 0.
    fn trim(&mut self) -> Result<(), MstError> {
        while self.root.entries.is_empty() {
            let below = self.root.layer.saturating_sub(1);
            let mut left = std::mem::replace(&mut self.root.left, Link::Empty);
            match self.ctx().take(&mut left, below)? {
                Some(child) => self.root = child,
                None => {
                    if self.root.layer != 0 {
                        *self.root = Node::empty(0);
                    }
                    break;
                }
            }
        }
        Ok(())
    }

    /// Encodes what changed and returns the root CID with the new blocks, without storing them.
    pub fn root_and_blocks(&mut self) -> (Cid, Vec<(Cid, Vec<u8>)>) {
        let mut blocks = Vec::new();
        let cid = encode_dirty(&mut self.root, &mut blocks);
        (cid, blocks)
    }

    /// Encodes what changed, stores the new nodes in one atomic batch, and returns the root CID.
    pub fn root(&mut self) -> Result<Cid, MstError> {
        let (cid, blocks) = self.root_and_blocks();
        if !blocks.is_empty() {
            self.store.put_many(&blocks)?;
        }
        Ok(cid)
    }

    /// Up to `limit` entries with keys after `after` (exclusive), in key order.
    pub fn list(&mut self, after: Option<&str>, limit: usize) -> Result<Vec<(String, Cid)>, MstError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        let ctx = Ctx { store: &self.store, limits: self.limits };
        walk(&ctx, &mut self.root, after.map(str::as_bytes), limit, &mut out)?;
        Ok(out)
    }

    /// Every entry with a key starting with `prefix` (a collection: `"app.bsky.feed.post/"`),
    /// after `after`, up to `limit`.
    pub fn list_prefix(
        &mut self,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Cid)>, MstError> {
        let from = match after {
            Some(a) if a > prefix => a.to_string(),
            _ => {
                // Start just before the prefix: every key >= prefix is > its predecessor.
                let mut p = prefix.to_string();
                p.pop();
                p
            }
        };
        let start = if from.is_empty() { None } else { Some(from.as_str()) };
        let mut out = Vec::new();
        let mut cursor = start.map(str::to_string);
        loop {
            let page = self.list(cursor.as_deref(), 256)?;
            let done = page.len() < 256;
            for (k, v) in page {
                match k.as_str().cmp(prefix) {
                    Ordering::Less => {}
                    _ if k.starts_with(prefix) => {
                        if out.len() >= limit {
                            return Ok(out);
                        }
                        out.push((k.clone(), v));
                    }
                    _ => return Ok(out),
                }
                cursor = Some(k);
            }
            if done {
                return Ok(out);
            }
        }
    }

    /// Loads the nodes on `key`'s search path (see `walk_search_path`): its inclusion or
    /// exclusion proof. Readers of the store see which ones.
    pub fn touch_search_path(&mut self, key: &str) -> Result<(), MstError> {
        let ctx = Ctx { store: &self.store, limits: self.limits };
        walk_search_path(&ctx, &mut self.root, key.as_bytes(), key_height(key.as_bytes()))
    }

    /// Loads every node a covering proof of `key` needs: the search path of `key` and the
    /// paths to its neighbouring keys on both sides. Readers of the store see which ones.
    pub fn touch_covering_path(&mut self, key: &str) -> Result<(), MstError> {
        let ctx = Ctx { store: &self.store, limits: self.limits };
        walk_left_neighbour(&ctx, &mut self.root, key.as_bytes())?;
        walk_right_neighbour(&ctx, &mut self.root, key.as_bytes())
    }

    /// Number of entries (walks the whole tree).
    pub fn len(&mut self) -> Result<usize, MstError> {
        Ok(self.list(None, usize::MAX)?.len())
    }

    /// Whether the tree has no entries.
    pub fn is_empty(&self) -> bool {
        self.root.entries.is_empty() && self.root.left.is_empty()
    }
}
