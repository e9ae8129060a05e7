#!/usr/bin/env bash
# Asset ledger benchmarks on this machine: transfers through a release node (no contract, and
# with the AssemblyScript fee hook compiled here by AssemblyScript's compiler from tests/js), then
# verifyLedger's replay over a ledger of a million transactions built in memory.
# Usage: scripts/asset-bench.sh [transfers] [ledger-txs]
set -euo pipefail
cd "$(dirname "$0")/.."
transfers=${1:-2000}
txs=${2:-1000000}
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q
ues="$target/release/ues"
work=$(mktemp -d)
trap 'kill "${node:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
tests/js/node_modules/.bin/asc contracts/fee-hook/index.ts --runtime stub --noAssert --optimize -o "$work/fee-hook.wasm"
mkdir -p "$work/node"
printf '[xrpc.rate_limits]\nenabled = false\n' > "$work/node/node.toml"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$ues" run --data-dir "$work/node" --listen "127.0.0.1:$port" --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns >"$work/node.log" 2>&1 &
node=$!
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/xrpc/_health" >/dev/null && break
    sleep 0.1
done
"$ues" bench asset --addr "127.0.0.1:$port" --transfers "$transfers" --writers 8 \
    --hook "$work/fee-hook.wasm" --hook-msg '{"bps": 250, "to": "did:web:fees.example"}'
kill "$node"
"$ues" bench ledger --txs "$txs"
