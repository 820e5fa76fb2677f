#!/usr/bin/env bash
# Container start: create+start+wait+delete of a `/bin/true` busybox container, godwit vs runc,
# alternating in one run, the same config.json (namespaces pid, net, ipc, uts, mount, cgroup;
# the same mounts, masked and read-only paths) for both. Prints the medians and the ratio.
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
RUNC=${RUNC:-$(command -v runc || echo /usr/sbin/runc)}
N=${BENCH_RUNTIME_N:-40}
work=$(mktemp -d /tmp/godwit-bench-runtime.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$GODWIT" mkrootfs "$work/bundle/rootfs"
# A config both runtimes accept: `godwit run --rootfs` writes one; take it and point it at the
# bundle's rootfs.
"$GODWIT" --root "$work/gw" run --rootfs "$work/bundle/rootfs" --name cfg --detach -- /bin/true >/dev/null
cp "$work/gw/cfg/config.json" "$work/bundle/config.json"
"$GODWIT" --root "$work/gw" delete --force cfg
sed -i "s|\"path\": \".*rootfs\"|\"path\": \"rootfs\"|" "$work/bundle/config.json"

have_runc=1
if ! [ -x "$RUNC" ] || ! "$RUNC" --root "$work/runc" run -b "$work/bundle" probe$$ >/dev/null 2>&1; then
  echo "runc not usable here: measuring godwit only"
  have_runc=0
fi

# $EPOCHREALTIME (bash 5): microsecond wall clock without forking a timer.
ms() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", (b - a) * 1000 }'; }
gw=() rc=()
for ((i = 0; i < N; i++)); do
  t0=$EPOCHREALTIME
  "$GODWIT" --root "$work/gw" run -b "$work/bundle" gw$$-$i >/dev/null
  t1=$EPOCHREALTIME
  gw+=("$(ms "$t0" "$t1")")
  if ((have_runc)); then
    t0=$EPOCHREALTIME
    "$RUNC" --root "$work/runc" run -b "$work/bundle" rc$$-$i >/dev/null
    t1=$EPOCHREALTIME
    rc+=("$(ms "$t0" "$t1")")
  fi
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {m=(NR%2)?a[(NR+1)/2]:(a[NR/2]+a[NR/2+1])/2; printf "%.2f", m}'; }
minimum() { printf '%s\n' "$@" | sort -g | head -1; }
mg=$(median "${gw[@]}")
printf 'container create+start+wait+delete (/bin/true), %d runs each, alternating\n' "$N"
printf '  godwit median: %8.2f ms   (best %.2f ms)\n' "$mg" "$(minimum "${gw[@]}")"
if ((have_runc)); then
  mr=$(median "${rc[@]}")
  printf '  runc   median: %8.2f ms   (best %.2f ms)\n' "$mr" "$(minimum "${rc[@]}")"
  awk -v r="$mr" -v g="$mg" -v rb="$(minimum "${rc[@]}")" -v gb="$(minimum "${gw[@]}")" \
    'BEGIN { printf "  ratio runc/godwit: %.1fx of medians, %.1fx of bests (target >= 3x)\n", r / g, rb / gb }'
  printf '  (load average at the end of the run: %s on %s CPUs)\n' "$(cut -d' ' -f1 /proc/loadavg)" \
    "$(nproc)"
fi
# For information: the same with a veth pair, an address and a default route (libnl), which the
# runc runs above do not set up.
mkdir -p "$work/bundle-net"
ln -s ../bundle/rootfs "$work/bundle-net/rootfs"
python3 -c 'import json,sys; c=json.load(sys.stdin); c.setdefault("annotations",{})["org.godwit.net.ip"]="198.19.254.10/24"; json.dump(c,sys.stdout)' \
  <"$work/bundle/config.json" >"$work/bundle-net/config.json" 2>/dev/null && {
  net=()
  for ((i = 0; i < N / 2; i++)); do
    t0=$EPOCHREALTIME
    "$GODWIT" --root "$work/gw" run -b "$work/bundle-net" gwnet$$-$i >/dev/null
    t1=$EPOCHREALTIME
    net+=("$(ms "$t0" "$t1")")
  done
  printf '  godwit with veth + address + route: %.2f ms median\n' "$(median "${net[@]}")"
}
# Where godwit's time goes (one run, debug log of the create path and of run's wait/delete).
GODWIT_LOG=debug "$GODWIT" --root "$work/gw" run -b "$work/bundle" phases$$ 2>&1 >/dev/null |
  sed -n 's/.*: \(create\|run\) [^:]*: /  godwit phases: /p' || true
