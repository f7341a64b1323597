#!/usr/bin/env bash
# Builds the fuzz targets with the stable toolchain and runs each with
# libFuzzer for a bounded time: `core-rs/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]`
# (default 12 s each, every target). Coverage comes from LLVM's SanitizerCoverage
# pass (what cargo-fuzz turns on), in the Rust code and, through clang, in the
# C liblzma too. Corpora grow in .build/fuzz/corpus/TARGET (kept between runs);
# seeds are made fresh by `seeds.sh`. A crash leaves its input in
# .build/fuzz/artifacts/TARGET/ and fails the run: turn it into a regression
# test (core-rs/tests/fuzz_regressions.rs) before fixing it.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SECONDS_EACH=${1:-12}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(xz_decode xz_roundtrip index_bytes index_runs kernels)
TRIPLE=x86_64-unknown-linux-gnu
OUT="$ROOT/.build/fuzz"
export PATH=/usr/bin:$PATH RUSTC=${RUSTC:-/usr/bin/rustc}
CARGO=${CARGO:-/usr/bin/cargo}
CLANG=${CLANG:-clang-14}

# The flags cargo-fuzz passes, all of them stable: coverage counters, the PC
# table and comparison tracing for libFuzzer, `cfg(fuzzing)`, and the checks
# that turn a silent wrap into a crash. --target keeps them off build scripts.
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# liblzma (C) is compiled by clang with the same instrumentation; libFuzzer (C++) is not.
export CC_x86_64_unknown_linux_gnu="$CLANG"
export CFLAGS_x86_64_unknown_linux_gnu="-fsanitize-coverage=inline-8bit-counters,pc-table,trace-cmp -g"
export CARGO_TARGET_DIR="$OUT/target"
(cd "$HERE" && "$CARGO" build -q --release --target "$TRIPLE" --bins)

"$HERE/seeds.sh" "$OUT/seeds"
status=0
for t in "${TARGETS[@]}"; do
  mkdir -p "$OUT/corpus/$t" "$OUT/artifacts/$t"
  seeds=()
  [ -d "$OUT/seeds/$t" ] && seeds=("$OUT/seeds/$t")
  # -rss_limit_mb/-malloc_limit_mb: a hostile input must not make the kernels
  # allocate without bound; -timeout: nor run without bound.
  log="$OUT/$t.log"
  if "$CARGO_TARGET_DIR/$TRIPLE/release/$t" "$OUT/corpus/$t" "${seeds[@]}" -max_total_time="$SECONDS_EACH" \
      -rss_limit_mb=1024 -malloc_limit_mb=512 -timeout=10 -max_len=65536 -print_final_stats=1 \
      -artifact_prefix="$OUT/artifacts/$t/" >"$log" 2>&1; then
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz $t: ${SECONDS_EACH} s, ${execs:-?} executions, no crash ($(sed -n 's/^stat::new_units_added: *//p' "$log") new inputs)"
  else
    echo "fuzz $t: FAILED, see $log and $OUT/artifacts/$t/" >&2
    tail -30 "$log" >&2
    status=1
  fi
done
exit $status
