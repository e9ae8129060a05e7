#!/usr/bin/env bash
# The whole test suite, from a fresh machine: setup, then every test of every crate.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo test --workspace --all-targets --locked
cargo test --workspace --doc --locked
