#!/usr/bin/env python3
"""Writes docs/xrpc-methods.md (every com.atproto method of the official Lexicons, every method
of the node's own namespace, and what the node does with each), docs/rest-api.md (every
operation of the REST API's OpenAPI document, fetched from a node the script starts) and
docs/cli.md (every `ues` command, from the binary's own help). With --check, compares instead
and exits 1 when a file is out of date.

    python3 scripts/methods-doc.py [--check] [--ues PATH]

Reads the official Lexicons at ../shared/reference/atproto-lexicons, the routes in
crates/ues-protocol/src/xrpc/mod.rs and crates/ues-apps, and lexicons/dev/ues.
"""

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OFFICIAL = ROOT.parent / "shared" / "reference" / "atproto-lexicons"

# Methods the node does not answer itself, and why. Everything not listed here and not routed
# goes to the AppView when one is configured ([xrpc] appview_url), as the reference PDS sends
# it to its default service.
NOT_HERE = {
    "com.atproto.admin.updateAccountSigningKey":
        "not served: the account's signing key lives on this node; putting an operator-chosen "
        "public key in the DID document would leave the node unable to sign the account's commits",
    "com.atproto.label.queryLabels": "a labeler's method: sent to the AppView (or the labeler `atproto-proxy` names)",
    "com.atproto.label.subscribeLabels": "a labeler's event stream: served by labelers, not by a PDS",
    "com.atproto.lexicon.resolveLexicon": "sent to the AppView (or the service `atproto-proxy` names)",
    "com.atproto.sync.notifyOfUpdate": "a relay's method: this node calls relays' requestCrawl instead (`[xrpc] relays`, `ues request-crawl`)",
    "com.atproto.sync.requestCrawl": "a relay's method: this node asks relays to crawl it (`[xrpc] relays`, `ues request-crawl`)",
    "com.atproto.temp.addReservedHandle": "an entryway's method: sent to the AppView when one is configured",
    "com.atproto.temp.dereferenceScope": "OAuth permission sets: sent to the AppView when one is configured",
    "com.atproto.temp.fetchLabels": "deprecated labeler method: sent to the AppView when one is configured",
    "com.atproto.temp.requestPhoneVerification": "phone verification is not used here (`describeServer` says so)",
    "com.atproto.temp.revokeAccountCredentials": "an entryway's method: sent to the AppView when one is configured",
}

# Served here, with a word on how, where it matters.
NOTES = {
    "com.atproto.server.createAccount": "also with `did` and a service auth token: an account moving here",
    "com.atproto.server.requestPasswordReset": "answers alike for any address (tells nobody which have accounts)",
    "com.atproto.moderation.createReport": "kept for the operator, or sent to `[xrpc] report_service_url`",
    "com.atproto.identity.resolveHandle": "this node's accounts, else DNS TXT then HTTPS",
    "com.atproto.identity.resolveDid": "this node's accounts, else the bounded DID cache",
    "com.atproto.sync.getCheckout": "deprecated: answered as getRepo",
    "com.atproto.sync.listHosts": "a PDS consumes no upstream: no hosts",
    "com.atproto.temp.checkSignupQueue": "no queue: always activated",
}


def routes():
    served = set()
    for path in [ROOT / "crates/ues-protocol/src/xrpc/mod.rs", *sorted((ROOT / "crates/ues-apps/src").rglob("*.rs"))]:
        served |= set(re.findall(r'"/xrpc/([a-zA-Z0-9.]+)"', path.read_text()))
    return served


def lexicon_methods(base, prefix):
    out = {}
    for f in sorted(base.rglob("*.json")):
        doc = json.loads(f.read_text())
        main = doc.get("defs", {}).get("main", {})
        if main.get("type") in ("query", "procedure", "subscription") and doc["id"].startswith(prefix):
            out[doc["id"]] = main["type"]
    return out


