#!/usr/bin/env bash
# Live-view benchmarks on this machine: the cost of one record change on a grouped join view of
# 1,000 and of 1,000,000 rows (against recomputing it), the rate a view is built at, and the
# delay from a commit to its difference on a /ws subscription of a release node.
# Usage: scripts/lens-bench.sh [changes] [writes]
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-20000}
writes=${2:-200}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q
ues="$target/release/ues"
work=$(mktemp -d)
trap 'kill "${node:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
"$ues" bench lens --rows 1000 --changes "$changes" --dir "$work"
"$ues" bench lens --rows 1000000 --changes "$changes" --dir "$work"
mkdir -p "$work/node"
printf '[xrpc.rate_limits]\nenabled = false\n' > "$work/node/node.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$ues" run --data-dir "$work/node" --listen "127.0.0.1:$port" --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns >"$work/node.log" 2>&1 &
node=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/xrpc/_health" >/dev/null && break
    sleep 0.1
done
"$ues" bench lens-ws --addr "127.0.0.1:$port" --writes "$writes"
