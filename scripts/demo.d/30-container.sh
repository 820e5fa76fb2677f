#!/usr/bin/env bash
# Container checkpoint/restore: a busybox container with a counter (in a tmpfs) and a small TCP
# server is checkpointed to a directory (frozen time printed) and deleted, restored with the
# same pids (its init is pid 1 again), the counter carries on and the server still answers;
# then the same through one export file. All along, a client outside the container (in the host
# netns) keeps one TCP connection to the container's echo server and streams numbered lines: it
# is never broken and every line comes back. Last, a --leave-running checkpoint is restored as a
# copy under another id and IP next to the running original (same pids inside, other host pids).
# Everything is removed at exit.
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
work=$(mktemp -d /tmp/godwit-demo-container.XXXXXX)
root=$work/state
id=demo-cr-$$
# A subnet of 198.18.0.0/15 (benchmark space, never routed off this machine), by pid.
ip=198.18.$((200 + $$ % 50)).10
copy_ip=198.18.$((200 + $$ % 50)).11
gw() { "$GODWIT" --root "$root" "$@"; }
client=
cleanup() {
  [ -z "$client" ] || kill "$client" 2>/dev/null || true
  gw delete --force "$id" 2>/dev/null || true
  gw delete --force "$id-copy" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n-- %s\n' "$*"; }
ask() { echo | busybox nc -w 2 "$ip" 8080 || echo "(no answer)"; }
count() { gw exec "$id" -- cat /dev/shm/count; }

"$GODWIT" mkrootfs "$work/rootfs" >/dev/null
mkdir -p "$work/rootfs/srv"
cat >"$work/rootfs/srv/count" <<'EOS'
#!/bin/sh
echo "counter $(cat /dev/shm/count) in $(hostname)"
EOS
chmod +x "$work/rootfs/srv/count"

step "godwit run --detach --hostname counter --ip $ip/24 --memory 64M (a counter and a server on 8080)"
# Its stdio is /dev/null: a checkpointed container takes along nothing of this terminal.
gw run --rootfs "$work/rootfs" --name "$id" --detach --hostname counter --ip "$ip/24" \
  --allow-port 8080,8081 --memory 64M \
  -- sh -c 'nc -ll -p 8080 -e /srv/count & nc -ll -p 8081 -e cat & i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; usleep 100000; done' \
  </dev/null >/dev/null 2>&1
gw state "$id" | grep -E '"(pid|status)"'
until [ "$(count 2>/dev/null || echo 0)" -ge 5 ]; do usleep 100000 2>/dev/null || sleep 0.1; done
echo "server says: $(ask)"

step "an outside client (busybox nc in the host netns) connects to $ip:8081 and streams a line every 20 ms"
mkfifo "$work/to"
busybox nc "$ip" 8081 <"$work/to" >"$work/echoed" &
client=$!
exec 3>"$work/to"
# The writer holds still while "pause" exists (it says so with "paused") so a check sees all.
(i=0; while [ ! -e "$work/stop" ]; do
  if [ -e "$work/pause" ]; then touch "$work/paused"; sleep 0.02; continue; fi
  rm -f "$work/paused"; i=$((i+1)); echo "line $i" >>"$work/sent"; echo "line $i" >&3; sleep 0.02
done) &
writer=$!
n=0; until [ -s "$work/echoed" ] || [ $n -ge 100 ]; do sleep 0.05; n=$((n+1)); done
# Every line sent came back, in order, on the same connection (bounded wait: while the container
# was down, the client's retransmission timer backed off).
verify() {
  local n=0
  rm -f "$work/paused"; touch "$work/pause"
  until [ -e "$work/paused" ] || [ $n -ge 100 ]; do sleep 0.02; n=$((n+1)); done
  n=0
  until [ "$(wc -l <"$work/echoed")" -ge "$(wc -l <"$work/sent")" ] || [ $n -ge 300 ]; do
    sleep 0.1; n=$((n+1))
  done
  rm -f "$work/pause"
  if kill -0 "$client" 2>/dev/null && cmp -s "$work/sent" "$work/echoed"; then
    echo "client: $(wc -l <"$work/sent") lines ($(wc -c <"$work/sent") bytes) streamed, all echoed in order; connection never broken (same nc, no reconnect)"
  else
    echo "client: connection BROKEN or data lost ($(wc -l <"$work/sent") lines sent, $(wc -l <"$work/echoed") echoed)"
    return 1
  fi
}

step "godwit checkpoint $id --image-path DIR (freeze, namespaces, process tree; the container is deleted)"
gw checkpoint "$id" --image-path "$work/ckpt"
gw state "$id" 2>&1 | head -1 || true

step "godwit restore $id --image-path DIR --detach"
gw restore "$id" --image-path "$work/ckpt" --detach
gw state "$id" | grep -E '"(pid|status)"'
gw exec "$id" -- sh -c 'echo "inside: init is $(cat /proc/1/comm), pid 1; hostname $(hostname)"; ps'
before=$(count)
sleep 0.5
echo "counter: $before, half a second later $(count) (it carried on from the checkpoint)"
echo "server says: $(ask)"
verify

step "godwit checkpoint --export FILE (one file), godwit restore --import FILE"
gw checkpoint "$id" --image-path "$work/ckpt2" --compress zstd --export "$work/$id.godwit"
ls -l "$work/$id.godwit"
gw restore "$id" --import "$work/$id.godwit" --detach
echo "counter: $(count); server says: $(ask)"
verify
touch "$work/stop"
wait "$writer"
exec 3>&-

step "godwit checkpoint --leave-running, then godwit restore $id-copy --ip $copy_ip (a copy next to the running original)"
gw checkpoint "$id" --image-path "$work/ckpt3" --leave-running >/dev/null
gw restore "$id-copy" --image-path "$work/ckpt3" --ip "$copy_ip/24" --detach
hostpid() { gw state "$1" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p'; }
echo "original: host pid $(hostpid "$id"), counter $(count), server says: $(ask)"
echo "copy:     host pid $(hostpid "$id-copy"), counter $(gw exec "$id-copy" -- cat /dev/shm/count), server says: $(echo | busybox nc -w 2 "$copy_ip" 8080 || echo "(no answer)")"
inside() { gw exec "$1" -- sh -c 'for p in 1 2 3; do printf "%s=%s " $p "$(cat /proc/$p/cmdline | tr "\0" " " | cut -c1-20)"; done'; }
echo "inside the original: $(inside "$id")"
echo "inside the copy:     $(inside "$id-copy")"
gw delete --force "$id-copy"

step "godwit delete --force $id"
gw delete --force "$id"
