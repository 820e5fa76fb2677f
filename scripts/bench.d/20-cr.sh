#!/usr/bin/env bash
# Process checkpoint/restore throughput: dump and restore a process holding 512 MiB and 2 GiB of
# random data to tmpfs, uncompressed and with zstd (and, with zstd, data that does compress).
# Before each size, the limits of this machine measured in this run (bench/cr_memcpy.c, GB/s):
#   hot          = memcpy between buffers already faulted in, one thread;
#   recent1/2    = memcpy into new pages of memory freed moments ago, 1 and 2 threads;
#   idle1/2      = the same after the freed memory sat idle CR_SETTLE s (free page reporting
#                  hands it back to the host: the next touch pays again; see docs/engine.md).
# Then per godwit binary (CR_BASE=/path/to/an/older/godwit adds paired runs of it: each rep runs
# both, one after the other), medians of CR_REPS: dump total, frozen, full restore and lazy
# restore until the tree runs, each time also as a ratio x to the time the limit needs for the
# same bytes (bytes / recent2: creating the pages on both cores), and the dump's peak extra memory
# (a memory cgroup holding the tree and godwit: its peak minus its usage before the dump) in % of
# the tree. cpu_s: the CPU seconds the dump and the full restore cost (godwit's and the tree's
# during it): the wall times move 2-5x with what the other sessions run, these hardly; on two
# otherwise idle cores a command needs at least half of it. The machine is shared: compare paired
# lines, and note `uptime` with every number.
# Targets (issue 13, 2 GiB): dump total <= 1.4 s, frozen <= 300 ms (no pre-copy), lazy
# time-to-running <= 30 ms, full restore <= 0.6 s, peak extra memory <= 10% (kill mode).
#
# Image file systems (CR_FS): "shm" = /dev/shm as it is here (4 KiB pages); "huge" = a tmpfs
# this script mounts with huge=within_size (2 MiB pages for the page files: 512x fewer page
# allocations, a shorter frozen copy, but on this VM those blocks are the ones the host took
# back, so reserving them costs more: see docs/engine.md). Without root, "huge" is skipped.
# Env: CR_SIZES="512 2048", CR_REPS=3, CR_FS=shm, CR_SETTLE=3 (seconds, see cr_bench.c),
# CR_COMBOS="raw/random zstd/random zstd/low", CR_BASE (see above).
set -euo pipefail
cd "$(dirname "$0")/../.."
GODWIT=${GODWIT:-$PWD/build/godwit}
BUILD=${BUILD:-$PWD/build}
out=$BUILD/bench
mkdir -p "$out"
for p in cr_memcpy cr_hold cr_bench; do
  cc -O2 -Wall -pthread -o "$out/$p" "bench/$p.c"
done
mnt=$out/cr-huge-$$
cleanup() {
  rm -rf /dev/shm/godwit-bench-cr-$$
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt"; fi
  rmdir "$mnt" 2>/dev/null || true
}
trap cleanup EXIT
sizes=${CR_SIZES:-512 2048}
reps=${CR_REPS:-3}
settle=${CR_SETTLE:-3}
bins=$GODWIT${CR_BASE:+:$CR_BASE}
echo "load: $(uptime)"
echo "bin 0 = $GODWIT${CR_BASE:+, bin 1 = $CR_BASE}"
for fs in ${CR_FS:-shm}; do
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
    # The limits right before each size: the machine is shared, so they move too.
    read -r hot fresh r1 r2 i1 i2 < <("$out/cr_memcpy" "$size" "$settle")
    printf "%s %s MiB limits GB/s: hot %.2f | recent 1t %.2f 2t %.2f | idle 1t %.2f 2t %.2f | load %s\n" \
      "$fs" "$size" "$hot" "$r1" "$r2" "$i1" "$i2" "$(cut -d' ' -f1-3 /proc/loadavg)"
    printf "  %-5s %-6s %3s | %6s %5s %5s | %8s %5s | %6s %5s %5s | %7s | %6s | %7s\n" \
      comp data bin dump_s x cpu_s dump_frz x rest_s x cpu_s lazy_ms peak% image_MiB
    for cd in ${CR_COMBOS:-raw/random zstd/random zstd/low}; do
      comp=${cd%/*} data=${cd#*/}
      "$out/cr_bench" "$bins" "$out/cr_hold" "$dir" "$size" "$comp" "$reps" "$data" |
      while read -r line; do
        eval "$line"
        awk -v c="$comp" -v da="$data" -v bin="$bin" -v r2="$r2" -v b="$bytes" -v im="$image" \
            -v d="$dump_s" -v f="$frozen_ms" -v r="$restore_s" -v lz="$lazy_s" -v pk="$peak_extra" \
            -v dc="$dump_cpu" -v rc="$restore_cpu" \
            'BEGIN {
          lim = b / (r2 * 1e9);  # seconds to create the pages on both cores
          pp = pk < 0 ? -1 : 100 * pk / b;
          printf "  %-5s %-6s %3s | %6.3f %5.2f %5.2f | %8.1f %5.2f | %6.3f %5.2f %5.2f | %7.1f | %6.1f | %7.1f\n",
                 c, da, bin, d, d / lim, dc, f, f / 1000 / lim, r, r / lim, rc, lz * 1000, pp,
                 im / 1048576 }'
      done
    done
  done
  [ "$fs" = huge ] && umount "$mnt"
done
echo "(dump_s, rest_s: wall time of the whole godwit command (restore: until the tree runs);"
echo " cpu_s: CPU seconds of the command and of the tree during it (two idle cores: >= cpu_s / 2);"
echo " dump_frz: frozen ms; x: that time / (bytes / recent2), the time both cores need to create"
echo " the pages; lazy_ms: restore --lazy until the tree runs; peak%: the dump's peak extra memory"
echo " in % of the tree (-1: no memory cgroup); data: random = incompressible (stored raw even with"
echo " zstd: a sample decides), low = 4 random bits per byte (zstd stores ~60%))"
echo "targets (issue 13, 2 GiB): dump <= 1.4 s, frozen <= 300 ms, lazy <= 30 ms, restore <= 0.6 s, peak <= 10%"
