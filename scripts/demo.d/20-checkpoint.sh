#!/usr/bin/env bash
# Checkpoint a running process (a python3 counter writing to a log), kill it, restore it with the
# same pid, and watch it carry on counting where it stopped.
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
work=$(mktemp -d /tmp/godwit-demo-cr.XXXXXX)
trap 'rm -rf "$work"' EXIT
log=$work/counter.log
# A clean fd table for the demo process: only stdio (what a checkpoint should show).
(
  for f in /proc/self/fd/*; do
    n=${f##*/}
    if [ "$n" -gt 2 ] 2>/dev/null; then eval "exec $n>&-" 2>/dev/null || true; fi
  done
  exec python3 -u -c '
import itertools, time
for i in itertools.count():
    print(i, flush=True)
    time.sleep(0.05)' >"$log" 2>/dev/null </dev/null
) &
pid=$!
# Until the counter has printed 10 lines (the log appears only once the subshell redirects).
while [ ! -s "$log" ] || [ "$(wc -l <"$log")" -lt 10 ]; do sleep 0.05; done
echo "counter running as pid $pid, at $(tail -1 "$log")"
"$GODWIT" check | tail -1 || true
"$GODWIT" dump --pid "$pid" --images-dir "$work/img"
{ wait "$pid"; } 2>/dev/null || true
echo "original killed at $(tail -1 "$log"); image directory:"
"$GODWIT" inspect "$work/img" | head -12
"$GODWIT" restore --images-dir "$work/img" --pid-file "$work/pid" &
coord=$!
while [ ! -s "$work/pid" ]; do sleep 0.05; done
before=$(tail -1 "$log")
sleep 0.5
echo "restored pid $(cat "$work/pid"): counted from $before to $(tail -1 "$log") since"
kill "$(cat "$work/pid")"
wait "$coord" 2>/dev/null || true
