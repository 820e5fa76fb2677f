#!/usr/bin/env bash
# Runs the image fuzz target briefly from a fresh seed corpus: `run_fuzz.sh FUZZER SEEDS [SECONDS]`.
# Exits non-zero on any crash, sanitizer report or leak (libFuzzer's own exit code).
set -euo pipefail
fuzzer=$1 seeds=$2 secs=${3:-20}
dict=$(cd "$(dirname "$0")" && pwd)/images.dict
work=$(mktemp -d /tmp/godwit-images-fuzz-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir "$work/corpus"
"$seeds" "$work/corpus"
cd "$work"  # crash-* files land here; printed below if any
if ! "$fuzzer" -dict="$dict" -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
     "$work/corpus" 2>"$work/log"; then
  tail -n 60 "$work/log"
  for f in "$work"/crash-* "$work"/leak-* "$work"/oom-* "$work"/timeout-*; do
    [ -e "$f" ] && { echo "reproducer: $f"; xxd "$f" | head -20; }
  done
  exit 1
fi
grep -E "stat::number_of_executed_units|cov:" "$work/log" | tail -n 3
