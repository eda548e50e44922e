#!/usr/bin/env bash
# Copies the built filter modules to one directory, optimised with wasm-opt when present.
# Usage: package-wasm.sh BUILD_DIR OUT_DIR MODULE...
#   meshwarden -> meshwarden.wasm (the combined module); <filter> -> meshwarden_<filter>.wasm
set -euo pipefail
build_dir=$1 out_dir=$2
shift 2
mkdir -p "$out_dir"
if ! command -v wasm-opt >/dev/null 2>&1; then
  echo "note: wasm-opt (Debian package binaryen) not found: the modules are copied unoptimised," \
       "and larger; scripts/system-packages.sh installs it (as root)" >&2
fi
for f in "$@"; do
  if [ "$f" = meshwarden ]; then
    src="$build_dir/meshwarden_module.wasm" dst="$out_dir/meshwarden.wasm"
  else
    src="$build_dir/meshwarden_${f}_module.wasm" dst="$out_dir/meshwarden_$f.wasm"
  fi
  # The features rustc enables by default for wasm32-wasip1, all supported by Envoy's V8.
  if ! { command -v wasm-opt >/dev/null 2>&1 &&
         wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-nontrapping-float-to-int \
           --enable-mutable-globals --enable-reference-types --enable-multivalue \
           "$src" -o "$dst.tmp"; }; then
    cp "$src" "$dst.tmp"
  fi
  # Replace atomically: a control plane may be reading the directory.
  if ! cmp -s "$dst.tmp" "$dst" 2>/dev/null; then mv "$dst.tmp" "$dst"; else rm "$dst.tmp"; fi
  printf '%-32s %8d bytes (unoptimised %d)\n' "$dst" "$(stat -c %s "$dst")" "$(stat -c %s "$src")"
done
