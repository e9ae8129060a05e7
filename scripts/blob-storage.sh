#!/usr/bin/env bash
# Blob throughput on the disk and in an S3-compatible store (moto's S3 server on loopback):
# uploadBlob and getBlob of one large blob, a ranged read, and `ues blobs migrate` both ways.
# Usage: scripts/blob-storage.sh [MiB] (default 64). Needs scripts/setup.sh (moto in tests/py/.venv)
# and a release build (cargo build --release). Prints one JSON line per store.
set -euo pipefail
cd "$(dirname "$0")/.."
MIB=${1:-64}
UES=${UES:-${CARGO_TARGET_DIR:-target}/release/ues}
PY=tests/py/.venv/bin/python
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
S3PORT=$(port)
$PY -m moto.server -H 127.0.0.1 -p "$S3PORT" >/dev/null 2>&1 &
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$S3PORT" && break; sleep 0.1; done
$PY tests/py/s3.py "http://127.0.0.1:$S3PORT" create bench
printf '[default]\naws_access_key_id = test-key\naws_secret_access_key = test-secret\n' > "$WORK/creds"
head -c $((MIB << 20)) /dev/urandom > "$WORK/blob"

run() { # $1: disk|s3
    local dir="$WORK/$1" http; http=$(port)
    mkdir -p "$dir"
    printf '[xrpc]\nmax_blob_mib = 1024\n[xrpc.rate_limits]\nenabled = false\n[storage]\nblobs = "%s"\n[storage.s3]\nendpoint = "http://127.0.0.1:%s"\nbucket = "bench"\ncredentials_file = "%s"\n' \
        "$1" "$S3PORT" "$WORK/creds" > "$dir/node.toml"
    "$UES" run --data-dir "$dir" --listen "127.0.0.1:$http" --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns 2>"$dir/log" &
    local pid=$!
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$http/xrpc/_health" && break; sleep 0.1; done
    local token did
    read -r did token < <(curl -s -X POST "http://127.0.0.1:$http/xrpc/com.atproto.server.createAccount" \
        -H 'content-type: application/json' \
        -d '{"handle":"bench.test","email":"b@example.com","password":"a long password"}' |
        python3 -c 'import sys,json; v=json.load(sys.stdin); print(v["did"], v["accessJwt"])')
    local up cid down range
    up=$(curl -s -o "$dir/up.json" -w '%{time_total}' -X POST "http://127.0.0.1:$http/xrpc/com.atproto.repo.uploadBlob" \
        -H "authorization: Bearer $token" -H 'content-type: video/mp4' --data-binary @"$WORK/blob")
    cid=$(python3 -c 'import sys,json; print(json.load(open(sys.argv[1]))["blob"]["ref"]["$link"])' "$dir/up.json")
    curl -s -o /dev/null -X POST "http://127.0.0.1:$http/xrpc/com.atproto.repo.createRecord" \
        -H "authorization: Bearer $token" -H 'content-type: application/json' \
        -d "{\"repo\":\"$did\",\"collection\":\"dev.ues.bench.file\",\"record\":{\"file\":$(python3 -c 'import sys,json; print(json.dumps(json.load(open(sys.argv[1]))["blob"]))' "$dir/up.json")}}"
    down=$(curl -s -o "$dir/down" -w '%{time_total}' "http://127.0.0.1:$http/xrpc/com.atproto.sync.getBlob?did=$did&cid=$cid")
    cmp -s "$dir/down" "$WORK/blob" || { echo "download differs" >&2; exit 1; }
    range=$(curl -s -o /dev/null -w '%{time_total}' -H 'range: bytes=1000000-1999999' \
        "http://127.0.0.1:$http/xrpc/com.atproto.sync.getBlob?did=$did&cid=$cid")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local other; [ "$1" = disk ] && other=s3 || other=disk
    local t0 t1; t0=$(date +%s.%N)
    "$UES" blobs migrate --to "$other" --data-dir "$dir" >/dev/null
    t1=$(date +%s.%N)
    python3 -c '
import sys
mib, up, down, rng, mig = int(sys.argv[2]), *map(float, sys.argv[3:7])
print(f"{{\"store\": \"{sys.argv[1]}\", \"mib\": {mib}, \"upload_mib_s\": {mib/up:.0f}, \"download_mib_s\": {mib/down:.0f}, \"range_1mb_ms\": {rng*1000:.1f}, \"migrate_to_{sys.argv[7]}_mib_s\": {mib/mig:.0f}}}")
' "$1" "$MIB" "$up" "$down" "$range" "$(python3 -c "print($t1-$t0)")" "$other"
}
run disk
run s3
