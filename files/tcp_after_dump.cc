// After a dump that left a tree's TCP connections in repair mode and locked, to be killed
// (dump::DumpOptions::keep_tcp_locked, a container checkpoint without --leave-running). The
// dumper is gone, so the images say what to do: files-netlock.img names the lock, files.img the
// repaired sockets, fds-<pid>.img where each one is in the (still frozen) tree.
//
// LockOutside: the container's net namespace (and its lock) dies with the container, and so does
// the host end of its veth: the host would then route the peers' retransmissions elsewhere (its
// default route: a RST from some middlebox, seen here). The same table in the host's namespace
// drops them (output: a local peer, forward: a remote one) until the restore's Finalize removes
// it, once the connections are live again. LockOutsideOf is shared with FdDumper::LockOutside,
// which does the same from the dumper's own record with the dump's own lock.
//
// ResumeTcp: the caller meant to kill the tree, then did not (a failure after the dump): repair
// off on each connection, then the lock released in every namespace that holds it.
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>

#include "common/log.h"
#include "common/pidfd.h"
#include "files/files.h"
#include "files/kind.h"
#include "files/netlock.h"
#include "proto/fd.pb.h"

namespace godwit::files {

namespace {

Result<std::map<uint64_t, img::FileEntry>> RepairedSockets(const images::ImageSet& images) {
  std::map<uint64_t, img::FileEntry> out;
  if (!images.Has("files.img")) return out;
  ASSIGN_OR_RETURN(images::ImageReader rd, images.OpenImage("files.img"));
  for (;;) {
    img::FileEntry e;
    ASSIGN_OR_RETURN(bool more, rd.Next(&e));
    if (!more) break;
    if (e.kind() == img::FILE_KIND_INET && e.inet().has_repair()) out[e.id()] = std::move(e);
  }
  return out;
}

}  // namespace

Result<bool> LockOutsideOf(NetLock& lock, const std::vector<const img::FileEntry*>& socks,
                           pid_t tree_pid) {
  if (socks.empty()) return false;
  struct stat theirs, ours;
  if (stat(StrFormat("/proc/%d/ns/net", tree_pid).c_str(), &theirs) < 0)
    return Errno("stat net namespace of pid %d", tree_pid);
  if (stat("/proc/self/ns/net", &ours) < 0) return Errno("stat /proc/self/ns/net");
  if (theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev) return false;
  std::vector<TcpConn> conns;
  for (const img::FileEntry* e : socks) {
    ASSIGN_OR_RETURN(TcpConn c, ConnOf(*e));
    conns.push_back(c);
  }
  TRY_CTX(lock.Lock(-1, conns, NetLock::Where::kRouted),
          "network lock outside the tree's namespace");
  return true;
}

Result<void> LockOutside(const images::ImageSet& images, pid_t tree_pid) {
  if (!images.Has("files-netlock.img")) return Ok();
  img::NetLock nl;
  TRY(images.ReadOne("files-netlock.img", &nl));
  ASSIGN_OR_RETURN(auto socks, RepairedSockets(images));
  std::vector<const img::FileEntry*> entries;
  for (const auto& [id, e] : socks) entries.push_back(&e);
  // The same lock (by name), so that the restore's Finalize, which releases it by that name in
  // our namespace too, removes this one.
  std::unique_ptr<NetLock> lock = OpenNetLock(nl.table());
  TRY(LockOutsideOf(*lock, entries, tree_pid));
  return Ok();
}

Result<void> ResumeTcp(const images::ImageSet& images) {
  if (!images.Has("files-netlock.img")) return Ok();  // no connection was locked
  img::NetLock nl;
  TRY(images.ReadOne("files-netlock.img", &nl));
  std::map<uint64_t, bool> repaired;  // file id -> SO_REUSEADDR to give back
  {
    ASSIGN_OR_RETURN(auto socks, RepairedSockets(images));
    for (const auto& [id, e] : socks) repaired[id] = e.inet().opts().reuseaddr();
  }
  Result<void> res;
  auto keep_first = [&res](Result<void> r) {
    if (!r.ok() && res.ok()) res = std::move(r);
  };
  std::set<uint64_t> done;
  std::unique_ptr<NetLock> lock = OpenNetLock(nl.table());
  TRY(lock->Adopt(-1));  // LockOutside's
  ASSIGN_OR_RETURN(auto tables, ReadProcessFds(images));
  for (const auto& [name, pf] : tables) {
    for (const auto& fe : pf.fds()) {
      auto it = repaired.find(fe.file_id());
      if (it == repaired.end() || done.count(fe.file_id())) continue;
      auto taken = pidfd::TakeFd(pf.pid(), fe.fd());
      if (!taken.ok()) {
        keep_first(std::move(taken.error().wrap("take the socket back out of repair")));
        continue;
      }
      UniqueFd s = std::move(*taken);
      done.insert(fe.file_id());
      int off = TCP_REPAIR_OFF, one = 1;
      if (setsockopt(s.get(), SOL_TCP, TCP_REPAIR, &off, sizeof(off)) < 0)
        keep_first(Errno("pid %d fd %d: TCP_REPAIR off", pf.pid(), fe.fd()));
      if (it->second) setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      UniqueFd ns(ioctl(s.get(), SIOCGSKNS));
      if (ns) keep_first(lock->Adopt(ns.get()));
    }
  }
  keep_first(lock->Unlock());
  return res;
}

}  // namespace godwit::files
