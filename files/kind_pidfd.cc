// pidfds (pidfd_open, clone CLONE_PIDFD): fdinfo "Pid:" names the target as the dumper sees it,
// -1 once it was reaped.
//
// A live target must be a process of the dumped tree (CheckPidfdTargets, at the end of the
// dump): restore keeps the pids, so the holder opens a pidfd on the same pid again. That cannot
// happen in the coordinator's Prepare (the tree does not exist yet): Prepare puts a placeholder
// on the description's number and the holder's Install, which runs once the holder has forked
// its children, opens the real pidfd and puts it there. The target may not exist yet (another
// branch of the tree, a grandchild): every process forks all its children before its own
// Install, so each target appears without waiting on any Install, and the wait is bounded.
// Each holder gets its own description (two processes sharing one pidfd description after fork
// get one each: same target, same pidfs inode). A pidfd of a thread other than the group leader
// (PIDFD_THREAD, pidfd_of_thread) is opened later: the engine makes threads after the files are
// installed, so Install leaves the placeholder and the threads step opens it in the holder
// (FdRestorer::ThreadPidfds, restore/threads.cc).
//
// A reaped target (pidfd_dead, pidfd_diffdead): a stand-in child of the preparing process is
// forked, every pidfd of that dead process (one pidfs inode at dump) opened on it, then it exits
// with the status PIDFD_GET_INFO reported (exit code or signal) and is reaped: the pidfds read
// "Pid: -1", report the same exit status, and share an inode with each other only.
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <set>

#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

namespace {

// PIDFD_GET_INFO (Linux 6.13): the struct is versioned by size in the ioctl number; this is the
// first published (64-byte) layout, whose last field is the exit status.
struct PidfdInfo {
  uint64_t mask;
  uint64_t cgroupid;
  uint32_t pid, tgid, ppid, ruid, rgid, euid, egid, suid, sgid, fsuid, fsgid;
  int32_t exit_code;
};
constexpr uint64_t kPidfdInfoExit = 1ull << 3;
constexpr unsigned long kPidfdGetInfo = _IOWR(0xFF, 11, PidfdInfo);
constexpr int kPidfdFlags = O_NONBLOCK | O_EXCL;  // PIDFD_NONBLOCK, PIDFD_THREAD
constexpr auto kTargetWait = std::chrono::seconds(30);

int PidfdOpen(pid_t pid, int flags) {
  return static_cast<int>(syscall(SYS_pidfd_open, pid, flags));
}

// Tgid and PPid of /proc/PID/status; false when pid is gone.
bool ReadStatus(pid_t pid, pid_t* tgid, pid_t* ppid, char* state) {
  std::string path = StrFormat("/proc/%d/status", pid);
  FILE* f = fopen(path.c_str(), "re");
  if (!f) return false;
  char line[256];
  *tgid = *ppid = 0;
  *state = '?';
  while (fgets(line, sizeof(line), f)) {
    sscanf(line, "Tgid: %d", tgid);
    sscanf(line, "PPid: %d", ppid);
    sscanf(line, "State: %c", state);
  }
  fclose(f);
  return true;
}

// A child that waits on go, then ends with the wait(2) status: a signal it raises at itself, or
// an exit code.
Result<std::pair<pid_t, int>> ForkStandIn(int status) {
  int go[2];
  if (pipe2(go, O_CLOEXEC) < 0) return Errno("pipe for a pidfd stand-in");
  pid_t c = fork();
  if (c < 0) {
    close(go[0]);
    close(go[1]);
    return Errno("fork a pidfd stand-in");
  }
  if (c == 0) {
    // Nothing of the preparing process's (sockets, pipe ends) stays open in the stand-in.
    if (go[0] > 3) syscall(SYS_close_range, 3, go[0] - 1, 0);
    syscall(SYS_close_range, go[0] + 1, ~0U, 0);
    char b;
    while (read(go[0], &b, 1) < 0 && errno == EINTR) {
    }
    if (WIFSIGNALED(status)) {
      int sig = WTERMSIG(status);
      signal(sig, SIG_DFL);
      sigset_t one;
      sigemptyset(&one);
      sigaddset(&one, sig);
      sigprocmask(SIG_UNBLOCK, &one, nullptr);
      syscall(SYS_kill, syscall(SYS_getpid), sig);
    }
    _exit(WEXITSTATUS(status));
  }
  close(go[0]);
  return std::make_pair(c, go[1]);
}

}  // namespace

Result<void> DumpPidfd(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::PidFile* f = e.mutable_pidfd();
  std::string pid = p.info.Get("Pid");
  if (pid.empty())
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: pidfd without Pid in fdinfo", p.pid,
                     p.fd);
  pid_t target = atoi(pid.c_str());
  f->set_pid(target);
  f->set_ino(p.st.st_ino);
  std::string nspid = p.info.Get("NSpid");
  size_t last = nspid.find_last_of(" \t");
  f->set_ns_pid(atoi(last == std::string::npos ? nspid.c_str() : nspid.c_str() + last + 1));
  if (target == 0)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d fd %d: pidfd of a process outside godwit's pid namespace", p.pid,
                     p.fd);
  if (target > 0) {
    pid_t tgid = 0, ppid = 0;
    char state;
    if (ReadStatus(target, &tgid, &ppid, &state) && tgid != target) f->set_tgid(tgid);
    return Ok();
  }
  PidfdInfo info{};
  info.mask = kPidfdInfoExit;
  if (ioctl(p.local, kPidfdGetInfo, &info) == 0 && (info.mask & kPidfdInfoExit)) {
    f->set_has_exit(true);
    f->set_exit_status(info.exit_code);
  }
  return Ok();
}

