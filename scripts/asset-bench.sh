#!/usr/bin/env bash
# Asset ledger benchmarks on this machine: transfers through a release node (no contract, and
# with the AssemblyScript fee hook compiled here by AssemblyScript's compiler from tests/js), then
# verifyLedger's replay over a ledger of a million transactions built in memory.
# Usage: scripts/asset-bench.sh [transfers] [ledger-txs]
set -euo pipefail
cd "$(dirname "$0")/.."
transfers=${1:-2000}
txs=${2:-1000000}
source scripts/bench-node.sh
tests/js/node_modules/.bin/asc contracts/fee-hook/index.ts --runtime stub --noAssert --optimize -o "$work/fee-hook.wasm"
start_node
"$ues" bench asset --addr "127.0.0.1:$port" --transfers "$transfers" --writers 8 \
    --hook "$work/fee-hook.wasm" --hook-msg '{"bps": 250, "to": "did:web:fees.example"}'
kill "$node"
"$ues" bench ledger --txs "$txs"
