// FdDumper: walks /proc/PID/fd of each frozen process, takes each fd with pidfd_getfd (the same
// open file description), deduplicates shared descriptions with kcmp(KCMP_FILE) among fds on
// the same inode, and lets the kind table record each new description once.
#include <dirent.h>
#include <fcntl.h>
#include <linux/kcmp.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>

#include "common/log.h"
#include "common/pidfd.h"
#include "files/kind.h"
#include "proto/fd.pb.h"

namespace godwit::files {

namespace {

long Kcmp(pid_t p1, pid_t p2, int type, unsigned long i1, unsigned long i2) {
  return syscall(SYS_kcmp, p1, p2, type, i1, i2);
}

struct Seen {
  pid_t pid;
  int fd;
  uint64_t id;
};

struct PendingEpoll {
  size_t index;  // into files_
  pid_t pid;
  int fd;
};

// A session leader's controlling terminal, when it is a pty (/proc/PID/stat: session, tty_nr).
Result<void> DumpCtty(pid_t pid, img::ProcessFds& pf) {
  std::string path = StrFormat("/proc/%d/stat", pid);
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return Errno("open %s", path.c_str());
  char buf[1024];
  size_t n = fread(buf, 1, sizeof(buf) - 1, f);
  fclose(f);
  buf[n] = 0;
  const char* rp = strrchr(buf, ')');
  int ppid = 0, pgrp = 0, sid = 0, tty_nr = 0;
  char state;
  if (!rp || sscanf(rp + 1, " %c %d %d %d %d", &state, &ppid, &pgrp, &sid, &tty_nr) != 5)
    return MakeError(ErrorKind::kGeneric, 0, "%s: cannot parse", path.c_str());
  unsigned maj = (static_cast<unsigned>(tty_nr) >> 8) & 0xfff;
  unsigned min = (tty_nr & 0xff) | ((static_cast<unsigned>(tty_nr) >> 12) & 0xfff00);
  if (sid != pid || !tty_nr || maj < 136 || maj > 143) return Ok();
  pf.set_ctty_pty(static_cast<int>((maj - 136) * 256 + min) + 1);
  return Ok();
}

}  // namespace

class FdDumperImpl : public FdDumper {
 public:
  FdDumperImpl(images::Sink& sink, const DumpOptions& opts)
      : sink_(sink), opts_(opts), ctx_(sink, opts_) {
    // A description a unix socket queue holds (SCM_RIGHTS), met while peeking it: fd is the
    // dumper's copy, kept open (kcmp compares it with later fds).
    ctx_.in_flight = [this](int fd) -> Result<uint64_t> {
      Probe p;
      p.pid = getpid();
      p.fd = ctx_.Keep(fd);
      p.local = p.fd;
      if (fstat(p.local, &p.st) < 0) return Errno("fstat an fd in flight");
      char buf[4096];
      ssize_t n = readlink(StrFormat("/proc/self/fd/%d", p.fd).c_str(), buf, sizeof(buf) - 1);
      if (n < 0) return Errno("readlink an fd in flight");
      p.link.assign(buf, n);
      ASSIGN_OR_RETURN(p.info, ReadFdInfo(p.pid, p.fd));
      bool is_new;
      return Describe(p, true, &is_new);
    };
  }
  ~FdDumperImpl() override = default;

  Result<void> DumpProcess(pid_t pid) override;
  Result<void> Check() override;
  Result<void> Finish() override;
  void Resume() override { ctx_.RunResume(); }
  Result<void> LockOutside(pid_t tree_pid) override;
  void SetTcpRepair(bool on) override;
  std::vector<std::pair<std::string, int>> Counts() const override {
    std::vector<std::pair<std::string, int>> out(counts_.begin(), counts_.end());
    return out;
  }

 private:
  // The file id of the description behind fd of pid (our copy: local), dumping it first when it
  // is new. in_flight: a description only a socket queue holds (pid is ours, fd our copy).
  Result<uint64_t> Describe(const Probe& probe, bool in_flight, bool* is_new);
  Result<void> ResolveEpoll(const PendingEpoll& pe);
  Result<void> CheckOutsidePeers();

