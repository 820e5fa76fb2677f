#!/usr/bin/env bash
# Process checkpoint/restore throughput: dump and restore a process holding 256 MiB and 2 GiB of
# random data to tmpfs, uncompressed and with zstd (and, with zstd, data that does compress).
# Throughput is reported as a ratio to two limits measured right before each line, in this run:
#   hot   = single-core memcpy between buffers already faulted in (the issue's yardstick);
#   fresh = single-core memcpy into freshly mmapped memory: the floor of any copy into new
#           memory on this VM (see docs/engine.md, "Performance": a dump must put every byte
#           into new tmpfs pages, a restore into new anonymous pages).
# Targets (issue 3): dump and restore >= 0.5x hot memcpy uncompressed; with zstd, frozen time not
# worse than uncompressed. CRIU 4.2 here: 2 GiB dump 5.4 s, restore 1.5 s.
#
# Image file systems (CR_FS): "shm" = /dev/shm as it is here (4 KiB pages); "huge" = a tmpfs
# this script mounts with huge=within_size (2 MiB pages for the page files: 512x fewer page
# allocations, a shorter frozen copy, but on this VM those blocks are the ones the host took
# back, so reserving them costs more: see docs/engine.md). Without root, "huge" is skipped.
# Env: CR_SIZES="256 2048", CR_REPS=3, CR_FS="shm huge", CR_SETTLE=3 (seconds, see cr_bench.c).
set -euo pipefail
cd "$(dirname "$0")/../.."
GODWIT=${GODWIT:-$PWD/build/godwit}
BUILD=${BUILD:-$PWD/build}
out=$BUILD/bench
mkdir -p "$out"
for p in cr_memcpy cr_hold cr_bench; do
  cc -O2 -Wall -o "$out/$p" "bench/$p.c"
done
mnt=$out/cr-huge-$$
cleanup() {
  rm -rf /dev/shm/godwit-bench-cr-$$
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
sizes=${CR_SIZES:-256 2048}
reps=${CR_REPS:-3}
printf "%-4s %5s %-5s %-6s %6s %6s | %6s %8s %7s %6s %6s | %6s %7s %6s %6s | %7s | %7s\n" \
  fs MiB comp data hot fresh dump_s frozen_ms GB/s x_hot x_frsh rest_s GB/s x_hot x_frsh image_MiB lazy_ms
for fs in ${CR_FS:-shm huge}; do
  if [ "$fs" = huge ]; then
    mkdir -p "$mnt"
    if ! mount -t tmpfs -o huge=within_size,size=8g godwit-bench "$mnt" 2>/dev/null; then
      echo "(huge: cannot mount a tmpfs here, skipped)"
      continue
    fi
    dir=$mnt/img
  else
    dir=/dev/shm/godwit-bench-cr-$$
  fi
  for size in $sizes; do
    for cd in raw/random zstd/random zstd/low; do
      comp=${cd%/*} data=${cd#*/}
      # The limits right before each line: the machine is shared, so they move too.
      read -r hot fresh < <("$out/cr_memcpy")
      line=$("$out/cr_bench" "$GODWIT" "$out/cr_hold" "$dir" "$size" "$comp" "$reps" "$data")
      eval "$line"
      awk -v fs="$fs" -v s="$size" -v c="$comp" -v da="$data" -v hot="$hot" -v fr="$fresh" \
          -v b="$bytes" -v im="$image" -v d="$dump_s" -v f="$frozen_ms" -v r="$restore_s" \
          -v lz="$lazy_s" 'BEGIN {
        dg = b / d / 1e9; rg = b / r / 1e9;
        printf "%-4s %5s %-5s %-6s %6.2f %6.2f | %6.3f %8.1f %7.2f %5.2fx %5.2fx | %6.3f %7.2f %5.2fx %5.2fx | %7.1f | %7.1f\n",
               fs, s, c, da, hot, fr, d, f, dg, dg / hot, dg / fr, r, rg, rg / hot, rg / fr,
               im / 1048576, lz * 1000 }'
    done
  done
  [ "$fs" = huge ] && umount "$mnt"
done
echo "(hot/fresh: single-core memcpy GB/s right before each line; dump_s/rest_s: medians of $reps"
echo " wall times of the whole godwit command (restore: until the tree runs); GB/s = bytes of"
echo " memory / time; x_hot, x_frsh = that throughput / hot, fresh memcpy; frozen_ms: the tree"
echo " stopped, freezing included; data: random = incompressible (stored raw even with zstd: a"
echo " sample decides), low = 4 random bits per byte (zstd stores ~60%); lazy_ms: restore --lazy"
echo " of the same images until the tree runs, its memory paged in after (issue 13 target <= 30 ms))"
