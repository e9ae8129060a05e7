#!/usr/bin/env bash
# End-to-end encrypted chat between two nodes on loopback: a did:plc directory (@did-plc/server
# from tests/js), two release nodes that resolve each other's accounts through it, and
# `ues bench chat` sending MESSAGES messages from an account on the first to one on the second.
# Usage: scripts/chat-bench.sh [MESSAGES] (default 1000). Needs scripts/setup.sh (tests/js) and
# a release build (cargo build --release). Prints the bench's JSON line.
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES=${1:-1000}
UES=${UES:-${CARGO_TARGET_DIR:-target}/release/ues}
WORK=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null; wait 2>/dev/null; rm -rf "$WORK"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PLC=$(port)
(cd tests/js && node plc_server.mjs "$PLC" >"$WORK/plc.log" 2>&1) &
for _ in $(seq 100); do grep -q listening "$WORK/plc.log" 2>/dev/null && break; sleep 0.1; done
start() { # $1: name, $2: port
    mkdir -p "$WORK/$1"
    printf '[xrpc]\nplc_url = "http://127.0.0.1:%s"\n[xrpc.rate_limits]\nenabled = false\n[chat]\nsends_per_minute = 1000000\n' \
        "$PLC" > "$WORK/$1/node.toml"
    "$UES" run --data-dir "$WORK/$1" --listen "127.0.0.1:$2" --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns 2>"$WORK/$1/log" &
    for _ in $(seq 600); do curl -s -o /dev/null "http://127.0.0.1:$2/xrpc/_health" && break; sleep 0.1; done
}
A=$(port); start a "$A"
B=$(port); start b "$B"
"$UES" bench chat --a "127.0.0.1:$A" --b "127.0.0.1:$B" --messages "$MESSAGES"
