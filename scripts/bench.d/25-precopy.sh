#!/usr/bin/env bash
# Pre-copied checkpoints (issue 13): a process holding PC_MIB (2048) MiB that rewrites 1% of its
# pages every 100 ms (tests/helpers/mig_dirty: incompressible, self-describing pages) is dumped
# with `godwit dump --pre-copy` (rounds while it runs, until one is small or they stop
# shrinking) into /dev/shm, killed by the dump, restored, and checked word for word by itself
# (SIGUSR1: every page against its generation table). PC_REPS (5) times; medians and worst of
# the frozen time, the final delta, the rounds, dump total and restore until running, against
# the target: frozen <= 50 ms for this workload at 2 GiB. The machine is shared: note the load.
set -euo pipefail
self=$(readlink -f "$0")
cd "$(dirname "$self")/../.."
GODWIT=${GODWIT:-$PWD/build/godwit}
if [ -z "${GODWIT_BENCH_REAPED:-}" ]; then  # the restored process is reaped by the subreaper
  GODWIT_BENCH_REAPED=1 exec "$GODWIT" subreaper -- bash "$self" "$@"
fi
MIB=${PC_MIB:-2048}
REPS=${PC_REPS:-5}
work=$(mktemp -d /dev/shm/godwit-bench-precopy.XXXXXX)
pid=
cleanup() {
  if [ -n "$pid" ]; then kill -9 "$pid" 2>/dev/null || true; { wait "$pid"; } 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
cc -O2 -static -o "$work/mig_dirty" tests/helpers/mig_dirty.c
med() { sort -n | awk '{a[NR]=$1} END {if (NR==0) {print "nan"; exit}; print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
worst() { sort -n | tail -1; }
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
: >"$work/rows"
for i in $(seq 1 "$REPS"); do
  rm -rf "$work/w" "$work/img"
  mkdir -p "$work/w"
  "$work/mig_dirty" "$MIB" 1 100 "$work/w" &
  pid=$!
  k=0; until [ -e "$work/w/ready" ] || [ $k -ge 1200 ]; do sleep 0.05; k=$((k+1)); done
  sleep 1  # a few bursts of writes before the first round
  # The dump kills it: the shell's line about a job killed (printed once it notices) goes to
  # /dev/null, the dump's own errors to the real stderr (fd 3).
  exec 3>&2 2>/dev/null
  "$GODWIT" dump --pid "$pid" --images-dir "$work/img" --pre-copy --json >"$work/dump.json" 2>&3
  wait "$pid" || true
  exec 2>&3 3>&-
  t0=$(date +%s%N)
  "$GODWIT" restore --images-dir "$work/img" --detach >/dev/null
  t1=$(date +%s%N)
  rm -f "$work/w/verify"
  kill -USR1 "$pid"
  k=0; until [ -s "$work/w/verify" ] || [ $k -ge 1200 ]; do sleep 0.05; k=$((k+1)); done
  verify=$(cat "$work/w/verify" 2>/dev/null || echo "no answer")
  kill -9 "$pid" 2>/dev/null || true
  pid=
  case "$verify" in OK*) ;; *) echo "run $i: the restored process found its memory wrong: $verify"; exit 1 ;; esac
  python3 - "$work/dump.json" "$(( (t1 - t0) / 1000 ))" >>"$work/rows" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print("%f %f %f %d %f" % (j["frozen_ms"], j["bytes"] / 2**20, j["total_ms"], j["pre_dump_rounds"],
                          int(sys.argv[2]) / 1000))
PY
done
col() { cut -d' ' -f"$1" "$work/rows"; }
printf "%s MiB rewriting 1%%/100 ms, dump --pre-copy (kill mode), %s runs, every restore checked OK:\n" "$MIB" "$REPS"
printf "  frozen median %.1f ms, worst %.1f ms (target <= 50); final delta median %.1f MiB, worst %.1f; rounds median %s\n" \
  "$(col 1 | med)" "$(col 1 | worst)" "$(col 2 | med)" "$(col 2 | worst)" "$(col 4 | med)"
printf "  dump total median %.2f s; restore until running median %.1f ms\n" \
  "$(col 3 | med | awk '{print $1 / 1000}')" "$(col 5 | med)"
echo "load: $(cut -d' ' -f1-3 /proc/loadavg)"
