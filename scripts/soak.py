#!/usr/bin/env python3
"""Soak: a real `ues run` under honest load and hostile clients at once, for a while.

Honest clients (one account each) create, read and list records in a loop and time every
call. At the same time attackers, each a bounded loop from its own loopback address: clients
that send half a header and wait; repository exports that are never read; uploads that trickle
a byte a second; 16 MiB bodies to createSession; wrong-password bursts; records nested deeper
than the store reads; on the peer-to-peer port, stranger identities one after another pushing
live entries with ~256 KB records (for accounts the node does not replicate and, from device
keys never authorized, for one it does) until the node bans them (`--rogue`, the `rogue_peer`
example), and connections that send garbage instead of a handshake. Every few seconds the
node's RSS and thread count are read from /proc. `--no-attacks` runs the honest load alone (a
baseline that separates what caches take from what attackers cost).

At the end: every record an honest client was told was created is listed back (nothing lost),
and a CSV, a JSON summary and (when matplotlib is installed) a PNG of RSS and honest p99
latency over time are written to --out.

    cargo build --workspace --bins --examples
    python3 scripts/soak.py --ues target/debug/ues --rogue target/debug/examples/rogue_peer \
        --minutes 30 --out /tmp/soak

Only 127.0.0.1-127.0.0.9 are used. Standard library only, but for the plot.
"""

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time

COLLECTION = "dev.ues.soak.note"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, ues, data_dir, port):
        self.port = port
        self.data_dir = data_dir
        config = "\n".join([
            "[xrpc.rate_limits]",
            # Honest writers write more than an hour's budget; logins stay limited (the attack).
            "calls_per_ip_5min = 0",
            "write_points_per_account_hour = 0",
            "write_points_per_account_day = 0",
            "",
        ])
        os.makedirs(data_dir, exist_ok=True)
        with open(os.path.join(data_dir, "node.toml"), "w") as f:
            f.write(config)
        self.log = open(os.path.join(data_dir, "node.log"), "ab")
        self.proc = subprocess.Popen(
            [ues, "run", "--data-dir", data_dir, "--listen", f"127.0.0.1:{port}",
             "--p2p-listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"],
            stdout=subprocess.DEVNULL, stderr=self.log, env={**os.environ, "RUST_LOG": "warn"})
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if self.call("GET", "/xrpc/_health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise SystemExit("the node never answered")

    def call(self, method, path, body=None, token=None, timeout=30, source="127.0.0.1"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout, source_address=(source, 0))
        headers = {}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        if token:
            headers["authorization"] = f"Bearer {token}"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
            try:
                return resp.status, json.loads(raw) if raw else None
            except ValueError:
                return resp.status, None
        finally:
            conn.close()

    def status(self):
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "Threads"):
                    out[k] = int(v.split()[0])
        return out

    def admin(self, method, path, body=None):
        """An operator call (HTTP Basic with the generated admin password)."""
        import base64
        with open(os.path.join(self.data_dir, "admin.password")) as f:
            password = f.read().strip()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"authorization": "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        try:
            conn.request(method, path, body=data, headers=headers)
            resp = conn.getresponse()
            return resp.status, json.loads(resp.read() or b"null")
        finally:
            conn.close()

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.window = []
        self.errors = 0
        self.calls = 0

    def add(self, seconds, ok):
        with self.lock:
            self.window.append(seconds)
            self.calls += 1
            if not ok:
                self.errors += 1

    def take(self):
        with self.lock:
            w, self.window = self.window, []
        return w


def percentile(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))]


def timed_get(node, stats, path):
    t = time.monotonic()
    try:
        s, _ = node.call("GET", path)
    except OSError:
        s = 0
    stats.add(time.monotonic() - t, s == 200)


def honest(node, stop, stats, handle, created):
    status, v = node.call("POST", "/xrpc/com.atproto.server.createAccount",
                          {"handle": handle, "password": "a long password"})
    assert status == 200, (status, v)
    did, token = v["did"], v["accessJwt"]
    created[did] = []
    i = 0
    while not stop.is_set():
        i += 1
        t = time.monotonic()
        try:
            s, v = node.call("POST", "/xrpc/com.atproto.repo.createRecord",
                             {"repo": did, "collection": COLLECTION, "record": {"text": f"note {i}", "n": i}}, token)
        except OSError:
            s, v = 0, None
        stats.add(time.monotonic() - t, s == 200)
        if s == 200:
            created[did].append(v["uri"].rsplit("/", 1)[1])
            rkey = created[did][-1]
            timed_get(node, stats, f"/xrpc/com.atproto.repo.getRecord?repo={did}&collection={COLLECTION}&rkey={rkey}")
        if i % 20 == 0:
            timed_get(node, stats, f"/xrpc/com.atproto.repo.listRecords?repo={did}&collection={COLLECTION}&limit=50")
        if i % 1000 == 0:
            # Sessions last two hours: a long soak refreshes like a client.
            s, v = node.call("POST", "/xrpc/com.atproto.server.createSession",
                             {"identifier": handle, "password": "a long password"})
            if s == 200:
                token = v["accessJwt"]
        time.sleep(0.02)