  images::Sink& sink_;
  DumpOptions opts_;
  FdDumpContext ctx_;
  std::map<std::pair<dev_t, ino_t>, std::vector<Seen>> by_inode_;
  std::vector<img::FileEntry> files_;
  std::map<uint64_t, std::pair<pid_t, int>> first_holder_;  // file id -> first (pid, fd)
  std::map<std::pair<pid_t, int>, uint64_t> fd_ids_;
  std::vector<pid_t> pids_;
  std::map<std::string, int> counts_;
  uint64_t next_id_ = 1;
  std::vector<PendingEpoll>* epolls_ = nullptr;  // of the process being dumped
  pid_t current_pid_ = 0;                         // the process being dumped
};

Result<std::unique_ptr<FdDumper>> FdDumper::Create(images::Sink& sink, const DumpOptions& opts) {
  return std::unique_ptr<FdDumper>(new FdDumperImpl(sink, opts));
}

Result<uint64_t> FdDumperImpl::Describe(const Probe& p, bool in_flight, bool* is_new) {
  // Descriptions on one inode (all anon-inode fds share one) are kept in the kernel's order
  // of their struct file pointers, which kcmp reports (0 equal, 1 less, 2 greater): a binary
  // search finds a shared description in O(log n) calls.
  *is_new = false;
  auto& bucket = by_inode_[{p.st.st_dev, p.st.st_ino}];
  size_t lo = 0, hi = bucket.size();
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    long c = Kcmp(p.pid, bucket[mid].pid, KCMP_FILE, p.fd, bucket[mid].fd);
    if (c == 0) return bucket[mid].id;
    if (c == 1)
      hi = mid;
    else if (c == 2)
      lo = mid + 1;
    else
      return Errno("pid %d fd %d: kcmp with pid %d fd %d", p.pid, p.fd, bucket[mid].pid,
                   bucket[mid].fd);
  }
  ASSIGN_OR_RETURN(img::FileKind kind, Classify(p));
  const KindOps* ops = FindKind(kind);
  uint64_t id = next_id_++;
  // Known before the kind's dump runs: a description met again inside it (a socket queue
  // holding it) finds this id.
  bucket.insert(bucket.begin() + lo, Seen{p.pid, p.fd, id});
  *is_new = true;
  img::FileEntry e;
  e.set_id(id);
  e.set_kind(kind);
  e.set_flags(p.info.flags & ~O_CLOEXEC);
  e.set_pos(p.info.pos);
  // An O_PATH fd has no owner, signal or lease (fcntl refuses them: EBADF).
  if (!(p.info.flags & O_PATH)) TRY(DumpOwner(p, e));
  for (const auto& l : ParseLocks(p.info))
    if (l.type() != img::LOCK_TYPE_POSIX) *e.add_locks() = l;
  TRY_CTX(ops->dump(ctx_, p, e), "pid %d fd %d (%s %s)%s", p.pid, p.fd, ops->name, p.link.c_str(),
          in_flight ? " in flight" : "");
  // An epoll in flight is registered again by the process whose socket queue holds it (any
  // process will do: registrations are keyed by file, and its targets are in the tree).
  if (kind == img::FILE_KIND_EPOLL && in_flight) e.mutable_epoll()->set_owner_pid(current_pid_);
  if (kind == img::FILE_KIND_EPOLL && epolls_) epolls_->push_back({files_.size(), p.pid, p.fd});
  files_.push_back(std::move(e));
  if (!in_flight) first_holder_[id] = {p.pid, p.fd};
  counts_[in_flight ? std::string(ops->name) + " in flight" : ops->name]++;
  return id;
}

