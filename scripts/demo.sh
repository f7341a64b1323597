#!/usr/bin/env bash
# The main job, on built-in defaults: sets the machine up (idempotent), then
# runs base -> overlay -> synthesis on the built-in tiny guest and prints the
# page the synthesized VM serves. `scripts/demo.sh --virsh` uses libvirt.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$ROOT/scripts/setup.sh"
if [[ " $* " == *" --virsh "* ]] && ! virsh -c qemu:///system version >/dev/null 2>&1; then
  virtlogd -d 2>/dev/null || true
  libvirtd -d
fi
cd "$ROOT"
exec node --import tsx scripts/demo.ts "$@"
