#!/usr/bin/env bash
# Seed inputs for the fuzz targets, made fresh (nothing binary is committed):
# real .xz streams from the xz tool and from our encoder, with the size
# prefix xz_decode reads, and a small valid base index.
set -euo pipefail
DIR=$1
mkdir -p "$DIR/xz_decode" "$DIR/xz_roundtrip" "$DIR/index_bytes"
le32() { printf "\\x$(printf %02x $(($1 & 255)))\\x$(printf %02x $((($1 >> 8) & 255)))\\x$(printf %02x $((($1 >> 16) & 255)))\\x$(printf %02x $((($1 >> 24) & 255)))"; }
# Text-like bytes, the same every time.
data() { awk -v n="$1" 'BEGIN { for (i = 0; i < n; i++) printf "%c", 97 + (i * 7 + int(i / 13)) % 26 }'; }
n=0
for size in 0 1 100 5000; do
  for args in "-0" "-6" "-1 --check=none" "-1 --check=crc32" "-1 --check=sha256" "--format=xz --lzma2=preset=0,lc=0,lp=4,pb=4" "--x86 --lzma2=preset=0" "--delta=dist=4 --lzma2=preset=0"; do
    d=$(data "$size")
    # shellcheck disable=SC2086
    { le32 "$size"; printf '\x07\x05'; printf %s "$d" | xz -z -c -T1 $args; } >"$DIR/xz_decode/seed-$n"
    printf '\x01\x10%s' "$d" >"$DIR/xz_roundtrip/seed-$n"
    n=$((n + 1))
  done
done
# A valid index: magic, 3 entries, ascending keys, values.
{ printf 'CLIDX\x00\x00\x01'; printf '\x03\x00\x00\x00\x00\x00\x00\x00'
  printf '\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80'
  printf '\x00\x10\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00\x00\x00\x01\x00\x30\x00\x00\x00\x00\x00\x00'; } >"$DIR/index_bytes/seed-0"
