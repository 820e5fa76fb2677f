// FdRestorer: loads files.img and fds-*.img, opens every description in the coordinator
// (Prepare), installs each process's fd table in the restored process (Install), and finishes
// what must wait until the whole tree exists (Finalize).
//
// TCP, in CRIU's order (cr-restore.c: repair off in the restorer once every task is restored, then
// the network unlock): Finalize turns repair off on every restored connection, then releases the
// dump's network lock (netlock.h) in each net namespace the connections live in. A container's
// files are prepared by its root task inside the container's namespaces, not by the coordinator:
// Finalize then takes its copies of the sockets from the restored (ptrace-stopped) tree, by the fd
// numbers of the images, and finds each socket's namespace with SIOCGSKNS.
#include <fcntl.h>
#include <linux/close_range.h>
#include <linux/sockios.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "common/log.h"
#include "common/netns.h"
#include "common/pidfd.h"
#include "files/kind.h"
#include "proto/fd.pb.h"

namespace godwit::files {

class FdRestorerImpl : public FdRestorer {
 public:
  FdRestorerImpl(const FdRestoreOptions& opts) : opts_(opts) {}
  ~FdRestorerImpl() override {
    CloseAll();
    if (!finalized_) PutBackMovedAside();
    DropLockOfFailedRestore();
  }

  Result<void> LoadImages(const images::ImageSet& images);
  Result<void> Prepare(int base_fd) override;
  Result<void> Install(pid_t old_pid) override;
  void ClosePrepared() override;
  Result<void> Finalize() override;
  void SetHostPids(std::map<pid_t, pid_t> m) override { host_pids_ = std::move(m); }
  int MaxFd() const override { return max_fd_; }
  std::set<int> UsedFds() const override;
  int FileCount() const override { return static_cast<int>(ctx_ ? ctx_->entries_.size() : 0); }
  void KeepThroughInstall(std::vector<int> fds) override { keep_ = std::move(fds); }
  Result<void> LockNetwork(pid_t netns_pid) override;
  std::vector<ThreadPidfd> ThreadPidfds(pid_t pid) const override {
    std::vector<ThreadPidfd> out;
    auto p = procs_.find(pid);
    if (p == procs_.end() || !ctx_) return out;
    for (const auto& fe : p->second.fds()) {
      const img::FileEntry* e = ctx_->Entry(fe.file_id());
      if (!e || e->kind() != img::FILE_KIND_PIDFD || e->pidfd().tgid() <= 0) continue;
      const img::PidFile& f = e->pidfd();
      out.push_back({fe.fd(), f.ns_pid() > 0 ? f.ns_pid() : f.pid(), PidfdOpenFlags(*e),
                     fe.cloexec()});
    }
    return out;
  }
  int RemovedDirFd(pid_t pid, uint64_t dev, uint64_t ino) const override {
    auto p = procs_.find(pid);
    if (p == procs_.end() || !ctx_) return -1;
    for (const auto& fe : p->second.fds()) {
      const img::FileEntry* e = ctx_->Entry(fe.file_id());
      if (e && e->kind() == img::FILE_KIND_REG && e->reg().deleted() && S_ISDIR(e->reg().mode()) &&
          e->reg().dev() == dev && e->reg().ino() == ino)
        return fe.fd();
    }
    return -1;
  }

 private:
  Result<UniqueFd> TakeFromTree(uint64_t file_id);

  // A restore that failed before Finalize: its tree is gone (TreeFork killed it before we go),
  // so nothing will ever unlock the dump's lock, which would drop the connections' packets
  // forever (issue 11: 36 godwit_lock_* tables after one run of CRIU's suite). Released here,
  // in our namespace and where LockNetwork locked, unless the caller unlocks (keep_netlock).
  void DropLockOfFailedRestore() {
    if (!netlock_ || finalized_ || opts_.keep_netlock) return;
    (void)netlock_->Adopt(-1);
    auto r = netlock_->Unlock();
    if (!r.ok())
      LOG_WARN("failed restore: network lock %s not released: %s", netlock_->name().c_str(),
               r.error().to_string().c_str());
  }

