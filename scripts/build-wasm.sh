#!/usr/bin/env bash
# Builds core-rs for wasm32-unknown-unknown and writes the one .wasm artifact
# (plus wasm-bindgen's JS glue) to ts/core/_wasm/. Skips the bindgen and
# wasm-opt steps when the cargo output has not changed.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc
cd "$ROOT/core-rs"
/usr/bin/cargo build -q --release --lib --target wasm32-unknown-unknown
raw=target/wasm32-unknown-unknown/release/cloudlet_core.wasm
out="$ROOT/ts/core/_wasm"
if [ ! -f "$out/cloudlet_core_bg.wasm" ] || [ "$raw" -nt "$out/cloudlet_core_bg.wasm" ]; then
  echo "build-wasm: wasm-bindgen + wasm-opt" >&2
  tmp=$(mktemp -d)
  wasm-bindgen --target web --weak-refs --out-dir "$tmp" "$raw"
  "$ROOT/node_modules/.bin/wasm-opt" -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    "$tmp/cloudlet_core_bg.wasm" -o "$tmp/cloudlet_core_bg.wasm"
  rm -rf "$out"
  mv "$tmp" "$out"
  chmod 755 "$out"
fi
