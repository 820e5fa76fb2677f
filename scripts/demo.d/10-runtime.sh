#!/usr/bin/env bash
# The runtime: a busybox container with its own hostname, IP, firewall and limits; shown from
# inside (exec) and outside (ping, TCP, cgroup files), then removed without a trace.
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
work=$(mktemp -d /tmp/godwit-demo-runtime.XXXXXX)
root=$work/state
id=demo-$$
# A subnet of 198.18.0.0/15 (benchmark space, never routed off this machine), by pid.
net=198.19.$((200 + $$ % 50)).
ip=${net}10
gw() { "$GODWIT" --root "$root" "$@"; }
cleanup() {
  gw delete --force "$id" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n-- %s\n' "$*"; }

step "build a busybox rootfs: godwit mkrootfs $work/rootfs"
"$GODWIT" mkrootfs "$work/rootfs"
mkdir -p "$work/rootfs/srv"
cat >"$work/rootfs/srv/hello" <<'EOS'
#!/bin/sh
echo "hello from $(hostname), pid $$ in the container"
EOS
chmod +x "$work/rootfs/srv/hello"

step "godwit run --detach --hostname web --ip $ip/24 --allow-port 8080 --memory 128M --cpus 0.5 --pids 64 --disk 32M"
gw run --rootfs "$work/rootfs" --name "$id" --detach --hostname web --ip "$ip/24" \
  --allow-port 8080 --memory 128M --cpus 0.5 --pids 64 --disk 32M \
  -- sh -c 'nc -ll -p 8080 -e /srv/hello & nc -ll -p 9090 -e /srv/hello & exec sleep 3600'

step "a second invocation finds it: godwit list / state / ps"
gw list
gw state "$id"
gw ps "$id"

step "inside (godwit exec): hostname, pid 1, network, writable layer with a 32M quota"
gw exec "$id" -- sh -c 'echo "hostname: $(hostname)"; echo "processes:"; ps; ip -4 addr show eth0; ip route; df -h /'
gw exec "$id" -- sh -c 'echo "writing 64M:"; dd if=/dev/zero of=/fill bs=1M count=64 2>&1 | grep -i "space"; rm -f /fill' || true
echo "(the rootfs on the host is untouched: $(ls "$work/rootfs" | tr '\n' ' '))"

step "outside: ping and TCP from the host"
busybox ping -c 1 -W 2 "$ip" | sed -n '2p'
echo "port 8080 (allowed): $(busybox nc -w 2 "$ip" 8080 </dev/null)"
if out=$(timeout 2 busybox nc -w 1 "$ip" 9090 </dev/null 2>&1) && [ -n "$out" ]; then
  echo "port 9090: unexpectedly open: $out"; exit 1
else
  echo "port 9090 (listening inside, not allowed): dropped by the container's nftables firewall"
fi

step "limits, as the kernel holds them (cgroups on this machine's layout)"
state=$root/$id/state.json
python3 - "$state" <<'EOP' 2>/dev/null || grep -A12 '"paths"' "$state"
import json, sys, os
s = json.load(open(sys.argv[1]))
p = s["cgroup"]["paths"]
print("layout:", s["cgroup"]["layout"])
def show(ctrl, *files):
    for f in files:
        path = os.path.join(p.get(ctrl, ""), f)
        if os.path.exists(path):
            print(f"  {ctrl}/{f}: {open(path).read().strip()}")
show("memory", "memory.limit_in_bytes", "memory.max")
show("cpu", "cpu.cfs_quota_us", "cpu.cfs_period_us", "cpu.max")
show("pids", "pids.max")
show("unified", "memory.max", "cpu.max", "pids.max")
EOP

step "kill + delete: no cgroup, veth, mount or state left"
veth=$(sed -n 's/.*"hostVeth": "\([^"]*\)".*/\1/p' "$state")
cgdirs=$(sed -n '/"paths"/,/}/s/.*: "\(\/sys[^"]*\)".*/\1/p' "$state")
echo "host veth $veth, cgroups:" $cgdirs
gw kill "$id" KILL
gw delete --force "$id"
[ -d "$root/$id" ] && { echo "state dir left"; exit 1; }
ip link show "$veth" >/dev/null 2>&1 && { echo "veth $veth left"; exit 1; }
for d in $cgdirs; do [ -d "$d" ] && { echo "cgroup $d left"; exit 1; }; done
grep -q "$work" /proc/self/mountinfo && { echo "mount left"; exit 1; }
echo "clean: $(gw list -q | wc -l) containers under $root, veth and cgroups gone"