def xrpc_doc():
    if not OFFICIAL.is_dir():
        sys.exit(f"methods-doc: {OFFICIAL} is missing (../shared beside the project)")
    served = routes()
    official = lexicon_methods(OFFICIAL / "com" / "atproto", "com.atproto.")
    ours = lexicon_methods(ROOT / "lexicons" / "dev", "dev.ues.")
    lines = [
        "# XRPC methods",
        "",
        "Every `com.atproto.*` method of Bluesky's official Lexicons and every method of the node's own",
        "`dev.ues.*` namespace, with what the node does with it. The Bluesky read methods (timelines,",
        "threads, profiles, graph, notifications, search, custom feeds: `app.bsky.feed.getTimeline` and",
        "the others `crates/ues-apps/lexicons/` lists) are answered here by the feed application",
        "(`dev.ues.feed`, on by default) unless `[feed] mode` sends them to an AppView; other `app.bsky.*`",
        "and `chat.bsky.*` methods (but `app.bsky.actor.getPreferences`/`putPreferences`, served here) go",
        "to the AppView of `[xrpc] appview_url`, or to the service an `atproto-proxy: <did>#<service>`",
        "header names, in the caller's name (see `docs/architecture.md`). Written by",
        "`scripts/methods-doc.py`; CI checks it is current.",
        "",
    ]
    counts = {}
    for title, methods in (("com.atproto", official), ("dev.ues", ours)):
        counts[title] = [0, len(methods)]
        lines += [f"## `{title}.*`", "", "| Method | Kind | Status | Notes |", "|---|---|---|---|"]
        for nsid, kind in sorted(methods.items()):
            if nsid in served:
                status, note = "served", NOTES.get(nsid, "")
                counts[title][0] += 1
            else:
                status, note = "not served here", NOT_HERE.get(nsid)
                if note is None:
                    sys.exit(f"methods-doc: {nsid} is neither routed nor explained in NOT_HERE")
            lines.append(f"| `{nsid}` | {kind} | {status} | {note} |")
        lines.append("")
    extra = sorted(m for m in served if m not in official and m not in ours and not m.startswith("app.bsky."))
    if extra:
        lines += ["## Other methods served", ""]
        lines += [f"- `{m}`" for m in extra]
        lines.append("")
    lines.insert(9, "; ".join(f"`{t}.*`: {n} of {total} served here" for t, (n, total) in counts.items()) + ".")
    lines.insert(10, "")
    return "\n".join(lines)


def rest_doc(ues):
    """The REST operations of the OpenAPI document a node built from `ues` serves."""
    import socket
    import tempfile
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as d:
        node = subprocess.Popen(
            [ues, "run", "--data-dir", d, "--listen", f"127.0.0.1:{port}", "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            doc = None
            for _ in range(600):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/openapi.json", timeout=2) as r:
                        doc = json.load(r)
                    break
                except OSError:
                    time.sleep(0.1)
            if doc is None:
                sys.exit("methods-doc: the node never served /api/openapi.json")
        finally:
            node.terminate()
            node.wait(timeout=30)
    lines = ["# REST API", "", "Every operation of the REST API (`/api/v1/...`), as the OpenAPI document a node serves at",
             "`/api/openapi.json` describes it (schemas, parameters and errors are there). Every one is served.",
             "Written by `scripts/methods-doc.py`; CI checks it is current.", "",
             "| Method | Path | Operation | Tag | Status |", "|---|---|---|---|---|"]
    for path, ops in sorted(doc["paths"].items()):
        for method, op in sorted(ops.items()):
            if method not in ("get", "post", "put", "delete", "patch"):
                continue
            summary = " ".join((op.get("summary") or op.get("operationId") or "").split()).replace("|", "\\|")
            tag = ", ".join(op.get("tags", []))
            lines.append(f"| {method.upper()} | `{path}` | {summary} | {tag} | served |")
    return "\n".join(lines)


def cli_doc(ues):
    def help_of(args):
        out = subprocess.run([ues, *args, "--help"], capture_output=True, text=True, check=True).stdout
        return out.rstrip()

    def subcommands(text):
        """The commands a help text lists under `Commands:` (without `help`)."""
        names = []
        listing = False
        for line in text.splitlines():
            if line.startswith("Commands:"):
                listing = True
                continue
            if listing:
                m = re.match(r"^  ([a-z][a-z0-9-]*)\s", line)
                if m and m.group(1) != "help":
                    names.append(m.group(1))
                elif line and not line.startswith(" "):
                    listing = False
        return names

    top = help_of([])
    commands = subcommands(top)
    lines = ["# The `ues` command", "", "Every command, as `ues <command> --help` prints it. Written by",
             "`scripts/methods-doc.py`; CI checks it is current.", "", "```", top, "```", ""]
    for c in commands:
        text = help_of([c])
        lines += [f"## `ues {c}`", "", "```", text, "```", ""]
        for s in subcommands(text):
            lines += [f"### `ues {c} {s}`", "", "```", help_of([c, s]), "```", ""]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check", action="store_true")
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    ap.add_argument("--ues", default=str(target / "debug" / "ues"))
    args = ap.parse_args()
    docs = {ROOT / "docs" / "xrpc-methods.md": xrpc_doc()}
    if Path(args.ues).is_file():
        docs[ROOT / "docs" / "cli.md"] = cli_doc(args.ues)
        docs[ROOT / "docs" / "rest-api.md"] = rest_doc(args.ues)
    elif args.check:
        sys.exit(f"methods-doc: {args.ues} is missing; build the node first")
    stale = []
    for path, text in docs.items():
        text = text.rstrip() + "\n"
        if args.check:
            if not path.is_file() or path.read_text() != text:
                stale.append(path)
        else:
            path.write_text(text)
    if stale:
        for p in stale:
            print(f"methods-doc: {p.relative_to(ROOT)} is out of date: run python3 scripts/methods-doc.py", file=sys.stderr)
        sys.exit(1)
    print("methods-doc: " + ("current" if args.check else "written"), file=sys.stderr)


if __name__ == "__main__":
    main()
