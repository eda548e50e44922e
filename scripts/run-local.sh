#!/usr/bin/env bash
# `make run`: control plane (embedded store in .meshwarden/), demo upstream, one Envoy with
# the combined meshwarden filter, and the sample policies from examples/. Ctrl-C stops all.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CARGO_TARGET_DIR:-target}/debug
ENVOY=${MESHWARDEN_ENVOY:-.venv/bin/envoy}
WASM_DIR=${MESHWARDEN_WASM_DIR:-${CARGO_TARGET_DIR:-target}/filters}
RUN=.run
GRPC=127.0.0.1:18000 HTTP=127.0.0.1:18001 UPSTREAM=127.0.0.1:18080 CANDIDATE=127.0.0.1:18081
LISTEN_PORT=10000 ADMIN_PORT=9901
mkdir -p "$RUN"

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

wait_http() { # URL WHAT
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
    sleep 0.2
  done
  echo "timed out waiting for $2 ($1); logs in $RUN/" >&2
  exit 1
}

"$BIN/meshwarden" serve --grpc-addr "$GRPC" --http-addr "$HTTP" \
  --data-dir .meshwarden --wasm-dir "$WASM_DIR" >"$RUN/meshwarden.log" 2>&1 &
pids+=($!)
"$BIN/demo-upstream" "$UPSTREAM" >"$RUN/upstream.log" 2>&1 &
pids+=($!)
# A second echo server: the mirror target of examples/mirror.yaml ("candidate build").
"$BIN/demo-upstream" "$CANDIDATE" >"$RUN/candidate.log" 2>&1 &
pids+=($!)
wait_http "http://$HTTP/readyz" "control plane"

"$BIN/meshwarden" bootstrap --node-id local-envoy --cluster demo --label zone=local \
  --admin-port "$ADMIN_PORT" --listen-port "$LISTEN_PORT" --xds-addr "$GRPC" \
  --upstream-addr "$UPSTREAM" >"$RUN/envoy.yaml"
"$ENVOY" -c "$RUN/envoy.yaml" --concurrency 2 --disable-hot-restart \
  --log-level warn >"$RUN/envoy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$ADMIN_PORT/ready" "envoy"

"$BIN/meshwarden" --server "http://$GRPC" apply -f examples/
cat <<MSG

meshwarden is running:
  traffic      curl -si http://127.0.0.1:$LISTEN_PORT/hello
  policies     $BIN/meshwarden get
  proxies      $BIN/meshwarden status
  metrics      curl -s http://$HTTP/metrics      (control plane)
               curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep meshwarden_
  logs         $RUN/
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
