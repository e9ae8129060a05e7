#!/usr/bin/env python3
"""Tests `.ci/shape.py` on small trees: a clean one passes; a face importing another face and SQL
on another crate's table are both caught."""
import pathlib
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import shape  # noqa: E402


def tree(files):
    root = pathlib.Path(tempfile.mkdtemp(prefix="shape-test-"))
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


CLEAN = {
    "crates/ues-repo/src/accounts.rs": 'const M: &str = "CREATE TABLE account (did TEXT)";\n'
                                       'fn get() { q("SELECT did FROM account"); }\n',
    "crates/ues-protocol/src/xrpc/mod.rs": "use crate::node::Node;\nuse super::error::XrpcError;\n",
    "crates/ues-protocol/src/rest.rs": "use crate::node::Node;\n// unlike crate::xrpc, which it never imports\n",
    "crates/ues-protocol/src/p2p/node.rs": "use crate::http::serve;\n",
    "crates/ues-protocol/src/xrpc/auth.rs": 'const M: &str = "CREATE TABLE credential (did TEXT)";\n',
    # Tables of an attached database, named with its schema.
    "crates/ues-apps/src/lens.rs": 'const M: &str = "CREATE TABLE lens.lens_view (id INTEGER)";\n'
                                   'fn f() { q("SELECT id FROM lens.lens_view"); q("DELETE FROM main.app_cursor"); }\n',
}

assert shape.violations(tree(CLEAN)) == set(), shape.violations(tree(CLEAN))

wrong = dict(CLEAN)
wrong["crates/ues-protocol/src/rest.rs"] = "use crate::xrpc::blocking;\n"
wrong["crates/ues-protocol/src/p2p/node.rs"] = 'fn f() { q("UPDATE account SET x = 1"); q("INSERT INTO credential"); }\n'
wrong["crates/ues-repo/src/views.rs"] = 'fn f() { q("SELECT * FROM lens.lens_view"); }\n'
found = shape.violations(tree(wrong))
assert found == {
    "sql on ues-apps's table lens_view: crates/ues-repo/src/views.rs",
    "face rest imports xrpc: crates/ues-protocol/src/rest.rs",
    "sql on ues-repo's table account: crates/ues-protocol/src/p2p/node.rs",
    "sql on ues-protocol xrpc's table credential: crates/ues-protocol/src/p2p/node.rs",
}, found
print("shape check tests pass")
