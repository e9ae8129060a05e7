#!/usr/bin/env python3
"""Fails when a crate under crates/ depends on a workspace crate other than the one directly
below it (storage < ipld < repo < sync < protocol < apps). Dev-dependencies count too: a test
that reaches two layers down would hide a missing re-export."""
import json
import subprocess
import sys

ORDER = ["ues-storage", "ues-ipld", "ues-repo", "ues-sync", "ues-protocol", "ues-apps"]

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--no-deps"],
    check=True, capture_output=True, text=True).stdout)
workspace = {p["name"] for p in meta["packages"]}
missing = [c for c in ORDER if c not in workspace]
if missing:
    sys.exit(f"layering: crates missing from the workspace: {missing}")
bad = []
for p in meta["packages"]:
    if p["name"] not in ORDER:
        continue
    i = ORDER.index(p["name"])
    allowed = {ORDER[i - 1]} if i > 0 else set()
    for d in p["dependencies"]:
        if d["name"] in workspace and d["name"] not in allowed:
            bad.append(f'{p["name"]} -> {d["name"]} ({d.get("kind") or "normal"})')
if bad:
    print("layering broken:\n  " + "\n  ".join(bad), file=sys.stderr)
    sys.exit(1)
print("layering holds: " + " < ".join(ORDER))
