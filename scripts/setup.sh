#!/usr/bin/env bash
# The one setup path for a fresh Debian 12 machine, run as root.
# Installs Debian packages, the Rust->WASM toolchain (std for
# wasm32-unknown-unknown, pinned wasm-bindgen-cli), npm packages, and builds
# the .wasm. Idempotent: with nothing to do it finishes in a few seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
die() { echo "setup: $*" >&2; exit 1; }
say() { [ -n "${CLOUDLET_QUIET:-}" ] || echo "setup: $*" >&2; }

[ "$(id -u)" = 0 ] || die "must run as root (try: sudo $0)"
command -v apt-get >/dev/null || die "needs Debian 12 with apt-get"

# --- Debian packages -------------------------------------------------------
APT_PACKAGES=(
  rustc-web cargo-web rust-web-src lld-22         # Rust 1.96 with std sources, wasm-ld
  clang-14 llvm-14                                # compiles liblzma (C) for wasm32
  xz-utils zstd xdelta3 bsdiff b3sum coreutils    # peers for tests and benchmarks
  qemu-system-x86 qemu-utils                      # guests under TCG (or KVM)
  libvirt-daemon-system libvirt-clients           # the virsh host adapter
  debootstrap busybox-static e2fsprogs cpio       # the built-in tiny guest
  iproute2 socat ca-certificates curl
  chromium fonts-dejavu-core                      # headless browser for the inspector tests (playwright-core)
  python3 python3-venv                            # wasmtime (PyPI) loads the core component in a test
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq || die "apt-get update failed: check the network or /etc/apt/sources.list"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed: run it by hand to see why"
fi

# --- /dev/kvm for libvirt ----------------------------------------------------
# Where /dev/kvm exists but only root may open it (no udev here), libvirt sees
# KVM when it probes QEMU and "not available now" for its QEMU user, so it
# throws its capability cache away and re-probes on every domain start: about
# 50 s per `virsh create`. Give /dev/kvm the group and mode Debian's udev rule
# gives it. cloudlet itself still runs guests under TCG unless CLOUDLET_ACCEL=kvm.
if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G:%a /dev/kvm)" != "kvm:660" ]; then
  chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || say "could not give /dev/kvm to group kvm: libvirt will be slow to start domains"
fi

# --- Node.js --------------------------------------------------------------
command -v node >/dev/null || die "Node.js 20 or newer is required: install nodejs"
node_major=$(node -p 'process.versions.node.split(".")[0]')
[ "$node_major" -ge 20 ] || die "Node.js $node_major is too old: install Node.js 20 or newer"

# --- Rust -> wasm32 toolchain ---------------------------------------------
# Debian's rustc-web ships no std for wasm32-unknown-unknown; build it once
# from rust-web-src (offline, from its own library/vendor) and install the
# rlibs into the sysroot so ordinary --target builds work.
export PATH=/usr/bin:$PATH RUSTC=/usr/bin/rustc CARGO=/usr/bin/cargo
[ -x /usr/bin/rustc ] || die "/usr/bin/rustc missing: apt-get install rustc-web"
rust_ver=$(/usr/bin/rustc --version | awk '{print $2}')
libdir=/usr/lib/rustlib/wasm32-unknown-unknown/lib
stamp="$libdir/.cloudlet-std-$rust_ver"
if [ ! -f "$stamp" ]; then
  src=/usr/src/rustc-$rust_ver
  [ -d "$src/library/vendor" ] || die "$src/library/vendor missing: apt-get install rust-web-src"
  say "building std for wasm32-unknown-unknown (once, ~1 min)"
  tmp=$(mktemp -d)
  mkdir -p "$tmp/src" "$tmp/.cargo"
  printf '[package]\nname = "stdbuild"\nversion = "0.0.0"\nedition = "2021"\n[lib]\npath = "src/lib.rs"\n' > "$tmp/Cargo.toml"
  : > "$tmp/src/lib.rs"
  printf '[source.crates-io]\nreplace-with = "stdvendor"\n[source.stdvendor]\ndirectory = "%s"\n' "$src/library/vendor" > "$tmp/.cargo/config.toml"
  (cd "$tmp" && RUSTC_BOOTSTRAP=1 /usr/bin/cargo build -q --release --offline --target wasm32-unknown-unknown -Zbuild-std=std,panic_abort) \
    || die "building std for wasm32 failed (see above)"
  mkdir -p "$libdir"
  rm -f "$libdir"/lib*.rlib "$libdir"/.cloudlet-std-*
  cp "$tmp"/target/wasm32-unknown-unknown/release/deps/lib*.rlib "$libdir/"
  rm -f "$libdir"/libstdbuild-*.rlib
  rm -rf "$tmp"
  touch "$stamp"
fi

# wasm-bindgen-cli must match the crate's wasm-bindgen exactly.
wb_ver=$(sed -n 's/^wasm-bindgen = "=\(.*\)"/\1/p' core-rs/Cargo.toml)
[ -n "$wb_ver" ] || die "core-rs/Cargo.toml does not pin wasm-bindgen"
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$wb_ver" ]; then
  say "building wasm-bindgen-cli $wb_ver from crates.io (once, ~4 min)"
  # Not --locked: the registry mirror here lacks one crate version that the
  # published lockfile names; cargo resolves the newest compatible instead.
  /usr/bin/cargo install -q wasm-bindgen-cli --version "=$wb_ver" --root /usr/local \
    || die "cargo install wasm-bindgen-cli failed (is crates.io reachable?)"
fi

# --- npm packages -----------------------------------------------------------
lock_hash=$(sha256sum package-lock.json | cut -c1-64)
if [ "$(cat node_modules/.cloudlet-lock 2>/dev/null)" != "$lock_hash" ]; then
  say "installing npm packages"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null || die "npm ci failed (is the npm registry reachable?)"
  echo "$lock_hash" > node_modules/.cloudlet-lock
fi

# --- the .wasm ----------------------------------------------------------------
"$ROOT/scripts/build-wasm.sh"
"$ROOT/scripts/build-component.sh"                  # the core as a WebAssembly Component (docs/component.md)
node --import tsx "$ROOT/web/build.ts" --if-stale   # the browser inspector page (web/dist)

# --- wasmtime for the component test from Python ----------------------------
venv="$ROOT/.build/component-venv"
if ! "$venv/bin/python" -c 'import wasmtime' 2>/dev/null; then
  say "installing wasmtime (PyPI) for test/component_wasmtime.py"
  /usr/bin/python3 -m venv "$venv" && "$venv/bin/pip" install -q wasmtime==50.0.1 \
    || die "pip install wasmtime failed (is PyPI reachable?)"
fi
