"""Generates MST diff cases with atmst, an independent Python implementation of the AT Protocol
Merkle Search Tree, and writes what atmst says each case's answer is.

    python mst_differential.py OUT_DIR RANDOM_PAIRS SEED

Two families of tree pairs:
  * the subset trees of a 7-key perfect tree (the keys' heights, in key order, are 0 1 0 2 0 1 0):
    all 128 subsets, each diffed against 16 others and itself;
  * RANDOM_PAIRS random pairs: a tree of up to 300 keys and the same tree after random creates,
    updates and deletes.

For each pair atmst gives the created and deleted nodes (`mst_diff`), the record operations
(`record_diff`), the proof nodes (the union over changed keys of `find_rpath_and_build_proof` in
the new tree) and the inductive proof nodes (the new tree's nodes that `NodeWrangler` reads while
undoing the operations in reverse key order, starting from a cold node cache).

Writes OUT_DIR/blocks.jsonl ([cid, hex bytes] per line: every node of the trees diffed) and
OUT_DIR/cases.jsonl (one case per line).
"""

import hashlib
import json
import random
import sys

from atmst.blockstore import MemoryBlockStore
from atmst.mst.diff import mst_diff, record_diff
from atmst.mst.node import MSTNode
from atmst.mst.node_store import NodeStore
from atmst.mst.node_wrangler import NodeWrangler
from atmst.mst.proof import find_rpath_and_build_proof
from cbrrr import CID


class Reads(MemoryBlockStore):
    """A block store that remembers which blocks were read."""

    def __init__(self, state):
        super().__init__(state)
        self.read = set()

    def get_block(self, key):
        self.read.add(key)
        return super().get_block(key)


def value(tag):
    return CID.cidv1_dag_cbor_sha256_32_from(hashlib.sha256(tag.encode()).digest())


def build(ns, items):
    w = NodeWrangler(ns)
    root = ns.get_node(None).cid
    for k, v in sorted(items.items()):
        root = w.put_record(root, k, v)
    return root


def nodes_of(ns, root, out):
    node = ns.get_node(root)
    out.add(bytes(root))
    for sub in node.subtrees:
        if sub is not None:
            nodes_of(ns, sub, out)
    return out


def enc(cids):
    return sorted(c.encode("base32") for c in cids)


def case(store, name, ra, rb):
    ns = NodeStore(store)
    created, deleted = mst_diff(ns, ra, rb)
    ops = sorted(record_diff(ns, created, deleted), key=lambda d: d.path)
    proof = set()
    for d in ops:
        proof |= find_rpath_and_build_proof(ns, rb, d.path)[1]
    b_nodes = nodes_of(ns, rb, set())
    reads = Reads(dict(store._state))
    w = NodeWrangler(NodeStore(reads))
    root = rb
    for d in reversed(ops):
        if d.prior_value is None:
            root = w.del_record(root, d.path)
        else:
            root = w.put_record(root, d.path, d.prior_value)
    assert root == ra, f"{name}: atmst's inversion did not give the old root"
    inductive = {CID(k) for k in reads.read if k in b_nodes} if ops else set()
    return {
        "name": name,
        "a": ra.encode("base32"),
        "b": rb.encode("base32"),
        "created_nodes": enc(created),
        "deleted_nodes": enc(deleted),
        "record_ops": [
            [d.path, d.prior_value and d.prior_value.encode("base32"), d.later_value and d.later_value.encode("base32")]
            for d in ops
        ],
        "proof_nodes": enc(proof),
        "inductive_proof_nodes": enc(inductive),
    }


def perfect_keys():
    """Seven keys whose heights, in key order, form a perfect three-layer tree."""
    pattern = [0, 1, 0, 2, 0, 1, 0]
    keys = []
    for i in range(100_000):
        k = f"k/{i:05d}"
        if MSTNode.key_height(k) == pattern[len(keys)]:
            keys.append(k)
            if len(keys) == len(pattern):
                return keys
    raise SystemExit("no perfect key set found")


def main():
    out_dir, random_pairs, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    store = MemoryBlockStore()
    ns = NodeStore(store)
    cases = []

    keys = perfect_keys()
    subsets = []
    for mask in range(128):
        items = {k: value(f"{k}") for bit, k in enumerate(keys) if mask >> bit & 1}
        subsets.append(build(ns, items))
    for i in range(128):
        for j in sorted({i} | {(i * 37 + 11 * t + 5) % 128 for t in range(16)}):
            cases.append(case(store, f"subset {i:03d} -> {j:03d}", subsets[i], subsets[j]))

    pool = [f"app.test.c{rng.randrange(4)}/{rng.getrandbits(64):016x}" for _ in range(2000)]
    for n in range(random_pairs):
        size = rng.choice([0, 1, 2, 5, 20, 60, 150, 300])
        a = {k: value(f"{k}#{n}") for k in rng.sample(pool, size)}
        b = dict(a)
        for k in list(b):
            r = rng.random()
            if r < 0.1:
                del b[k]
            elif r < 0.2:
                b[k] = value(f"{k}#{n}#updated")
        for k in rng.sample(pool, rng.randrange(0, 12)):
            b.setdefault(k, value(f"{k}#{n}#new"))
        cases.append(case(store, f"random {n}", build(ns, a), build(ns, b)))

    # Only the nodes of the trees diffed (building one key at a time made many more).
    needed = set()
    for c in cases:
        for root in (c["a"], c["b"]):
            nodes_of(ns, CID.decode(root), needed)
    with open(f"{out_dir}/blocks.jsonl", "w") as f:
        for k in sorted(needed):
            f.write(json.dumps([CID(k).encode("base32"), store.get_block(k).hex()]) + "\n")
    with open(f"{out_dir}/cases.jsonl", "w") as f:
        for c in cases:
            f.write(json.dumps(c) + "\n")
    print(f"{len(cases)} cases, {len(needed)} blocks")


if __name__ == "__main__":
    main()
