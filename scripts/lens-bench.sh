#!/usr/bin/env bash
# Live-view benchmarks on this machine: the cost of one record change on a grouped join view of
# 1,000 and of 1,000,000 rows (against recomputing it), the rate a view is built at, and the
# delay from a commit to its difference on a /ws subscription of a release node.
# Usage: scripts/lens-bench.sh [changes] [writes]
set -euo pipefail
cd "$(dirname "$0")/.."
changes=${1:-20000}
writes=${2:-200}
source scripts/bench-node.sh
"$ues" bench lens --rows 1000 --changes "$changes" --dir "$work"
"$ues" bench lens --rows 1000000 --changes "$changes" --dir "$work"
start_node
"$ues" bench lens-ws --addr "127.0.0.1:$port" --writes "$writes"
