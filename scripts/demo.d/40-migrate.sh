#!/usr/bin/env bash
# Live migration between two "hosts" on this machine: network namespaces a and b, each with its
# own godwitd (mutual TLS, certificates made here), its own --root and cgroup parent, and its own
# bridge, joined on one segment with a client namespace (198.18.0.0/15, no route out). A busybox
# container with a counter and a TCP echo server runs on host a; a client pings it every 1 ms over
# one TCP connection (`godwit probe`) while the container moves to b and back. The client's
# observed downtime and the migration reports are printed, and the report is plotted.
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
GODWITD=${GODWITD:-$(dirname "$GODWIT")/godwitd}
SCRIPTS=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/godwit-demo-migrate.XXXXXX)
net=gwm$(($$ % 10000))
id=demo-mig-$$
ip=198.18.1.$((10 + $$ % 200))
port=7070
pids=()
in_ns() { local ns=$1; shift; nsenter --net=/run/netns/"$net-$ns" "$@"; }
gwa() { in_ns a "$GODWIT" --root "$work/a" --cgroup-parent "godwit-$net-a" "$@"; }
gwb() { in_ns b "$GODWIT" --root "$work/b" --cgroup-parent "godwit-$net-b" "$@"; }
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  gwa delete --force "$id" 2>/dev/null || true
  gwb delete --force "$id" 2>/dev/null || true
  "$SCRIPTS/netns-hosts" down "$net" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n-- %s\n' "$*"; }

step "two hosts (netns $net-a 198.18.0.1, $net-b 198.18.0.2), a client ($net-c 198.18.0.100), one L2 segment"
"$SCRIPTS/netns-hosts" up "$net" >/dev/null
"$SCRIPTS/migration-certs" "$work/certs" host-a host-b >/dev/null
tls() { echo --tls-cert "$work/certs/$1.pem" --tls-key "$work/certs/$1.key" --tls-ca "$work/certs/ca.pem"; }
for h in a b; do
  addr=198.18.0.$([ $h = a ] && echo 1 || echo 2)
  in_ns $h "$GODWITD" --listen "$addr:$port" --root "$work/$h" --cgroup-parent "godwit-$net-$h" \
    $(tls host-$h) 2>"$work/godwitd-$h.log" &
  pids+=($!)
done
for h in a b; do
  n=0; until grep -q listening "$work/godwitd-$h.log" || [ $n -ge 100 ]; do sleep 0.05; n=$((n+1)); done
  sed -n 1p "$work/godwitd-$h.log"
done

step "a container on host a: a counter in tmpfs and an echo server on 8081 (bridged, IP $ip)"
"$GODWIT" mkrootfs "$work/rootfs" >/dev/null
gwa run --rootfs "$work/rootfs" --name "$id" --detach --hostname mover --bridge br0 \
  --ip "$ip/15" --memory 256M \
  -- sh -c 'nc -ll -p 8081 -e cat & i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; usleep 100000; done' \
  </dev/null >/dev/null 2>&1
until [ "$(gwa exec "$id" -- cat /dev/shm/count 2>/dev/null || echo 0)" -ge 3 ]; do sleep 0.1; done
echo "counter on host a: $(gwa exec "$id" -- cat /dev/shm/count)"

step "the client connects to $ip:8081 and sends a numbered message every 1 ms (godwit probe)"
nsenter --net=/run/netns/"$net-c" "$GODWIT" probe --tcp "$ip:8081" --interval 1ms --ready-file "$work/probe.ready" --json \
  >"$work/probe.json" 2>"$work/probe.err" &
probe=$!
pids+=($probe)
n=0; until [ -e "$work/probe.ready" ] || [ $n -ge 100 ]; do sleep 0.05; n=$((n+1)); done

step "godwit migrate $id --to 198.18.0.2:$port (host a -> host b)"
gwa migrate "$id" --to "198.18.0.2:$port" $(tls host-a) --report "$work/ab.json"
echo "counter on host b: $(gwb exec "$id" -- cat /dev/shm/count)   (host a has it: $(gwa state "$id" >/dev/null 2>&1 && echo yes || echo no))"

step "and back: godwit migrate $id --to 198.18.0.1:$port (host b -> host a)"
gwb migrate "$id" --to "198.18.0.1:$port" $(tls host-b) --report "$work/ba.json"
echo "counter on host a: $(gwa exec "$id" -- cat /dev/shm/count)"

step "the client's view: one TCP connection all along, every message echoed intact"
kill -INT "$probe"
wait "$probe" || { echo "probe failed:"; cat "$work/probe.err"; exit 1; }
pids=("${pids[@]/$probe}")
python3 - "$work/probe.json" <<'PY'
import json, sys
p = json.load(open(sys.argv[1]))["tcp"]
print("client: %d sent, %d echoed, connection %s, max gap %.1f ms (p99 %.2f ms), TCP retransmissions %d" % (
    p["sent"], p["echoed"], "BROKEN" if p["broken"] else "never broken", p["max_gap_ms"],
    p["gap_ms"]["p99"], p["tcp_info"]["total_retrans"]))
PY
"$SCRIPTS/plot-migration" "$work/ab.json" "${DEMO_OUT:-/tmp}/godwit-migration.png" "$work/probe.json"
