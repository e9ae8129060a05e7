#!/usr/bin/env bash
# createRecord throughput at equal durability, side by side in one run: a fresh UES node on its
# defaults (power-cut safe: one sync per commit), the same with `durability = "process"`, and
# Bluesky's reference PDS (syncs every commit), all driven by the same light client
# (`ues bench create`), sequential and with 8 writers, alternating, ROUNDS times each.
#
#   scripts/bench-durable.sh [ROUNDS] [RECORDS]      (defaults: 3 rounds of 3000 records)
#
# Needs ../shared/tools/reference-pds (copied to $WORK/refpds and installed with npm on the
# first run, ~3 minutes) and Node.js. Prints one JSON line per measurement and a summary table.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
RECORDS=${2:-3000}
WORK=${WORK:-/tmp/ues-bench-durable}
REF_SRC=${REF_SRC:-../shared/tools/reference-pds}
mkdir -p "$WORK"

cargo build --release --locked --bin ues
UES=${CARGO_TARGET_DIR:-target}/release/ues

if [ ! -d "$WORK/refpds/node_modules" ]; then
  rm -rf "$WORK/refpds" && cp -r "$REF_SRC" "$WORK/refpds"
  (cd "$WORK/refpds" && npm_config_build_from_source=true npm install --no-audit --no-fund >/dev/null)
fi

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# shellcheck source=scripts/health.sh
. scripts/health.sh

start_ues() { # name port durability
  local dir="$WORK/$1"
  rm -rf "$dir" && mkdir -p "$dir"
  printf '[xrpc.rate_limits]\nenabled = false\n[http]\nmax_connections_per_ip = 4096\n[storage]\ndurability = "%s"\n' "$3" >"$dir/node.toml"
  RUST_LOG=warn "$UES" run --data-dir "$dir" --listen "127.0.0.1:$2" --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns \
    >"$WORK/$1.log" 2>&1 &
  pids+=($!)
  wait_healthy "$2"
}

start_ues ues-fsync 2791 fsync
start_ues ues-process 2792 process
rm -rf "$WORK/refdata"
(cd "$WORK/refpds" && PLC_PORT=2793 PDS_PORT=2794 DATA="$WORK/refdata" node run-pds.js >"$WORK/refpds.log" 2>&1) &
pids+=($!)
wait_healthy 2794

results="$WORK/results.jsonl"
: >"$results"
for round in $(seq 1 "$ROUNDS"); do
  for c in 1 8; do
    for target in ues-fsync:2791 ues-process:2792 reference:2794; do
      name=${target%%:*}
      port=${target##*:}
      n=$RECORDS
      # The reference takes ~100 records/s: a tenth of the records keeps its runs short.
      [ "$name" = reference ] && n=$((RECORDS / 10))
      out=$("$UES" bench create --addr "127.0.0.1:$port" --records "$n" --concurrency "$c" | tr -d '\n ')
      echo "{\"round\":$round,\"target\":\"$name\",\"result\":$out}" | tee -a "$results"
    done
  done
done

python3 - "$results" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
print()
print("| target | writers | records/s (each round) | p99 ms (each round) |")
print("|---|---|---|---|")
for name in ("ues-fsync", "ues-process", "reference"):
    for c in (1, 8):
        rs = [r["result"] for r in rows if r["target"] == name and r["result"]["concurrency"] == c]
        rate = ", ".join(f"{r['recordsPerSec']:,.0f}" for r in rs)
        p99 = ", ".join(f"{r['p99ms']:.2f}" for r in rs)
        print(f"| {name} | {c} | {rate} | {p99} |")
EOF
