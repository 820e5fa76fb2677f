#!/usr/bin/env bash
# Process checkpoint/restore throughput: dump and restore a process holding 256 MiB and 2 GiB of
# random data to tmpfs, uncompressed and with zstd. Throughput is reported as a ratio to
# single-core memcpy bandwidth measured in this run (targets: >= 0.5x for dump and restore), with
# the frozen time and the image size. CRIU 4.2 here: 2 GiB dump 5.4 s, restore 1.5 s.
# Env: CR_SIZES="256 2048", CR_REPS=3.
set -euo pipefail
cd "$(dirname "$0")/../.."
GODWIT=${GODWIT:-$PWD/build/godwit}
BUILD=${BUILD:-$PWD/build}
out=$BUILD/bench
mkdir -p "$out"
for p in cr_memcpy cr_hold cr_bench; do
  cc -O2 -Wall -o "$out/$p" "bench/$p.c"
done
dir=/dev/shm/godwit-bench-cr-$$
trap 'rm -rf "$dir"' EXIT
sizes=${CR_SIZES:-256 2048}
reps=${CR_REPS:-3}
printf "%-6s %-5s %7s %6s %9s %9s %6s %9s %7s %9s %9s %7s %9s\n" MiB comp memcpy dump_s frozen_ms freeze_ms mem_ms dump_GB/s ratio \
  restore_s rest_GB/s ratio image_MiB
for size in $sizes; do
  for comp in raw zstd; do
    # memcpy right before each measurement: the machine is shared, so the limit moves too.
    mc=$("$out/cr_memcpy")
    line=$("$out/cr_bench" "$GODWIT" "$out/cr_hold" "$dir" "$size" "$comp" "$reps")
    eval "$line"
    awk -v s="$size" -v c="$comp" -v mc="$mc" -v b="$bytes" -v im="$image" -v d="$dump_s" \
        -v f="$frozen_ms" -v fz="$freeze_ms" -v m="$memdump_ms" -v r="$restore_s" 'BEGIN {
      dg = b / d / 1e9; rg = b / r / 1e9;
      printf "%-6s %-5s %7.2f %6.3f %9.1f %9.1f %6.1f %9.2f %6.2fx %9.3f %9.2f %6.2fx %9.1f\n",
             s, c, mc, d, f, fz, m, dg, dg / mc, r, rg, rg / mc, im / 1048576 }'
  done
done
echo "(memcpy: single-core GB/s measured right before each line; dump_s/restore_s: wall times of"
echo " the whole godwit command, restore until the tree runs; ratio = throughput / memcpy;"
echo " frozen_ms = freeze_ms (seizing) + mem_ms (copying memory) + the other steps and inventory)"
