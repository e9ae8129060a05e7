#!/usr/bin/env bash
# Runs every fuzz target briefly (FUZZ_SECONDS each, default 20). cargo-fuzz needs nightly
# features; the stable toolchain provides them under RUSTC_BOOTSTRAP=1, and `-s none` skips the
# sanitizer runtime. A crash fails the script and leaves its input under fuzz/artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${FUZZ_SECONDS:-20}"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
target_dir="${CARGO_TARGET_DIR:-$PWD/target}/fuzz"
for t in dagcbor_decode car_read car_import mst_node_decode sync_entry_decode sync_message live_push head_verify handover ws_frame rotation_body blob_piece did_document firehose_frame; do
    echo "fuzz: $t for ${seconds}s" >&2
    log=$(mktemp)
    if ! RUSTC_BOOTSTRAP=1 cargo fuzz run -s none --target-dir "$target_dir" "$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 >"$log" 2>&1; then
        tail -n 60 "$log" >&2
        echo "fuzz: $t FAILED" >&2
        exit 1
    fi
    grep -E "^Done [0-9]+ runs" "$log" >&2 || { tail -n 20 "$log" >&2; echo "fuzz: $t ran nothing" >&2; exit 1; }
    rm -f "$log"
done
