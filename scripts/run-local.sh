#!/usr/bin/env bash
# `make run`: control plane (embedded store in .meshwarden/), demo upstream, one Envoy with
# the combined meshwarden filter, and the sample policies from examples/. Ctrl-C stops all.
# With redis-server installed, also Redis and the global rate limit service
# (meshwarden-ratelimit, following the control plane's /ratelimit/config) for
# `scope: global` policies; without it those policies apply their failureMode.
# `make run REPLICAS=3`: an etcd on loopback (data in .run/etcd) and three control-plane
# replicas sharing it (gRPC ports 18000, 18010, 18020); the Envoy lists all three.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${CARGO_TARGET_DIR:-target}/debug
ENVOY=${MESHWARDEN_ENVOY:-.venv/bin/envoy}
WASM_DIR=${MESHWARDEN_WASM_DIR:-${CARGO_TARGET_DIR:-target}/filters}
RUN=.run
GRPC=127.0.0.1:18000 HTTP=127.0.0.1:18001 UPSTREAM=127.0.0.1:18080 CANDIDATE=127.0.0.1:18081
LISTEN_PORT=10000 ADMIN_PORT=9901
RLS_GRPC=127.0.0.1:18091 RLS_HTTP=127.0.0.1:18092 REDIS_PORT=16379
ETCD_PORT=12379 ETCD_PEER_PORT=12380
REPLICAS=${REPLICAS:-1}
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

xds_addrs=$GRPC
if [ "$REPLICAS" -gt 1 ]; then
  command -v etcd >/dev/null || { echo "REPLICAS=$REPLICAS needs etcd (Debian package etcd-server)" >&2; exit 1; }
  ETCD_UNSUPPORTED_ARCH=$(uname -m) etcd --name run --data-dir "$RUN/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "run=http://127.0.0.1:$ETCD_PEER_PORT" --log-level warn >"$RUN/etcd.log" 2>&1 &
  pids+=($!)
  wait_http "http://127.0.0.1:$ETCD_PORT/health" "etcd"
  for i in $(seq 0 $((REPLICAS - 1))); do
    grpc=127.0.0.1:$((18000 + 10 * i)) http=127.0.0.1:$((18001 + 10 * i))
    "$BIN/meshwarden" serve --grpc-addr "$grpc" --http-addr "$http" \
      --store "etcd://127.0.0.1:$ETCD_PORT" --replica-id "replica-$i" \
      --data-dir ".meshwarden-replica-$i" --wasm-dir "$WASM_DIR" >"$RUN/meshwarden-$i.log" 2>&1 &
    pids+=($!)
    [ "$i" -gt 0 ] && xds_addrs="$xds_addrs,$grpc"
    wait_http "http://$http/readyz" "control plane replica $i"
  done
else
  "$BIN/meshwarden" serve --grpc-addr "$GRPC" --http-addr "$HTTP" \
    --data-dir .meshwarden --wasm-dir "$WASM_DIR" >"$RUN/meshwarden.log" 2>&1 &
  pids+=($!)
fi
"$BIN/demo-upstream" "$UPSTREAM" >"$RUN/upstream.log" 2>&1 &
pids+=($!)
# A second echo server: the mirror target of examples/mirror.yaml ("candidate build").
"$BIN/demo-upstream" "$CANDIDATE" >"$RUN/candidate.log" 2>&1 &
pids+=($!)
wait_http "http://$HTTP/readyz" "control plane"

rls_args=()
if command -v redis-server >/dev/null && [ -x "$BIN/meshwarden-ratelimit" ]; then
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
    >"$RUN/redis.log" 2>&1 &
  pids+=($!)
  "$BIN/meshwarden-ratelimit" --config-url "http://$HTTP/ratelimit/config" --config-poll 2s \
    --grpc-addr "$RLS_GRPC" --http-addr "$RLS_HTTP" \
    --redis "redis://127.0.0.1:$REDIS_PORT" >"$RUN/ratelimit.log" 2>&1 &
  pids+=($!)
  wait_http "http://$RLS_HTTP/healthz" "rate limit service"
  rls_args=(--ratelimit-service "$RLS_GRPC")
else
  echo "redis-server or $BIN/meshwarden-ratelimit not found: global rate limits apply their failureMode" >&2
fi

"$BIN/meshwarden" bootstrap --node-id local-envoy --cluster demo --label zone=local \
  --admin-port "$ADMIN_PORT" --listen-port "$LISTEN_PORT" --xds-addr "$xds_addrs" \
  --upstream-addr "$UPSTREAM" "${rls_args[@]}" >"$RUN/envoy.yaml"
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
  global limit for i in \$(seq 50); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:$LISTEN_PORT/search; done
  metrics      curl -s http://$HTTP/metrics      (control plane)
               curl -s http://127.0.0.1:$ADMIN_PORT/stats/prometheus | grep meshwarden_
  replicas     $REPLICAS (REPLICAS=3 make run: three replicas on one etcd)
  logs         $RUN/
Press Ctrl-C to stop.
MSG
wait -n "${pids[@]}"
