#!/usr/bin/env bash
# Installs the Debian packages the build and the tests use, when they are missing:
#   binaryen        wasm-opt, to shrink the filter modules
#   wrk, nghttp2-client   load for the benchmark smoke run
#   docker-registry, skopeo   an OCI registry on loopback for the Wasm image tests
#   kubectl         `kubectl kustomize` for the manifest check (offline)
#   redis-server    the global rate limit service's tests
#   prometheus      a real Prometheus (and promtool) for the dashboard test
#   etcd-server     the shared store of control-plane replicas (`serve --store etcd://`)
# As root with apt-get (CI, a fresh container), they are installed; otherwise the missing
# ones are named once and the build goes on (the tests that need them say so clearly).
set -euo pipefail

declare -A need=(
  [wasm-opt]=binaryen
  [wrk]=wrk
  [h2load]=nghttp2-client
  [docker-registry]=docker-registry
  [skopeo]=skopeo
  [kubectl]=kubectl
  [redis-server]=redis-server
  [prometheus]=prometheus
  [etcd]=etcd-server
)
missing=()
for cmd in "${!need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || missing+=("${need[$cmd]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || echo "warning: apt-get update failed; trying the cached package lists" >&2
  if ! apt-get install -y -qq "${missing[@]}" >/dev/null; then
    # One unavailable package must not keep the others out.
    for pkg in "${missing[@]}"; do
      apt-get install -y -qq "$pkg" >/dev/null || echo "warning: could not install $pkg" >&2
    done
  fi
else
  echo "note: missing Debian packages (install them for the full test suite): ${missing[*]}" >&2
fi
