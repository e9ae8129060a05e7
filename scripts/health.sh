# Sourced by the scripts that start nodes: `wait_healthy PORT` waits (at most 60 s) until
# 127.0.0.1:PORT answers `/xrpc/_health`, and exits the script otherwise.
wait_healthy() {
  for _ in $(seq 1 600); do
    curl -sf "http://127.0.0.1:$1/xrpc/_health" >/dev/null && return 0
    sleep 0.1
  done
  echo "nothing answered on port $1" >&2
  exit 1
}