Result<void> FdDumperImpl::DumpProcess(pid_t pid) {
  auto opened = pidfd::Open(pid);
  if (!opened.ok() && opened.error().sys_errno() == ESRCH)
    return MakeError(ErrorKind::kNotFound, ESRCH, "pid %d is gone", pid);
  ASSIGN_OR_RETURN(UniqueFd pidfd, std::move(opened));
  // Processes sharing one fd table (clone CLONE_FILES without CLONE_THREAD, zdtm fdt_shared):
  // a child sharing its parent's is not dumped here (ProcessEntry.shares_parent_files: restore
  // clones it with CLONE_FILES). Any other sharing (a holder reparented away from the table's
  // other holders) is refused: restore would give each its own table, and an fd one of them
  // opens later would not appear in the other.
  for (pid_t other : pids_)
    if (Kcmp(pid, other, KCMP_FILES, 0, 0) == 0)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d shares its fd table with pid %d, not its parent (clone CLONE_FILES): "
                       "not supported",
                       pid, other);
  std::string dir = StrFormat("/proc/%d/fd", pid);
  DIR* d = opendir(dir.c_str());
  if (!d) return Errno("opendir %s", dir.c_str());
  std::vector<int> fds;
  while (struct dirent* de = readdir(d)) {
    if (de->d_name[0] == '.') continue;
    fds.push_back(atoi(de->d_name));
  }
  closedir(d);
  std::sort(fds.begin(), fds.end());

  ctx_.links.clear();
  for (int fd : fds) {
    char buf[4096];
    ssize_t n = readlink(StrFormat("/proc/%d/fd/%d", pid, fd).c_str(), buf, sizeof(buf) - 1);
    if (n < 0) return Errno("pid %d fd %d: readlink", pid, fd);
    ctx_.links[fd].assign(buf, n);
  }
  img::ProcessFds pf;
  pf.set_pid(pid);
  std::vector<PendingEpoll> epolls;
  epolls_ = &epolls;
  current_pid_ = pid;
  std::set<uint64_t> posix_done;  // descriptions whose POSIX locks this process recorded
  for (int fd : fds) {
    Probe p;
    p.pid = pid;
    p.fd = fd;
    ASSIGN_OR_RETURN(UniqueFd local, pidfd::GetFd(pidfd.get(), fd, pid));
    p.local = local.get();
    if (fstat(p.local, &p.st) < 0) return Errno("pid %d fd %d: fstat", pid, fd);
    p.link = ctx_.links[fd];
    ASSIGN_OR_RETURN(p.info, ReadFdInfo(pid, fd));

    std::vector<img::FileLock> locks = ParseLocks(p.info);
    bool is_new = false;
    ASSIGN_OR_RETURN(uint64_t id, Describe(p, false, &is_new));
    if (!first_holder_.count(id)) first_holder_[id] = {pid, fd};
    fd_ids_[{pid, fd}] = id;
    img::FdEntry* fe = pf.add_fds();
    fe->set_fd(fd);
    fe->set_file_id(id);
    fe->set_cloexec(p.info.flags & O_CLOEXEC);
    if (posix_done.insert(id).second)
      for (const auto& l : locks)
        if (l.type() == img::LOCK_TYPE_POSIX) *fe->add_posix_locks() = l;
    counts_["fds"]++;
  }
  epolls_ = nullptr;
  TRY(DumpCtty(pid, pf));
  pids_.push_back(pid);
  for (const PendingEpoll& pe : epolls) TRY(ResolveEpoll(pe));
  return images::WriteImage(sink_, StrFormat("fds-%d.img", pid), pf);
}

// Registrations are keyed by (file, fd number); the number may since have been closed or reused
// for another file. kcmp(KCMP_EPOLL_TFD) tells which open description a registration is.
Result<void> FdDumperImpl::ResolveEpoll(const PendingEpoll& pe) {
  img::EpollFile* ep = files_[pe.index].mutable_epoll();
  std::map<int, int> seen_tfd;
  for (img::EpollTarget& t : *ep->mutable_targets()) {
    struct kcmp_epoll_slot slot {};
    slot.efd = pe.fd;
    slot.tfd = t.tfd();
    slot.toff = seen_tfd[t.tfd()]++;
    uint64_t id = 0;
    auto it = fd_ids_.find({pe.pid, t.tfd()});
    if (it != fd_ids_.end() &&
        Kcmp(pe.pid, pe.pid, KCMP_EPOLL_TFD, t.tfd(), reinterpret_cast<unsigned long>(&slot)) == 0)
      id = it->second;
    for (auto f = fd_ids_.begin(); id == 0 && f != fd_ids_.end(); ++f) {
      if (Kcmp(f->first.first, pe.pid, KCMP_EPOLL_TFD, f->first.second,
               reinterpret_cast<unsigned long>(&slot)) == 0)
        id = f->second;
    }
    if (id == 0)
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d fd %d (epoll): target fd %d is open nowhere in the tree", pe.pid,
                       pe.fd, t.tfd());
    t.set_file_id(id);
  }
  return Ok();
}

