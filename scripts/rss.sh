#!/usr/bin/env bash
# Resident memory of a release node on its defaults: idle on a fresh data directory, idle with
# one account, right after `ues bench create` (3,000 writes, 8 writers), and idle after ACCOUNTS
# accounts were created and the node restarted.
#
#   scripts/rss.sh [ACCOUNTS]        (default 10000)
#
# Prints one line per state: RSS, anonymous and file-backed (the binary's code) parts, threads.
set -euo pipefail
cd "$(dirname "$0")/.."
ACCOUNTS=${1:-10000}
WORK=${WORK:-/tmp/ues-rss}
PORT=${PORT:-2795}
cargo build --release --locked --bin ues
UES=${CARGO_TARGET_DIR:-target}/release/ues
rm -rf "$WORK" && mkdir -p "$WORK/data"
# Rate limits off: the script creates accounts and writes faster than one client may.
printf '[xrpc.rate_limits]\nenabled = false\n' >"$WORK/data/node.toml"

# shellcheck source=scripts/health.sh
. scripts/health.sh

pid=""
start() {
  RUST_LOG=warn "$UES" run --data-dir "$WORK/data" --listen "127.0.0.1:$PORT" --p2p-listen /ip4/127.0.0.1/tcp/0 \
    --no-mdns >>"$WORK/node.log" 2>&1 &
  pid=$!
  wait_healthy "$PORT"
}
stop() { kill "$pid"; wait "$pid" 2>/dev/null || true; }
trap 'kill $pid 2>/dev/null || true' EXIT

report() { # label
  sleep "${SETTLE:-5}"
  awk -v label="$1" '/^VmRSS/{r=$2} /^RssAnon/{a=$2} /^RssFile/{f=$2} /^Threads/{t=$2}
    END {printf "%-34s RSS %6.1f MB (anonymous %5.1f, file %5.1f), %s threads\n", label, r/1024, a/1024, f/1024, t}' \
    "/proc/$pid/status"
}

create_accounts() { # from to
  python3 - "$PORT" "$1" "$2" <<'EOF'
import http.client, json, sys
port, lo, hi = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
c = http.client.HTTPConnection("127.0.0.1", port)
for i in range(lo, hi):
    body = json.dumps({"handle": f"rss{i}.test", "password": "a long password"})
    c.request("POST", "/xrpc/com.atproto.server.createAccount", body, {"content-type": "application/json"})
    r = c.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"createAccount {i}: {r.status}")
EOF
}

start
report "fresh data directory, idle"
create_accounts 0 1
report "one account, idle"
"$UES" bench create --addr "127.0.0.1:$PORT" --records 3000 --concurrency 8 >/dev/null
SETTLE=0 report "right after 3,000 writes (8 writers)"
report "5 s later"
create_accounts 1 "$ACCOUNTS"
report "$ACCOUNTS accounts, idle"
stop
start
report "$ACCOUNTS accounts, restarted, idle"
stop
