#!/usr/bin/env bash
# A container with its own user namespace (root inside = an unprivileged uid range on the host)
# runs a counter as root and a second one as user 1000; it is checkpointed, deleted and restored:
# the same uid/gid maps, the same ids inside and on the host, and both counters carry on.
set -euo pipefail
GODWIT=${GODWIT:-$(dirname "$0")/../../build/godwit}
work=$(mktemp -d /tmp/godwit-demo-userns.XXXXXX)
chmod 755 "$work"  # the container's root (host uid 100000) must reach its rootfs
root=$work/state
id=demo-un-$$
gw() { "$GODWIT" --root "$root" "$@"; }
cleanup() {
  gw delete --force "$id" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
step() { printf '\n-- %s\n' "$*"; }
ids() {
  local init
  init=$(gw state "$id" | sed -n 's/.*"pid": *\([0-9]*\).*/\1/p')
  echo "  host view: init pid $init, uid_map '$(tr -s ' ' </proc/"$init"/uid_map | sed 's/^ //')'"
  gw exec "$id" -- sh -c 'echo "  inside: root counter $(cat /dev/shm/count), app (uid $(stat -c %u /dev/shm/app/count)) counter $(cat /dev/shm/app/count)"'
  echo "  on the host the app counter runs as uid $(stat -c %u "/proc/$init/root/dev/shm/app/count")"
}
wait_count() {  # until both counters pass $1 (bounded)
  local n=0
  until [ "$(gw exec "$id" -- sh -c 'cat /dev/shm/count /dev/shm/app/count' 2>/dev/null | sort -n | head -1)" -ge "$1" ] 2>/dev/null || [ $n -ge 100 ]; do
    usleep 50000 2>/dev/null || sleep 0.05; n=$((n+1))
  done
}

"$GODWIT" mkrootfs "$work/rootfs" >/dev/null
printf 'root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n' >"$work/rootfs/etc/passwd"
printf 'root:x:0:\napp:x:1000:\n' >"$work/rootfs/etc/group"
step "godwit run --userns-base 100000 --detach (container root is host uid 100000; a counter as root, one as app, uid 1000)"
gw run --rootfs "$work/rootfs" --name "$id" --detach --userns-base 100000 --hostname userns \
  -- sh -c 'mkdir /dev/shm/app; chown 1000:1000 /dev/shm/app;
            su -s /bin/sh app -c "i=0; while true; do i=\$((i+1)); echo \$i > /dev/shm/app/count; usleep 50000; done" &
            i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; usleep 50000; done' \
  </dev/null >/dev/null 2>&1
wait_count 5
ids

step "godwit checkpoint $id --image-path DIR; the container is deleted"
gw checkpoint "$id" --image-path "$work/ckpt"

step "godwit restore $id --image-path DIR --detach"
gw restore "$id" --image-path "$work/ckpt" --detach
wait_count 10
ids
echo "(same maps, same ids, counters carried on)"

step "godwit delete --force $id"
gw delete --force "$id"
