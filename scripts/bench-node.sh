# Sourced by the benchmark scripts (from the repository's root): builds the release node
# ($ues), makes a work directory ($work, removed on exit, the node stopped), and defines
# start_node: a release node on its defaults with rate limits off, on a free 127.0.0.1 port
# ($port; its pid in $node), answering when it returns.
target=${CARGO_TARGET_DIR:-target}
cargo build --release --locked -q
ues="$target/release/ues"
work=$(mktemp -d)
trap 'kill "${node:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
start_node() {
    mkdir -p "$work/node"
    printf '[xrpc.rate_limits]\nenabled = false\n' > "$work/node/node.toml"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$ues" run --data-dir "$work/node" --listen "127.0.0.1:$port" --p2p-listen /ip4/127.0.0.1/tcp/0 --no-mdns >"$work/node.log" 2>&1 &
    node=$!
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/xrpc/_health" >/dev/null && break
        sleep 0.1
    done
}
