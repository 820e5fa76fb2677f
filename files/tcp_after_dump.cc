// After a dump that left a tree's TCP connections in repair mode and locked, to be killed
// (dump::DumpOptions::keep_tcp_locked, a container checkpoint without --leave-running). The
// dumper is gone, so the images say what to do: files-netlock.img names the table, files.img the
// repaired sockets, fds-<pid>.img where each one is in the (still frozen) tree.
//
// LockOutside: the container's net namespace (and its lock) dies with the container, and so does
// the host end of its veth: the host would then route the peers' retransmissions elsewhere (its
// default route: a RST from some middlebox, seen here). The same table in the host's namespace
// drops them (output: a local peer, forward: a remote one) until the restore's Finalize removes
// it, once the connections are live again.
//
// ResumeTcp: the caller meant to kill the tree, then did not (a failure after the dump): repair
// off on each connection, then every lock table removed.
#include <fcntl.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <set>

#include "common/log.h"
#include "files/files.h"
#include "files/kind.h"
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

Result<void> LockOutside(const images::ImageSet& images, pid_t tree_pid) {
  if (!images.Has("files-netlock.img")) return Ok();
  struct stat theirs, ours;
  if (stat(StrFormat("/proc/%d/ns/net", tree_pid).c_str(), &theirs) < 0)
    return Errno("stat net namespace of pid %d", tree_pid);
  if (stat("/proc/self/ns/net", &ours) < 0) return Errno("stat /proc/self/ns/net");
  if (theirs.st_ino == ours.st_ino && theirs.st_dev == ours.st_dev) return Ok();
  img::NetLock nl;
  TRY(images.ReadOne("files-netlock.img", &nl));
  ASSIGN_OR_RETURN(auto socks, RepairedSockets(images));
  const std::string& t = nl.table();
  // The rules go into regular chains "in" (towards the tree's sockets) and "out" that the host's
  // output and forward hooks jump to.
  std::string script = StrFormat(
      "add table inet %s\n"
      "add chain inet %s in\n"
      "add chain inet %s out\n"
      "add chain inet %s host_out { type filter hook output priority -300; policy accept; }\n"
      "add chain inet %s host_fwd { type filter hook forward priority -300; policy accept; }\n"
      "add rule inet %s host_out jump in\n"
      "add rule inet %s host_fwd jump in\n",
      t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str(), t.c_str());
  int n = 0;
  for (const auto& [id, e] : socks) {
    struct sockaddr_storage src {}, dst {};
    if (e.inet().src().size() > sizeof(src) || e.inet().dst().size() > sizeof(dst))
      return MakeError(ErrorKind::kBadImage, 0, "files.img: bad socket address");
    memcpy(&src, e.inet().src().data(), e.inet().src().size());
    memcpy(&dst, e.inet().dst().data(), e.inet().dst().size());
    script += LockRules(t, src, dst);
    n++;
  }
  if (n == 0) return Ok();
  TRY_CTX(NftRun(0, script), "network lock outside the tree's namespace");
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
  std::map<ino_t, UniqueFd> netns;
  for (const auto& f : images.inventory().files()) {
    const std::string& n = f.name();
    if (n.rfind("fds-", 0) != 0 || n.size() < 9 || n.substr(n.size() - 4) != ".img") continue;
    img::ProcessFds pf;
    TRY(images.ReadOne(n, &pf));
    UniqueFd pidfd;
    for (const auto& fe : pf.fds()) {
      auto it = repaired.find(fe.file_id());
      if (it == repaired.end() || done.count(fe.file_id())) continue;
      if (!pidfd) pidfd.reset(static_cast<int>(syscall(SYS_pidfd_open, pf.pid(), 0)));
      UniqueFd s(pidfd ? static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), fe.fd(), 0)) : -1);
      if (!s) {
        keep_first(Errno("pid %d fd %d: take the socket back out of repair", pf.pid(), fe.fd()));
        continue;
      }
      done.insert(fe.file_id());
      int off = TCP_REPAIR_OFF, one = 1;
      if (setsockopt(s.get(), SOL_TCP, TCP_REPAIR, &off, sizeof(off)) < 0)
        keep_first(Errno("pid %d fd %d: TCP_REPAIR off", pf.pid(), fe.fd()));
      if (it->second) setsockopt(s.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
      UniqueFd ns(ioctl(s.get(), SIOCGSKNS));
      struct stat st;
      if (ns && fstat(ns.get(), &st) == 0 && !netns.count(st.st_ino))
        netns.emplace(st.st_ino, std::move(ns));
    }
  }
  netns.emplace(0, UniqueFd(open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC)));  // LockOutside's
  for (auto& [ino, ns] : netns) keep_first(NetUnlockIn(ns.get(), nl.table()));
  return res;
}

}  // namespace godwit::files
