#!/usr/bin/env bash
# Sets up the machine, builds the node optimised and runs it on its embedded defaults
# (data in ./data, XRPC on 127.0.0.1:2583). Extra arguments go to `ues run`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --locked --bin ues -- run "$@"
