#!/usr/bin/env python3
"""Checks the protocol layer's shape, beside the crate layering (`layering.py`):

- a face of `ues-protocol` (`xrpc`, `rest`, `gateway`, `p2p`, `oauth`) never imports another face: they
  meet only in what lies beneath them (the node core, `http`'s serving plumbing);
- SQL on a table runs only in the crate that creates the table (its migrations).

Violations known when the check was introduced are listed in `.ci/shape-known.txt`, one per
line; a new violation fails, and so does a listed one that no longer occurs (the list only
shrinks). `python3 .ci/shape.py [ROOT]`; `violations(root)` is what `.ci/test_shape.py` tests.
"""
import pathlib
import re
import sys

FACES = ["xrpc", "rest", "gateway", "p2p", "oauth"]
# A table's name may be qualified by its database's schema (`lens.lens_view`, `main.a`).
SQL_USE = r"\b(?:FROM|INTO|UPDATE|JOIN|TABLE)\s+(?:[a-z_0-9]+\.)?{table}\b"
CREATE = re.compile(r"CREATE (?:VIRTUAL )?TABLE (?:IF NOT EXISTS )?(?:[a-z_0-9]+\.)?([a-z_0-9]+)")
IMPORT = re.compile(r"\bcrate::([a-z_0-9]+)")


def code_lines(path):
    """The file's lines without line comments (doc comments name other modules freely)."""
    for line in path.read_text(errors="replace").splitlines():
        yield line.split("//", 1)[0]


def face_of(protocol_src, path):
    rel = path.relative_to(protocol_src).parts
    name = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    return name if name in FACES else None


def violations(root):
    root = pathlib.Path(root)
    found = set()
    protocol_src = root / "crates" / "ues-protocol" / "src"
    for path in sorted(protocol_src.rglob("*.rs")):
        face = face_of(protocol_src, path)
        if face is None:
            continue
        for line in code_lines(path):
            for other in IMPORT.findall(line):
                if other in FACES and other != face:
                    found.add(f"face {face} imports {other}: {path.relative_to(root)}")
    def owner_of(crate, path):
        # Inside the protocol crate, a face's tables are its own too.
        if crate.name == "ues-protocol":
            face = face_of(protocol_src, path)
            if face:
                return f"ues-protocol {face}"
        return crate.name

    sources = [(crate, path) for crate in sorted((root / "crates").iterdir()) if (crate / "src").is_dir()
               for path in sorted((crate / "src").rglob("*.rs"))]
    owners = {}
    for crate, path in sources:
        for table in CREATE.findall(path.read_text(errors="replace")):
            owners.setdefault(table, owner_of(crate, path))
    for crate, path in sources:
        text = "\n".join(code_lines(path))
        me = owner_of(crate, path)
        for table, owner in owners.items():
            if owner != me and re.search(SQL_USE.format(table=table), text):
                found.add(f"sql on {owner}'s table {table}: {path.relative_to(root)}")
    return found


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else pathlib.Path(__file__).resolve().parent.parent)
    known_file = root / ".ci" / "shape-known.txt"
    known = set()
    if known_file.exists():
        known = {l.strip() for l in known_file.read_text().splitlines() if l.strip() and not l.startswith("#")}
    found = violations(root)
    new = sorted(found - known)
    gone = sorted(known - found)
    if new:
        print("shape broken (a face importing another face, or SQL on another crate's tables):\n  "
              + "\n  ".join(new), file=sys.stderr)
    if gone:
        print("fixed, so remove from .ci/shape-known.txt:\n  " + "\n  ".join(gone), file=sys.stderr)
    if new or gone:
        sys.exit(1)
    print(f"shape holds: faces import no other face, SQL stays with its tables ({len(known)} known to untie)")


if __name__ == "__main__":
    main()