  // Files moved aside from the paths of unlinked unix socket names (kind_unix.cc BindTaken):
  // back at their paths, over the sockets' files (in Finalize, or when a restore failed).
  void PutBackMovedAside() {
    if (!ctx_) return;
    for (auto it = ctx_->moved_aside.rbegin(); it != ctx_->moved_aside.rend(); ++it)
      if (rename(it->first.c_str(), it->second.c_str()) < 0)
        LOG_WARN("put %s back at %s: %s", it->first.c_str(), it->second.c_str(), strerror(errno));
    ctx_->moved_aside.clear();
  }

  void CloseAll() {
    if (!ctx_) return;
    ClosePrepared();
    for (auto& [id, fd] : ctx_->finalize_fds_) close(fd);
    ctx_->finalize_fds_.clear();
  }

  FdRestoreOptions opts_;
  std::unique_ptr<FdRestoreContext> ctx_;
  std::map<pid_t, img::ProcessFds> procs_;
  // The dump's lock (files-netlock.img), if it took one; else, behind a migration, the quiet one
  // (kQuietLockName: LockNetwork).
  std::unique_ptr<NetLock> netlock_;
  std::map<pid_t, pid_t> host_pids_;  // dumped pid -> host pid, where they differ
  int max_fd_ = 2;
  bool closed_ = false;
  bool finalized_ = false;  // Finalize ran (it releases the lock itself)
  std::vector<int> keep_;  // the engine's fds, left open by Install
};

std::set<int> FdRestorerImpl::UsedFds() const {
  std::set<int> used;
  for (const auto& [pid, pf] : procs_)
    for (const auto& fe : pf.fds()) used.insert(fe.fd());
  if (ctx_)
    for (const auto& [id, e] : ctx_->entries_)
      if (e.kind() == img::FILE_KIND_EPOLL)
        for (const auto& t : e.epoll().targets()) used.insert(t.tfd());
  return used;
}

Result<std::unique_ptr<FdRestorer>> FdRestorer::Load(const images::ImageSet& images,
                                                     const FdRestoreOptions& opts) {
  auto r = std::make_unique<FdRestorerImpl>(opts);
  TRY(r->LoadImages(images));
  return std::unique_ptr<FdRestorer>(std::move(r));
}

Result<void> FdRestorerImpl::LoadImages(const images::ImageSet& images) {
  std::unique_ptr<images::BlobReader> blob;
  if (images.Has("files-data.blob")) {
    ASSIGN_OR_RETURN(blob, images.OpenBlob("files-data.blob"));
  }
  ctx_ = std::make_unique<FdRestoreContext>(opts_, std::move(blob));
  if (images.Has("files.img")) {
    ASSIGN_OR_RETURN(images::ImageReader rd, images.OpenImage("files.img"));
    for (;;) {
      img::FileEntry e;
      ASSIGN_OR_RETURN(bool more, rd.Next(&e));
      if (!more) break;
      if (!FindKind(e.kind()))
        return MakeError(ErrorKind::kBadImage, 0, "files.img: file id %llu has unknown kind %d",
                         static_cast<unsigned long long>(e.id()), e.kind());
      if (e.id() == 0 || ctx_->entries_.count(e.id()))
        return MakeError(ErrorKind::kBadImage, 0, "files.img: bad or duplicate file id %llu",
                         static_cast<unsigned long long>(e.id()));
      ctx_->entries_.emplace(e.id(), std::move(e));
    }
  }
  ASSIGN_OR_RETURN(auto tables, ReadProcessFds(images));
  for (auto& [n, pf] : tables) {
    for (const auto& fe : pf.fds()) {
      if (fe.fd() < 0 || fe.fd() > (1 << 20))
        return MakeError(ErrorKind::kBadImage, 0, "%s: bad fd number %d", n.c_str(), fe.fd());
      if (!ctx_->entries_.count(fe.file_id()))
        return MakeError(ErrorKind::kBadImage, 0, "%s: fd %d refers to unknown file id %llu",
                         n.c_str(), fe.fd(), static_cast<unsigned long long>(fe.file_id()));
      max_fd_ = std::max(max_fd_, fe.fd());
    }
    ctx_->tree_pids.insert(pf.pid());
    procs_[pf.pid()] = std::move(pf);
  }
  for (const auto& [id, e] : ctx_->entries_)
    if (e.kind() == img::FILE_KIND_EPOLL)
      for (const auto& t : e.epoll().targets()) {
        if (t.tfd() < 0 || t.tfd() > (1 << 20) || !ctx_->entries_.count(t.file_id()))
          return MakeError(ErrorKind::kBadImage, 0, "files.img: epoll %llu: bad target %d",
                           static_cast<unsigned long long>(id), t.tfd());
        max_fd_ = std::max(max_fd_, t.tfd());
      }
  // A flock is taken again by its taker when that process holds the description, else by the
  // first process of the tree that holds it (the taker closed its fd after forking).
  auto holds = [](const img::ProcessFds& pf, uint64_t id) {
    for (const auto& fe : pf.fds())
      if (fe.file_id() == id) return true;
    return false;
  };
  for (const auto& [id, e] : ctx_->entries_)
    for (const auto& l : e.locks()) {
      if (l.type() != img::LOCK_TYPE_FLOCK) continue;
      auto p = procs_.find(l.pid());
      if (p != procs_.end() && holds(p->second, id)) {
        ctx_->flock_takers[id] = l.pid();
        continue;
      }
      for (const auto& [pid, pf] : procs_)
        if (holds(pf, id)) {
          ctx_->flock_takers[id] = pid;
          break;
        }
    }
  // Host files (on a mount outside the tree's mount namespace): opened here, in the restorer's
  // namespace, before a container's root task prepares the rest inside the container's.
  for (const auto& [id, e] : ctx_->entries_) {
    if (e.kind() != img::FILE_KIND_REG || !e.reg().host_file()) continue;
    int flags = (e.flags() & ~(O_CREAT | O_TRUNC | O_EXCL | O_CLOEXEC)) | O_CLOEXEC;
    UniqueFd fd(open(e.reg().path().c_str(), flags));
    if (!fd)
      return Errno("open host file %s flags %#o (the tree held it from outside its mount "
                   "namespace)", e.reg().path().c_str(), e.flags());
    ctx_->host_files[id] = std::move(fd);
  }
  if (images.Has("files-netlock.img")) {
    img::NetLock nl;
    TRY(images.ReadOne("files-netlock.img", &nl));
    netlock_ = OpenNetLock(nl.table());
  }
  return Ok();
}

Result<void> FdRestorerImpl::Prepare(int base_fd) {
  ctx_->base_ = base_fd;
  // Anything failing here leaves nothing behind: the caller's error path destroys us, which
  // closes every prepared fd.
  for (const auto& [id, e] : ctx_->entries_) {
    auto r = ctx_->Ensure(id);
    if (!r.ok()) {
      ctx_->temp_.clear();
      CloseAll();
      return std::move(r).error();
    }
  }
  // Work that needs every description (queues with fds in flight), before the temporary fds
  // (a pair end no process holds) go.
  for (auto& fn : ctx_->after_prepare) {
    auto r = fn();
    if (!r.ok()) {
      ctx_->temp_.clear();
      CloseAll();
      return std::move(r).error();
    }
  }
  ctx_->after_prepare.clear();
  ctx_->temp_.clear();
  // base_fd may sit in a gap below MaxFd() (RLIMIT_NOFILE): no prepared fd on a restored number.
  if (base_fd <= max_fd_) {
    std::set<int> used = UsedFds();
    for (const auto& [id, fd] : ctx_->prepared_)
      if (used.count(fd)) {
        CloseAll();
        return MakeError(ErrorKind::kUnsupported, EMFILE,
                         "prepare: file id %llu landed on fd %d, which a restored process uses: "
                         "not enough free fd numbers below RLIMIT_NOFILE",
                         static_cast<unsigned long long>(id), fd);
      }
  }
  return Ok();
}

Result<void> FdRestorerImpl::Install(pid_t old_pid) {
  auto it = procs_.find(old_pid);
  static const img::ProcessFds kEmpty;
  const img::ProcessFds& pf = it == procs_.end() ? kEmpty : it->second;
  ctx_->installing = &pf;
  // 1. Per-process kind work that needs fd numbers (epoll registrations: the kernel keys them
  //    by number, so each target is put at its registered number for the epoll_ctl). Kinds
  //    that make the process's own description here (pidfds) go first: epoll registers the
  //    description that is on the number then.
  for (bool first : {true, false})
    for (const auto& [id, e] : ctx_->entries_) {
      const KindOps* ops = FindKind(e.kind());
      if (ops->install && ops->install_first == first)
        TRY_CTX(ops->install(*ctx_, e, old_pid), "pid %d: %s", old_pid, ops->name);
    }
  // 2. Every fd at its number with its close-on-exec flag.
  std::vector<bool> want(max_fd_ + 1, false);
  // Not closed below: the engine's fds and the prepared ones (step 4), when they sit in a gap.
  std::vector<bool> keep(max_fd_ + 1, false);
  for (int fd : keep_)
    if (fd >= 0 && fd <= max_fd_) keep[fd] = true;
  for (const auto& [id, fd] : ctx_->prepared_)
    if (fd >= 0 && fd <= max_fd_) keep[fd] = true;
  for (const auto& fe : pf.fds()) {
    int src = ctx_->Prepared(fe.file_id());
    if (src < 0)
      return MakeError(ErrorKind::kBadImage, 0, "pid %d fd %d: file id %llu was not prepared",
                       old_pid, fe.fd(), static_cast<unsigned long long>(fe.file_id()));
    if (dup3(src, fe.fd(), fe.cloexec() ? O_CLOEXEC : 0) < 0)
      return Errno("pid %d: dup3 %d -> %d", old_pid, src, fe.fd());
    want[fe.fd()] = true;
  }
  // 2b. Kind work that needs this process's fds at their numbers.
  for (const auto& [id, e] : ctx_->entries_) {
    const KindOps* ops = FindKind(e.kind());
    if (ops->install_late) TRY_CTX(ops->install_late(*ctx_, e, old_pid), "pid %d: %s", old_pid,
                                   ops->name);
  }
  // 3. Nothing else below the engine's range: numbers used only for registrations, and what the
  //    coordinator had open, go away.
  for (int fd = 0; fd <= max_fd_; fd++) {
    if (want[fd] || keep[fd]) continue;
    int end = fd;
    while (end + 1 <= max_fd_ && !want[end + 1] && !keep[end + 1]) end++;
    syscall(SYS_close_range, fd, end, 0);
    fd = end;
  }
  // 3b. A session leader's controlling pty (we are past setsid here), while the prepared copies
  //     are open: the leader may hold no fd of its terminal.
  if (pf.ctty_pty()) TRY(SetCtty(*ctx_, pf, old_pid));
  // 4. The prepared copies, before the POSIX locks: closing any fd of a file drops the
  //    process's POSIX locks on it.
  for (const auto& [id, fd] : ctx_->prepared_) close(fd);
  // 5. POSIX locks belong to this process.
  for (const auto& fe : pf.fds())
    for (const auto& l : fe.posix_locks())
      TRY_CTX(ApplyLock(fe.fd(), l), "pid %d fd %d: POSIX lock", old_pid, fe.fd());
  //    flock locks this process takes (flock_takers), on the first of its fds on each.
  std::set<uint64_t> flocked;
  for (const auto& fe : pf.fds()) {
    auto t = ctx_->flock_takers.find(fe.file_id());
    if (t == ctx_->flock_takers.end() || t->second != old_pid ||
        !flocked.insert(fe.file_id()).second)
      continue;
    for (const auto& l : ctx_->Entry(fe.file_id())->locks())
      if (l.type() == img::LOCK_TYPE_FLOCK)
        TRY_CTX(ApplyLock(fe.fd(), l), "pid %d fd %d: flock", old_pid, fe.fd());
  }
  // 6. File owners (F_SETOWN): this process, its parents and children exist now, with the
  //    numbers of this pid namespace.
  for (const auto& fe : pf.fds()) {
    const img::FileEntry* e = ctx_->Entry(fe.file_id());
    if (e && e->has_owner() && e->owner().pid())
      TRY_CTX(RestoreOwner(fe.fd(), *e, true), "pid %d fd %d", old_pid, fe.fd());
  }
  // 6b. Leases that were being broken: broken again, their owner (SIGIO's target) set above.
  for (const auto& fe : pf.fds()) {
    const img::FileEntry* e = ctx_->Entry(fe.file_id());
    if (e && e->lease_breaking())
      TRY_CTX(BreakLease(fe.fd(), *e), "pid %d fd %d", old_pid, fe.fd());
  }
  // 8. /dev/tty, which opens the controlling terminal just set.
  TRY(OpenDevTtys(*ctx_, pf, old_pid));
  return Ok();
}

void FdRestorerImpl::ClosePrepared() {
  if (closed_ || !ctx_) return;
  closed_ = true;
  ctx_->host_files.clear();
  for (const auto& [id, fd] : ctx_->prepared_) {
    if (!ctx_->finalize_fds_.count(id)) close(fd);
  }
}

namespace {

// Whether conn's peer address is one of the calling thread's net namespace (a connection over
// loopback: both ends restored there). A bind to it succeeds only then (or with
// ip_nonlocal_bind, which at worst locks a connection the caller's table already silences).
bool PeerIsLocal(const TcpConn& c) {
  sockaddr_storage peer = c.peer;
  socklen_t len = sizeof(sockaddr_in6);
  (void)UnmapV4(&peer);
  if (peer.ss_family == AF_INET) {
    reinterpret_cast<sockaddr_in*>(&peer)->sin_port = 0;
    len = sizeof(sockaddr_in);
  } else if (peer.ss_family == AF_INET6) {
    reinterpret_cast<sockaddr_in6*>(&peer)->sin6_port = 0;
  } else {
    return false;
  }
  UniqueFd s(::socket(peer.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0));
  return s && ::bind(s.get(), reinterpret_cast<const sockaddr*>(&peer), len) == 0;
}

}  // namespace

Result<void> FdRestorerImpl::LockNetwork(pid_t netns_pid) {
  // A migration's destination is quiet until its commit with or without connections to lock:
  // the first IPv6 router solicitation or MLD report of its link would teach the segment's
  // bridges the container's MAC here, and the peers' frames (pings, UDP) would come here while
  // the source still holds the others.
  if (!netlock_ && opts_.keep_netlock && netns_pid) netlock_ = OpenNetLock(kQuietLockName);
  if (!netlock_) return Ok();
  std::vector<TcpConn> conns;
  for (const auto& [id, e] : ctx_->entries()) {
    if (e.kind() != img::FILE_KIND_INET || !e.inet().has_repair()) continue;
    ASSIGN_OR_RETURN(TcpConn c, ConnOf(e));
    conns.push_back(c);
  }
  UniqueFd ns;
  if (netns_pid) {
    ASSIGN_OR_RETURN(ns, netns::Open(netns_pid));
  }
  if (opts_.keep_netlock && opts_.netns_locked && netns_pid) {
    // The caller's table silences everything but loopback: the connections over loopback are
    // locked in it (both directions), the others need nothing (no table, rules or context of
    // ours in the blackout). The caller opens that table at its commit.
    std::vector<TcpConn> local;
    TRY_CTX(netns::RunHere(ns.get(), CLONE_NEWNET, [&]() -> Result<void> {
              for (const auto& c : conns)
                if (PeerIsLocal(c)) local.push_back(c);
              return Ok();
            }),
            "network lock: which connections are over loopback");
    LOG_DEBUG("restore: namespace locked by the caller; %zu of %zu connection(s) over loopback",
              local.size(), conns.size());
    netlock_.reset();
    if (local.empty()) return Ok();
    netlock_ = OpenNetLock(kAheadQuietName);
    return netlock_->Lock(ns.get(), local);
  }
  LOG_DEBUG("restore: network lock %s opened", netlock_->name().c_str());
  TRY(netlock_->Lock(ns ? ns.get() : -1, conns));
  LOG_DEBUG("restore: %zu connection(s) locked", conns.size());
  // Unlocked by the caller (a migration's destination, at its commit): until then the namespace
  // says nothing at all (NetLock::Quiet), from before its links exist.
  if (opts_.keep_netlock && netns_pid) TRY(netlock_->Quiet(ns.get()));
  return Ok();
}

Result<UniqueFd> FdRestorerImpl::TakeFromTree(uint64_t file_id) {
  for (const auto& [pid, pf] : procs_)
    for (const auto& fe : pf.fds()) {
      if (fe.file_id() != file_id) continue;
      auto h = host_pids_.find(pid);
      auto fd = pidfd::TakeFd(h == host_pids_.end() ? pid : h->second, fe.fd());
      if (!fd.ok())
        return std::move(fd.error().wrap(StrFormat(
            "take file id %llu to finalize it", static_cast<unsigned long long>(file_id))));
      return fd;
    }
  return UniqueFd();  // in no process's table (only in flight, say): nothing to finalize
}

Result<void> FdRestorerImpl::Finalize() {
  finalized_ = true;
  ClosePrepared();
  // Unix socket files unlinked before the dump that had to stay until now (listeners), and the
  // directories made for them; only what this coordinator prepared (its paths).
  for (const auto& [id, e] : ctx_->entries_)
    if (e.kind() == img::FILE_KIND_UNIX && ctx_->prepared_.count(id))
      TRY(FinalizeUnix(*ctx_, e, -1));
  PutBackMovedAside();
  // Link remaps (an unlinked name of a file with other links): opened by now.
  for (const auto& [id, e] : ctx_->entries_)
    if (e.kind() == img::FILE_KIND_REG && !e.reg().link_remap().empty())
      unlink(e.reg().link_remap().c_str());
  // Prepared by a container's root task, not here: take them from the restored tree.
  for (const auto& [id, e] : ctx_->entries_) {
    if (!FindKind(e.kind())->finalize || ctx_->finalize_fds_.count(id)) continue;
    ASSIGN_OR_RETURN(UniqueFd fd, TakeFromTree(id));
    if (fd) ctx_->finalize_fds_[id] = fd.release();
  }
  // The namespaces that may hold the lock: ours (a plain restore), the one LockNetwork locked
  // (remembered by the lock), and those of the restored sockets.
  Result<void> res, unlocked;
  auto adopt = [&](int ns_fd) {
    auto r = netlock_->Adopt(ns_fd);
    if (!r.ok() && unlocked.ok()) unlocked = std::move(r);
  };
  // The caller unlocks (keep_netlock) by the lock's name, with its own contexts: nothing to
  // adopt here (each adoption is an nftables context and a call: ~1 ms of a migration's blackout).
  const bool adopting = netlock_ && !opts_.keep_netlock;
  if (adopting) adopt(-1);
  // Established connections with sent bytes not yet acked, kept for a probe once unlocked.
  std::vector<std::pair<const img::FileEntry*, UniqueFd>> unacked;
  for (auto& [id, fd] : ctx_->finalize_fds_) {
    const img::FileEntry* e = ctx_->Entry(id);
    const KindOps* ops = FindKind(e->kind());
    if (ops->finalize && res.ok()) {
      auto r = ops->finalize(*ctx_, *e, fd);
      if (!r.ok()) res = std::move(r.error().wrap(StrFormat("finalize %s", ops->name)));
    }
    if (adopting && e->kind() == img::FILE_KIND_INET) {
      UniqueFd ns(ioctl(fd, SIOCGSKNS));
      if (ns) adopt(ns.get());
    }
    if (e->kind() == img::FILE_KIND_INET && HasUnackedData(*e))
      unacked.emplace_back(e, UniqueFd(fcntl(fd, F_DUPFD_CLOEXEC, 0)));
    close(fd);
  }
  ctx_->finalize_fds_.clear();
  // After every repair off (CRIU's order): the peers' packets reach live sockets only. Unless
  // the caller unlocks later (keep_netlock: a migration's destination, at the commit).
  if (netlock_ && !opts_.keep_netlock) {
    auto r = netlock_->Unlock();
    if (!r.ok() && unlocked.ok()) unlocked = std::move(r);
    // The repair off's window probe went to the lock: the peer learns of the connection again
    // only at the restored retransmission timeout (a second). A probe now has the peer answer
    // at once: an ack, or a reset when the peer is gone (socket-tcp-reseted: the write after
    // the restore must fail).
    if (r.ok())
      for (auto& [e, fd] : unacked)
        if (fd) ProbePeer(*e, fd.get());
  }
  if (res.ok()) res = std::move(unlocked);
  return res;
}

}  // namespace godwit::files