// Descriptions connected to something outside the tree: allowed only as documented externals.
Result<void> FdDumperImpl::CheckOutsidePeers() {
  std::set<uint64_t> unix_inos, pipe_ends_r, pipe_ends_w;
  std::set<int> pty_masters;
  for (const auto& e : files_) {
    if (e.kind() == img::FILE_KIND_UNIX) unix_inos.insert(e.unix_sk().ino());
    if (e.kind() == img::FILE_KIND_TTY && e.tty().master()) pty_masters.insert(e.tty().pty_index());
    if (e.kind() == img::FILE_KIND_PIPE && e.pipe().path().empty())
      ((e.flags() & O_ACCMODE) == O_WRONLY ? pipe_ends_w : pipe_ends_r).insert(e.pipe().pipe_id());
  }
  for (auto& e : files_) {
    auto [pid, fd] = first_holder_[e.id()];
    std::string key;
    if (e.kind() == img::FILE_KIND_UNIX) {
      const img::UnixSocket& u = e.unix_sk();
      if (u.peer_ino() == 0 || unix_inos.count(u.peer_ino()) || u.listener_ino()) continue;
      if (u.type() == SOCK_DGRAM && !u.peer_name().empty() &&
          (ctx_.ExternalAllowed(StrFormat("unix:[%llu]", (unsigned long long)u.peer_ino())) ||
           ctx_.ExternalAllowed("unix:" + u.peer_name()))) {
        e.mutable_unix_sk()->set_peer_external(true);  // reconnected by name at restore
        continue;
      }
      key = StrFormat("socket:[%llu]", static_cast<unsigned long long>(u.ino()));
      if (!ctx_.ExternalAllowed(key) &&
          !ctx_.ExternalAllowed(StrFormat("unix:[%llu]", (unsigned long long)u.peer_ino())))
        return MakeError(ErrorKind::kUnsupported, 0,
                         "pid %d fd %d: unix socket %s is connected to a peer outside the tree "
                         "(socket:[%llu]%s%s); allow it with --external %s and restore with "
                         "--inherit-fd",
                         pid, fd, key.c_str(), static_cast<unsigned long long>(u.peer_ino()),
                         u.peer_name().empty() ? "" : " ",
                         u.peer_name().empty() ? "" : u.peer_name().c_str(), key.c_str());
    } else if (e.kind() == img::FILE_KIND_TTY) {
      const img::TtyFile& t = e.tty();
      if (t.master() || t.hung_up() || pty_masters.count(t.pty_index())) continue;
      if (opts_.shell_job)
        key = "tty";
      else if (ctx_.ExternalAllowed(StrFormat("tty:%s", t.path().c_str())))
        key = "tty:" + t.path();
      else
        return MakeError(ErrorKind::kUnsupported, 0,
                         "pid %d fd %d: terminal %s belongs to no process of the tree "
                         "(use --shell-job)",
                         pid, fd, t.path().c_str());
    } else if (e.kind() == img::FILE_KIND_PIPE) {
      key = StrFormat("pipe:[%llu]", static_cast<unsigned long long>(e.pipe().pipe_id()));
      bool write_end = (e.flags() & O_ACCMODE) == O_WRONLY;
      bool other_end_inside =
          (write_end ? pipe_ends_r : pipe_ends_w).count(e.pipe().pipe_id()) > 0;
      if (ctx_.ExternalAllowed(key)) {
      } else if (opts_.shell_job && !pids_.empty() && pid == pids_.front() && fd <= 2 &&
                 e.pipe().path().empty() && !other_end_inside) {
        // A shell job's (a container's) root with a pipe from outside on its stdio (conmon's,
        // a shell pipeline's): restored as the coordinator's own fd of that number.
        key = StrFormat("stdio:%d", fd);
      } else {
        continue;  // a pipe whose other end was closed
      }
    } else {
      continue;
    }
    std::string link = e.kind() == img::FILE_KIND_TTY ? e.tty().path() : key;
    img::FileEntry x;
    x.set_id(e.id());
    x.set_kind(img::FILE_KIND_EXTERNAL);
    x.set_flags(e.flags());
    x.mutable_external()->set_key(key);
    x.mutable_external()->set_link(link);
    e = std::move(x);
    counts_["external"]++;
  }
  return Ok();
}

Result<void> FdDumperImpl::Check() {
  TRY(CheckOutsidePeers());
  return CheckPidfdTargets(files_, pids_, first_holder_);
}

Result<void> FdDumperImpl::Finish() {
  TRY(Check());
  ASSIGN_OR_RETURN(images::ImageWriter w, images::ImageWriter::Create(sink_, "files.img"));
  for (const auto& e : files_) TRY(w.Write(e));
  TRY(w.Close());
  TRY(ctx_.CloseBlob());
  if (ctx_.netlock) {
    img::NetLock nl;
    nl.set_table(ctx_.netlock->name());
    TRY(images::WriteImage(sink_, "files-netlock.img", nl));
  }
  return Ok();
}

void FdDumperImpl::SetTcpRepair(bool on) {
  for (const auto& [fd, reuse] : ctx_.repaired_tcp) {
    int v = on ? TCP_REPAIR_ON : TCP_REPAIR_OFF_NO_WP;
    if (setsockopt(fd, SOL_TCP, TCP_REPAIR, &v, sizeof(v)) < 0)
      PLOG_WARN("TCP_REPAIR %s on a dumped connection", on ? "on" : "off");
    // Repair on forces the address reuse, off leaves none: give SO_REUSEADDR back.
    if (!on && reuse) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &reuse, sizeof(reuse));
  }
}

Result<void> FdDumperImpl::LockOutside(pid_t tree_pid) {
  if (!ctx_.netlock) return Ok();  // no connection was locked
  std::vector<const img::FileEntry*> socks;
  for (const auto& e : files_)
    if (e.kind() == img::FILE_KIND_INET && e.inet().has_repair()) socks.push_back(&e);
  // The dump's own lock: the Unlock that Resume runs (LockProcessTcp) releases this namespace's
  // part too.
  TRY(LockOutsideOf(*ctx_.netlock, socks, tree_pid));
  return Ok();
}

}  // namespace godwit::files
