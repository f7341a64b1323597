#!/usr/bin/env bash
# Builds the core as a WebAssembly Component (docs/component.md) and its ES
# modules, into ts/component/_gen/:
#
#   cargo build core-component (wasm32-unknown-unknown, wit-bindgen)
#     -> keep only the component ABI exports (core-component/keep-component-abi.mjs)
#     -> wasm-opt -O3, as scripts/build-wasm.sh does for the wasm-bindgen build
#     -> jco new         -> cloudlet_core.component.wasm  (for any component host)
#     -> check that the component imports nothing (no WASI)
#     -> jco transpile   -> cloudlet_core.js + core modules + .d.ts (for JS)
#     -> read JCO_DEBUG once per instance, not per call (see below)
#
# Idempotent: skips everything after cargo when the cargo output, jco and
# the build steps are unchanged.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc
die() { echo "build-component: $*" >&2; exit 1; }

JCO="$ROOT/node_modules/.bin/jco"
WASM_OPT="$ROOT/node_modules/.bin/wasm-opt"
[ -x "$JCO" ] || die "$JCO missing: run npm ci (package.json pins @bytecodealliance/jco)"
[ -x "$WASM_OPT" ] || die "$WASM_OPT missing: run npm ci (package.json pins binaryen)"

cd "$ROOT/core-component"
/usr/bin/cargo build -q --release --lib --target wasm32-unknown-unknown
raw="$ROOT/core-component/target/wasm32-unknown-unknown/release/cloudlet_core_component.wasm"
out="$ROOT/ts/component/_gen"
stamp=$({ sha256sum "$raw" "$ROOT/scripts/build-component.sh" "$ROOT/core-component/keep-component-abi.mjs" | cut -c1-64; "$JCO" --version; } | sha256sum | cut -c1-64)
if [ -f "$out/.stamp" ] && [ "$(cat "$out/.stamp")" = "$stamp" ]; then
  exit 0
fi

echo "build-component: component + jco transpile" >&2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
node "$ROOT/core-component/keep-component-abi.mjs" "$raw" "$tmp/core.wasm"
"$WASM_OPT" -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
  --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
  "$tmp/core.wasm" -o "$tmp/core.wasm"
mkdir -p "$tmp/gen"
"$JCO" new "$tmp/core.wasm" -o "$tmp/gen/cloudlet_core.component.wasm" >/dev/null

# The component must need nothing from its host: its world exports only.
"$JCO" wit "$tmp/gen/cloudlet_core.component.wasm" > "$tmp/world.wit"
if grep -Eq '^\s*import ' "$tmp/world.wit"; then
  cat "$tmp/world.wit" >&2
  die "the component imports something (see its world above); it must import nothing"
fi
grep -q 'export cloudlet:core/xz@' "$tmp/world.wit" || die "the component does not export cloudlet:core (jco wit printed: $(cat "$tmp/world.wit"))"

# --instantiation async: the caller hands over the core modules' bytes, so
# no runtime has to fetch a file: URL (Node 20 cannot) and browsers compile
# asynchronously.
"$JCO" transpile "$tmp/gen/cloudlet_core.component.wasm" -o "$tmp/gen" --name cloudlet_core \
  --instantiation async --quiet

# jco 1.35's glue reads process.env.JCO_DEBUG in every _debugLog() call,
# dozens of times per export call: ~3 us more per call under Node, 35-55 us
# more under Deno, where process.env goes through a permission check (and
# throws without --allow-env). Read it once per instantiation instead. The
# untouched glue stays as cloudlet_core.jco.js for bench/component_bench.ts.
cp "$tmp/gen/cloudlet_core.js" "$tmp/gen/cloudlet_core.jco.js"
cp "$tmp/gen/cloudlet_core.d.ts" "$tmp/gen/cloudlet_core.jco.d.ts"
debug_check='if (!globalThis?.process?.env?.JCO_DEBUG) { return; }'
if [ "$(grep -cF "$debug_check" "$tmp/gen/cloudlet_core.js")" = 1 ]; then
  sed -i -e "s|^\(\s*\)const _debugLog = (...args) => {|\1const _jcoDebug = (() => { try { return !!globalThis?.process?.env?.JCO_DEBUG; } catch { return false; } })();\n&|" \
    -e "s|if (!globalThis?.process?.env?.JCO_DEBUG) { return; }|if (!_jcoDebug) { return; }|" "$tmp/gen/cloudlet_core.js"
  grep -q '_jcoDebug = ' "$tmp/gen/cloudlet_core.js" || die "patching the JCO_DEBUG check failed"
else
  echo "build-component: jco's JCO_DEBUG check not found (another jco version?): glue left as generated" >&2
fi
echo "$stamp" > "$tmp/gen/.stamp"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$tmp/gen" "$out"
chmod 755 "$out"