Result<void> CheckPidfdTargets(const std::vector<img::FileEntry>& files,
                               const std::vector<pid_t>& pids,
                               const std::map<uint64_t, std::pair<pid_t, int>>& holders) {
  std::set<pid_t> tree(pids.begin(), pids.end());
  for (const auto& e : files) {
    if (e.kind() != img::FILE_KIND_PIDFD || e.pidfd().pid() <= 0) continue;
    pid_t t = e.pidfd().pid(), tgid = 0, ppid = 0;
    char state = '?';
    if (tree.count(t) || tree.count(e.pidfd().tgid())) continue;  // a process, or its thread
    if (ReadStatus(t, &tgid, &ppid, &state) && state == 'Z' && tree.count(ppid)) continue;
    auto h = holders.find(e.id());
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d fd %d: pidfd of pid %d, which is not in the dumped tree",
                     h == holders.end() ? 0 : h->second.first,
                     h == holders.end() ? -1 : h->second.second, t);
  }
  return Ok();
}

Result<UniqueFd> OpenPidfd(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::PidFile& f = e.pidfd();
  int flags = static_cast<int>(e.flags()) & kPidfdFlags;
  if (f.pid() > 0) {
    // A placeholder (a pidfd of the preparing process): InstallPidfd replaces it in the holder.
    UniqueFd fd(PidfdOpen(getpid(), 0));
    if (!fd) return Errno("pidfd_open (placeholder for the pidfd of pid %d)", f.pid());
    fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
    return fd;
  }
  // Pidfds of one reaped process share a stand-in; it ends once the last of them is open.
  auto it = ctx.pidfd_standins.find(f.ino());
  if (it == ctx.pidfd_standins.end()) {
    int status = f.has_exit() ? f.exit_status() : 0;
    ASSIGN_OR_RETURN(auto standin, ForkStandIn(status));
    // Closed at the end of Prepare whatever happens: the stand-in then ends by itself.
    ctx.KeepUntilPrepared(UniqueFd(standin.second));
    it = ctx.pidfd_standins.emplace(f.ino(), standin).first;
  }
  pid_t standin = it->second.first;
  UniqueFd fd(PidfdOpen(standin, flags));
  if (!fd) return Errno("pidfd_open the stand-in %d of a reaped process", standin);
  fcntl(fd.get(), F_SETFD, FD_CLOEXEC);
  bool last = true;
  for (const auto& [id, other] : ctx.entries())
    if (id != e.id() && other.kind() == img::FILE_KIND_PIDFD && other.pidfd().pid() <= 0 &&
        other.pidfd().ino() == f.ino() && ctx.Prepared(id) < 0)
      last = false;
  if (last) {
    // Every pidfd of this dead process is open: let the stand-in end.
    char go = 'g';
    if (write(it->second.second, &go, 1) != 1)
      return Errno("release the pidfd stand-in %d", standin);
    int st;
    while (waitpid(standin, &st, 0) < 0)
      if (errno != EINTR) return Errno("reap the pidfd stand-in %d", standin);
  }
  return fd;
}

int PidfdOpenFlags(const img::FileEntry& e) { return static_cast<int>(e.flags()) & kPidfdFlags; }

Result<void> InstallPidfd(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid) {
  const img::PidFile& f = e.pidfd();
  // A thread's: the placeholder stays until the threads exist.
  if (f.pid() <= 0 || f.tgid() > 0 || !ctx.InstallingHolds(e.id())) return Ok();
  int slot = ctx.Prepared(e.id());
  if (slot < 0)
    return MakeError(ErrorKind::kBadImage, 0, "pidfd file id %llu was not prepared",
                     static_cast<unsigned long long>(e.id()));
  // In a container's own pid namespace the holder names the target by its pid there.
  pid_t target = f.ns_pid() > 0 ? f.ns_pid() : f.pid();
  auto deadline = std::chrono::steady_clock::now() + kTargetWait;
  UniqueFd fd;
  while (!fd) {
    fd.reset(PidfdOpen(target, static_cast<int>(e.flags()) & kPidfdFlags));
    if (fd) break;
    if (errno != ESRCH) return Errno("pidfd_open %d", target);
    if (std::chrono::steady_clock::now() > deadline)
      return MakeError(ErrorKind::kGeneric, ESRCH,
                       "pidfd of pid %d: the target was not restored within %lld s", target,
                       static_cast<long long>(kTargetWait.count()));
    struct timespec ts = {0, 1000000};  // the target's parent is still forking: poll each 1 ms
    nanosleep(&ts, nullptr);
  }
  if (dup3(fd.get(), slot, O_CLOEXEC) < 0) return Errno("dup3 pidfd of pid %d", target);
  return Ok();
}

}  // namespace godwit::files