def attacker(name, fn, stop, counts):
    while not stop.is_set():
        try:
            fn()
            counts[name] = counts.get(name, 0) + 1
        except OSError:
            counts[name + "_refused"] = counts.get(name + "_refused", 0) + 1
            time.sleep(0.2)


def hold(sockets, limit):
    while len(sockets) > limit:
        try:
            sockets.pop(0).close()
        except OSError:
            pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ues", required=True)
    ap.add_argument("--minutes", type=float, default=30)
    ap.add_argument("--honest", type=int, default=4)
    ap.add_argument("--out", required=True)
    ap.add_argument("--rogue", help="the rogue_peer example binary (p2p attackers)")
    ap.add_argument("--no-attacks", action="store_true", help="honest load alone (a baseline)")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    data = tempfile.mkdtemp(prefix="ues-soak-")
    port = free_port()
    node = Node(args.ues, data, port)
    stop = threading.Event()
    stats = Stats()
    created = {}
    counts = {}
    honest_threads = [threading.Thread(target=honest, args=(node, stop, stats, f"honest{i}.test", created),
                                       daemon=True) for i in range(args.honest)]
    threads = list(honest_threads)
    # A repository worth exporting, for the stalled readers.
    s, v = node.call("POST", "/xrpc/com.atproto.server.createAccount", {"handle": "big.test", "password": "a long password"})
    big_did, big_token = v["did"], v["accessJwt"]
    for i in range(10):
        writes = [{"$type": "com.atproto.repo.applyWrites#create", "collection": COLLECTION,
                   "value": {"text": "x" * 2000, "n": j}} for j in range(200)]
        node.call("POST", "/xrpc/com.atproto.repo.applyWrites", {"repo": big_did, "writes": writes}, big_token)

    half_headers, stalled, trickles = [], [], []

    def slowloris():
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.2", 0))
        s.sendall(b"GET /xrpc/_health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        half_headers.append(s)
        hold(half_headers, 150)
        time.sleep(0.05)

    def stalled_export():
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.3", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(f"GET /xrpc/com.atproto.sync.getRepo?did={big_did} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        stalled.append(s)
        hold(stalled, 50)
        time.sleep(0.2)

    def trickle():
        s = socket.create_connection(("127.0.0.1", port), timeout=5, source_address=("127.0.0.4", 0))
        s.sendall((f"POST /xrpc/com.atproto.repo.uploadBlob HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {big_token}\r\n"
                   "Content-Type: image/png\r\nContent-Length: 1000000\r\n\r\nx").encode())
        trickles.append(s)
        hold(trickles, 20)
        for t in list(trickles):
            try:
                t.send(b"x")
            except OSError:
                trickles.remove(t)
        time.sleep(1)

    def big_body():
        s = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=("127.0.0.5", 0))
        s.sendall(b"POST /xrpc/com.atproto.server.createSession HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 16777216\r\n\r\n")
        chunk = b"a" * 65536
        try:
            for _ in range(256):
                s.sendall(chunk)
        except OSError:
            pass
        s.close()
        time.sleep(2)

    def wrong_passwords():
        for _ in range(50):
            node.call("POST", "/xrpc/com.atproto.server.createSession",
                      {"identifier": "big.test", "password": f"guess {random.random()}"}, source="127.0.0.6")
        time.sleep(10)

    def deep_records():
        v = "bottom"
        for _ in range(100):
            v = {"a": v}
        node.call("POST", "/xrpc/com.atproto.repo.createRecord",
                  {"repo": big_did, "collection": COLLECTION, "record": v}, big_token, source="127.0.0.7")
        time.sleep(5)

    # The peer-to-peer side: where the node listens, and a replicated account (authorized for a
    # device that never connects) whose DID the rogue peers name.
    s, peers = node.admin("GET", "/xrpc/dev.ues.admin.listPeers")
    p2p_addr = next(a for a in peers["listening"] if a.startswith("/ip4/127.0.0.1/tcp/"))
    p2p_port = int(p2p_addr.split("/")[4])
    p2p_target = f"{p2p_addr}/p2p/{peers['peerId']}"
    phantom = tempfile.mkdtemp(prefix="ues-soak-device-")
    subprocess.run([args.ues, "init", "--data-dir", phantom], check=True, capture_output=True)
    device = subprocess.run([args.ues, "peer", "id", "--data-dir", phantom], check=True,
                            capture_output=True, text=True).stdout.strip()
    shutil.rmtree(phantom, ignore_errors=True)
    s, v = node.admin("POST", "/xrpc/dev.ues.admin.authorizeDevice", {"did": big_did, "peerId": device})
    assert s == 200, v

    def p2p_garbage():
        s = socket.create_connection(("127.0.0.1", p2p_port), timeout=5, source_address=("127.0.0.8", 0))
        try:
            s.sendall(os.urandom(random.randint(1, 4096)))
            s.recv(1024)
        except OSError:
            pass
        s.close()
        time.sleep(0.5)

    attacks = [("slowloris", slowloris), ("stalled_export", stalled_export), ("trickle", trickle),
               ("big_body", big_body), ("wrong_passwords", wrong_passwords), ("deep_records", deep_records),
               ("p2p_garbage", p2p_garbage)]
    if args.no_attacks:
        attacks = []
    threads += [threading.Thread(target=attacker, args=(n, f, stop, counts), daemon=True) for n, f in attacks]
    rogue = None
    if args.rogue and not args.no_attacks:
        rogue = subprocess.Popen([args.rogue, p2p_target, big_did, str(int(args.minutes * 60))],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    started = time.monotonic()
    for t in threads:
        t.start()
    rows = []
    end = started + args.minutes * 60
    with open(os.path.join(args.out, "soak.csv"), "w") as csv:
        csv.write("seconds,rss_mib,threads,calls,p50_ms,p99_ms,max_ms\n")
        while time.monotonic() < end:
            time.sleep(10)
            st = node.status()
            w = stats.take()
            row = (round(time.monotonic() - started), st["VmRSS"] / 1024, st["Threads"], len(w),
                   (percentile(w, 0.5) or 0) * 1000, (percentile(w, 0.99) or 0) * 1000, max(w or [0]) * 1000)
            rows.append(row)
            csv.write(",".join(f"{x:.1f}" if isinstance(x, float) else str(x) for x in row) + "\n")
            csv.flush()
            print(f"{row[0]:>5}s rss {row[1]:.0f} MiB threads {row[2]} calls {row[3]} p99 {row[5]:.1f} ms", flush=True)
    stop.set()
    # Every honest client finishes its call in flight (a write answered after the check began
    # would otherwise count as lost).
    for t in honest_threads:
        t.join(timeout=120)
    time.sleep(2)
    if rogue is not None:
        try:
            out, _ = rogue.communicate(timeout=60)
            counts["rogue_peers"] = json.loads(out.decode().strip().splitlines()[-1])
        except (subprocess.TimeoutExpired, ValueError, IndexError):
            rogue.kill()
            counts["rogue_peers"] = "no report"
    s, peers = node.admin("GET", "/xrpc/dev.ues.admin.listPeers")
    s, replication = node.admin("GET", "/xrpc/dev.ues.admin.getReplication")
    for s in half_headers + stalled + trickles:
        s.close()
    # Nothing lost: every record a client was told was created is listed back.
    lost = 0
    total = 0
    for did, rkeys in created.items():
        listed = set()
        cursor = ""
        for _ in range(100000):
            s, v = node.call("GET", f"/xrpc/com.atproto.repo.listRecords?repo={did}&collection={COLLECTION}&limit=100&cursor={cursor}")
            listed.update(r["uri"].rsplit("/", 1)[1] for r in v["records"])
            cursor = v.get("cursor")
            if not cursor:
                break
        total += len(rkeys)
        missing = sorted(set(rkeys) - listed)
        lost += len(missing)
        for rkey in missing[:20]:
            # Listed from the record index, read from the repository's tree: which lacks it?
            s, v = node.call("GET", f"/xrpc/com.atproto.repo.getRecord?repo={did}&collection={COLLECTION}&rkey={rkey}")
            print(f"LOST {did} {rkey}: getRecord answers {s} {v}", file=sys.stderr)
    summary = {
        "minutes": args.minutes,
        "honest_calls": stats.calls,
        "honest_errors": stats.errors,
        "records_created": total,
        "records_lost": lost,
        "rss_mib_first": rows[0][1] if rows else None,
        "rss_mib_max": max(r[1] for r in rows) if rows else None,
        "rss_mib_last": rows[-1][1] if rows else None,
        "threads_max": max(r[2] for r in rows) if rows else None,
        "p99_ms_max_window": max(r[5] for r in rows) if rows else None,
        "p99_ms_median_window": sorted(r[5] for r in rows)[len(rows) // 2] if rows else None,
        "attacks": counts,
        "p2p_bans": peers.get("bans"),
        "replica_accounts": replication.get("replicaAccounts"),
        "replica_pending_bytes": replication.get("pendingBytes"),
    }
    node.stop()
    if lost:
        print(f"records lost: the node's data directory is kept at {data}", file=sys.stderr)
    else:
        shutil.rmtree(data, ignore_errors=True)
    with open(os.path.join(args.out, "soak.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
        xs = [r[0] / 60 for r in rows]
        ax[0].plot(xs, [r[1] for r in rows], color="tab:blue")
        ax[0].set_ylabel("node RSS (MiB)")
        ax[0].set_ylim(bottom=0)
        ax[1].plot(xs, [r[5] for r in rows], color="tab:red", label="p99")
        ax[1].plot(xs, [r[4] for r in rows], color="tab:green", label="p50")
        ax[1].set_ylabel("honest call latency (ms)")
        ax[1].set_xlabel("minutes")
        ax[1].legend()
        what = "honest load alone" if args.no_attacks else "honest load and eight attacks (HTTP and p2p)"
        fig.suptitle(f"ues run under {what} ({args.minutes:g} min)")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, "soak.png"), dpi=100)
    except ImportError:
        print("matplotlib not installed: no plot", file=sys.stderr)
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
