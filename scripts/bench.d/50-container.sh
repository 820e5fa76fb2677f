#!/usr/bin/env bash
# Container checkpoint: frozen and total time of `godwit checkpoint --leave-running` and where the
# frozen time goes (freeze, namespaces + mounts + writable layer, process tree), for an idle
# busybox container and for one holding 1 GiB of data in its /dev/shm tmpfs; export file sizes
# with and without zstd. The tmpfs dump rate is put against `cat` reading the same file in the
# same run. (Container restore timing comes when the engine restores a tree into a new pid ns.)
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
N=${BENCH_CONTAINER_N:-5}
work=$(mktemp -d /tmp/godwit-bench-container.XXXXXX)
root=$work/state
cleanup() {
  for id in idle$$ big$$; do "$GODWIT" --root "$root" delete --force "$id" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT
"$GODWIT" mkrootfs "$work/rootfs" >/dev/null
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
field() { python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }

# Containers get no fds from this shell beyond stdio.
start() {  # id ip
  (exec 3>&- 4>&- 5>&- 6>&- 7>&- 8>&- 9>&- 251>&- 2>/dev/null
   "$GODWIT" --root "$root" run --rootfs "$work/rootfs" --name "$1" --detach --disk 64M \
     --ip "$2" -- sleep 100000 </dev/null >/dev/null)
}

measure() {  # id label
  local fr=() fz=() ns=() tr=() tot=()
  for ((i = 0; i < N; i++)); do
    local j
    j=$("$GODWIT" --root "$root" --json checkpoint "$1" --image-path "$work/img-$1" --leave-running)
    fr+=("$(field "$j" frozen_ms)") fz+=("$(field "$j" freeze_ms)") ns+=("$(field "$j" namespaces_ms)")
    tr+=("$(field "$j" tree_ms)") tot+=("$(field "$j" total_ms)")
  done
  printf '%s: checkpoint --leave-running, median of %d\n' "$2" "$N"
  printf '  frozen %8.2f ms = freeze %.2f + namespaces/mounts/layer %.2f + tree %.2f (+ rest)\n' \
    "$(median "${fr[@]}")" "$(median "${fz[@]}")" "$(median "${ns[@]}")" "$(median "${tr[@]}")"
  printf '  total  %8.2f ms\n' "$(median "${tot[@]}")"
}

start idle$$ 198.19.250.10/24
measure idle$$ "idle busybox container"
for comp in none zstd; do
  args=(); [ "$comp" = zstd ] && args=(--compress zstd)
  "$GODWIT" --root "$root" checkpoint idle$$ --image-path "$work/exp-$comp" --leave-running \
    --export "$work/idle-$comp.gwx" "${args[@]}" >/dev/null
  printf '  export size (%s): %d bytes\n' "$comp" "$(stat -c %s "$work/idle-$comp.gwx")"
done

start big$$ 198.19.251.10/24
pid=$("$GODWIT" --root "$root" state big$$ | python3 -c 'import json,sys; print(json.load(sys.stdin)["pid"])')
# 1 GiB in a tmpfs the container mounts: half random, half a hole (holes are not stored).
nsenter -t "$pid" -m mount -t tmpfs -o size=1100m data /tmp
head -c 512M /dev/urandom > "/proc/$pid/root/tmp/random"
truncate -s 512M "/proc/$pid/root/tmp/zero"
t0=$EPOCHREALTIME; cat "/proc/$pid/root/tmp/random" > /dev/null; t1=$EPOCHREALTIME
read_ms=$(echo "($t1 - $t0) * 1000" | bc -l)
N=3 measure big$$ "container with 1 GiB in a tmpfs (512 MiB random + 512 MiB hole)"
j=$("$GODWIT" --root "$root" --json checkpoint big$$ --image-path "$work/img-big" --leave-running)
ns=$(field "$j" namespaces_ms)
printf '  tmpfs dump of 512 MiB: %.1f ms vs cat of the same file %.1f ms: ratio %.2f\n' \
  "$ns" "$read_ms" "$(echo "$read_ms / $ns" | bc -l)"
for comp in none zstd; do
  args=(); [ "$comp" = zstd ] && args=(--compress zstd)
  "$GODWIT" --root "$root" checkpoint big$$ --image-path "$work/bexp-$comp" --leave-running \
    --export "$work/big-$comp.gwx" "${args[@]}" >/dev/null
  printf '  export size (%s): %d bytes\n' "$comp" "$(stat -c %s "$work/big-$comp.gwx")"
  rm -rf "$work/bexp-$comp" "$work/big-$comp.gwx"
done
