#!/usr/bin/env bash
# The test command: sets the machine up (idempotent), then runs every suite:
# native `cargo test` of core-rs, a bounded fuzz run of its byte parsers
# (libFuzzer, 5 targets x 12 s; docs/fuzzing.md), the TypeScript type check,
# the node:test suites under Node, and the same files under Deno.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
"$ROOT/scripts/setup.sh"
export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc
DENO="$ROOT/node_modules/@deno/linux-x64-glibc/deno"

step() { echo; echo "=== $* ==="; }
step "cargo test (core-rs, native)"
(cd core-rs && /usr/bin/cargo test -q --release)
step "fuzz (core-rs, libFuzzer, 60 s)"
core-rs/fuzz/run.sh "${CLOUDLET_FUZZ_SECONDS:-12}"
step "typecheck"
node_modules/.bin/tsc -p tsconfig.json
step "node --test"
node --import tsx --test --test-concurrency=1 --test-reporter=dot test/*.test.ts
step "component from Python (wasmtime)"
.build/component-venv/bin/python test/component_wasmtime.py
step "deno test"
NO_COLOR=1 "$DENO" test -A --no-check --unstable-net test/
echo; echo "all suites passed"
