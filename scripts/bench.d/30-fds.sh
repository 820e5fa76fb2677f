#!/usr/bin/env bash
# File descriptors: dump+restore of a process holding ~1,000 fds of mixed kinds (regular files,
# pipes and unix socketpairs with queued data, eventfd, timerfd, memfd, epoll, /dev/null) and 100
# established TCP connections with queued data (TCP_REPAIR, network lock), with the peers'
# ends kept open outside the tree and checked after restore. Reports per-fd cost of dump and
# restore and the frozen time; the limit measured in the same run is the time the process
# itself took to create its non-TCP fds (ratio = godwit's per-fd cost / creation per-fd cost).
# Env: FDS_GROUPS=100 (x9 fds), FDS_CONNS=100, FDS_REPS=3.
set -euo pipefail
cd "$(dirname "$0")/../.."
GODWIT=${GODWIT:-$PWD/build/godwit}
BUILD=${BUILD:-$PWD/build}
out=$BUILD/bench
mkdir -p "$out"
for p in fds_hold fds_bench; do
  cc -O2 -Wall -o "$out/$p" "bench/$p.c"
done
dir=$(mktemp -d /dev/shm/godwit-bench-fds-XXXXXX)
trap 'rm -rf "$dir"' EXIT
groups=${FDS_GROUPS:-100}
conns=${FDS_CONNS:-100}
reps=${FDS_REPS:-3}
line=$("$out/fds_bench" "$GODWIT" "$out/fds_hold" "$dir" "$groups" "$conns" "$reps")
eval "$line"
awk -v n="$fds" -v c="$conns" -v d="$dump_s" -v f="$frozen_ms" -v r="$restore_s" -v cu="$create_us" \
    -v g="$groups" 'BEGIN {
  per_create = cu / (g * 9);
  printf "%6s %6s %8s %10s %9s %11s %11s %12s %8s\n", "fds", "tcp", "dump_s", "frozen_ms",
         "restore_s", "dump_us/fd", "rest_us/fd", "create_us/fd", "ratio"
  printf "%6d %6d %8.3f %10.1f %9.3f %11.1f %11.1f %12.2f %7.1fx\n", n, c, d, f, r,
         d * 1e6 / n, r * 1e6 / n, per_create, (d * 1e6 / n) / per_create }'
echo "(dump_s/restore_s: wall time of the whole godwit command, restore until the tree runs;"
echo " ratio = dump cost per fd / the process's own cost to create one of its fds)"
