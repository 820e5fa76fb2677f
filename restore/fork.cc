#include "restore/fork.h"

#include <fcntl.h>
#include <linux/sched.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

#include "common/clone3.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/proc.h"
#include "common/timing.h"
#include "files/files.h"
#include "restore/sessions.h"

namespace godwit::restore {
namespace {

using timing::Clock;

// Where the engine's own fds go: the report pipe at base-2, the images dir at base-1, the files'
// prepared fds from base up. They need numbers no restored process uses (Install puts the
// restored fds in place while they are open) below RLIMIT_NOFILE, whose hard limit we cannot
// raise here (no CAP_SYS_RESOURCE). First choice: above every restored fd (MaxFd()+64, room for
// the coordinator's own fds in between). When that does not fit under the limit (a process with
// an fd near its hard limit), the highest gap between restored fd numbers that holds them all:
// like CRIU's service fds, which sit just below the rlimit and move down when taken. Our soft
// limit goes up to the hard one (the restored processes get theirs back in "rlimits").
Result<int> ServiceFdBase(const RestoreContext& ctx) {
  rlimit rl{};
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0) return Errno("getrlimit RLIMIT_NOFILE");
  if (rl.rlim_cur < rl.rlim_max) {
    rlimit up{rl.rlim_max, rl.rlim_max};
    if (setrlimit(RLIMIT_NOFILE, &up) == 0) rl = up;
  }
  const long limit = static_cast<long>(std::min<rlim_t>(rl.rlim_cur, 1 << 30));
  const int max_fd = ctx.fds ? ctx.fds->MaxFd() : 2;
  const int need = 2 + (ctx.fds ? ctx.fds->FileCount() : 0) + 16;  // + coordinator fds in the way
  const int above = std::max(100, max_fd + 64);
  if (above - 2 + need <= limit || !ctx.fds) return above;
  std::set<int> used = ctx.fds->UsedFds();
  long end = limit;  // exclusive end of the free run being looked at
  for (auto it = used.rbegin(); it != used.rend(); ++it) {
    if (*it >= end) continue;
    if (end - *it - 1 >= need) return static_cast<int>(end - need + 2);
    end = *it;
  }
  if (end - 3 >= need) return static_cast<int>(end - need + 2);
  return MakeError(ErrorKind::kUnsupported, EMFILE,
                   "restore: no %d free fd numbers below RLIMIT_NOFILE (%ld) for the restore's "
                   "own fds: the restored processes use %zu numbers up to fd %d",
                   need, limit, used.size(), max_fd);
}

Result<void> CheckPidsFree(const RestoreContext& ctx) {
  if (ctx.inner_level > 0) return Ok();  // a fresh pid namespace: its pids are all free
  for (const auto& e : ctx.tree.processes()) {
    if (fs::Exists(StrFormat("/proc/%d", e.pid())))
      return MakeError(ErrorKind::kExists, EEXIST,
                       "pid %d is in use (the original still running, or an unreaped zombie)",
                       e.pid());
  }
  return Ok();
}

void KillAll(const std::vector<pid_t>& pids, pid_t root) {
  for (pid_t p : pids) kill(p, SIGKILL);
  // Our tracees first: a traced zombie in the root's pid namespace holds the dying root (pid 1
  // there) in zap_pid_ns_processes until its tracer reaps it.
  for (pid_t p : pids)
    if (p != root)
      while (waitpid(p, nullptr, __WALL) < 0 && errno == EINTR) {
      }
  if (root > 0) {
    int st;
    while (waitpid(root, &st, __WALL) < 0 && errno == EINTR) {
    }
  }
  // Orphans of the killed tree come to us (subreaper) or to whoever reaps above us.
  for (pid_t p : pids) waitpid(p, nullptr, __WALL | WNOHANG);
}

// One Report from the root during the container hooks' handshake, watching for its death.
Result<void> ReadHandshake(int fd, pid_t root) {
  auto deadline = Clock::now() + std::chrono::seconds(60);
  for (;;) {
    pollfd pf{fd, POLLIN, 0};
    int n = poll(&pf, 1, 100);
    if (n > 0) break;
    if (n < 0 && errno != EINTR) return Errno("poll");
    siginfo_t si{};
    if (waitid(P_PID, root, &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == root)
      return Err("restore: root %d died in its namespaces hooks", root);
    if (Clock::now() > deadline)
      return Err("restore: root %d did not answer (its namespaces hooks)", root);
  }
  Report rep{};
  ssize_t r = read(fd, &rep, sizeof(rep));
  if (r != sizeof(rep)) return Err("restore: root %d died in its namespaces hooks", root);
  rep.msg[sizeof(rep.msg) - 1] = 0;
  if (rep.err)
    return MakeError(ErrorKind::kGeneric, rep.err, "restore root %d: %s: %s", root, rep.msg,
                     strerror(rep.err));
  return Ok();
}

// A tree restored in its own pid namespace (ctx.inner_level > 0): the host pid of each live
// process, found among the root's descendants by its id at inner_level (their NSpid). Run once
// every process has reported (all are forked and none has exited).
Result<void> MapHostPids(RestoreContext& ctx, pid_t root) {
  std::map<pid_t, pid_t> host_of;  // id at inner_level -> host pid
  for (pid_t h : proc::Descendants(root)) {
    auto ns = proc::ReadNsPids(h, h);
    if (ns.ok() && static_cast<int>(ns->size()) > ctx.inner_level)
      host_of[(*ns)[ctx.inner_level]] = h;
  }
  for (auto& p : ctx.procs) {
    const img::ProcessEntry& e = *p->entry;
    if (e.ns_pids_size() <= ctx.inner_level)
      return MakeError(ErrorKind::kBadImage, 0, "pstree.img: pid %d is outside the root's pid "
                       "namespace", e.pid());
    auto it = host_of.find(e.ns_pids(ctx.inner_level));
    if (it == host_of.end())
      return Err("restore: pid %d (%d in the tree's pid namespace) not found under root %d",
                 e.pid(), e.ns_pids(ctx.inner_level), root);
    p->pid = it->second;
    if (p->pid != e.pid()) LOG_DEBUG("restore: pid %d is host pid %d", e.pid(), p->pid);
  }
  // The files' finalize step takes fds out of the restored processes: by their host pids (the
  // dumped ones may still be the original's, e.g. a migration source held frozen).
  if (ctx.fds) {
    std::map<pid_t, pid_t> moved;
    for (auto& p : ctx.procs)
      if (p->pid != p->entry->pid()) moved[p->entry->pid()] = p->pid;
    ctx.fds->SetHostPids(std::move(moved));
  }
  return Ok();
}

}  // namespace

TreeFork::~TreeFork() {
  if (forked_ && !released_) KillAll(created_, ctx_.root_host_pid);
}

Result<void> TreeFork::Prepare() {
  const RestoreOptions& opts = ctx_.opts;
  ASSIGN_OR_RETURN(base_fd_, ServiceFdBase(ctx_));
  // The report pipe sits just below the files' fds, on a number no restored process uses.
  int pfd[2];
  if (pipe2(pfd, O_CLOEXEC) < 0) return Errno("pipe");
  report_rd_.reset(pfd[0]);
  UniqueFd wr0(pfd[1]);
  report_fd_ = fcntl(wr0.get(), F_DUPFD_CLOEXEC, base_fd_ - 2);
  if (report_fd_ < 0) return Errno("dup report pipe to fd %d", base_fd_ - 2);
  report_wr_.reset(report_fd_);
  wr0.reset();
  if (ctx_.fds) {
    if (report_fd_ != base_fd_ - 2 && base_fd_ <= ctx_.fds->MaxFd())
      return MakeError(ErrorKind::kGeneric, EBUSY, "restore: fd %d (for the report pipe) is taken",
                       base_fd_ - 2);
    ctx_.fds->KeepThroughInstall({report_fd_, report_fd_ + 1});
  }
  // Whatever the coordinator has open above the report pipe now (inherited from its caller) must
  // not leak into the restored processes; the files' prepared fds come after this snapshot.
  if (auto l = fs::ListDir("/proc/self/fd"); l.ok())
    for (const auto& n : *l)
      if (atoi(n.c_str()) > report_fd_) env_.foreign_fds.push_back(atoi(n.c_str()));
  // With container hooks the files are prepared only once the root's namespaces are built.
  hooked_ = opts.root_clone_flags || opts.root_inside || opts.root_outside;
  if (hooked_) {  // the images dir at report_fd + 1 (below base_fd), after the snapshot
    UniqueFd d(open(opts.images_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (!d.valid()) return Errno("open %s", opts.images_dir.c_str());
    if (dup3(d.get(), report_fd_ + 1, O_CLOEXEC) < 0) return Errno("dup images dir");
    images_fd_.reset(report_fd_ + 1);
    ctx_.images_fd = report_fd_ + 1;
  }
  if (opts.userns_fd >= 0) {  // at report_fd - 1, kept by ChildMain until the process joins it
    const int below = report_fd_ - 1;
    if (fcntl(below, F_GETFD) >= 0 || below <= std::max(2, ctx_.fds ? ctx_.fds->MaxFd() : 2))
      return Err("restore: fd %d (below the report pipe) is in use", report_fd_ - 1);
    if (dup3(opts.userns_fd, report_fd_ - 1, O_CLOEXEC) < 0) return Errno("dup user namespace fd");
    userns_fd_.reset(report_fd_ - 1);
  }
  if (ctx_.fds && !hooked_) TRY_CTX(ctx_.fds->Prepare(base_fd_), "prepare files");
  TRY(CheckPidsFree(ctx_));
  if (hooked_) {
    int up[2], down[2];
    if (pipe2(up, O_CLOEXEC) < 0) return Errno("pipe");
    up_rd_.reset(up[0]);
    up_wr_.reset(up[1]);
    if (pipe2(down, O_CLOEXEC) < 0) return Errno("pipe");
    down_rd_.reset(down[0]);
    down_wr_.reset(down[1]);
  }
  env_.ctx = &ctx_;
  env_.report_fd = report_fd_;
  env_.forks = PlanForks(ctx_.tree);
  // Host pids to kill on failure (with a fresh pid namespace: known once forked).
  if (ctx_.inner_level == 0)
    for (const auto& e : ctx_.tree.processes()) created_.push_back(e.pid());
  return Ok();
}

Result<void> TreeFork::Run() {
  TRY(ForkRoot());
  LOG_DEBUG("restore: root %d cloned", ctx_.root_host_pid);
  // A net namespace made by the clone exists now: its TCP connections are locked before
  // root_forked may start filling it (addresses up) alongside the root's root_inside.
  if (hooked_ && ctx_.fds && (ctx_.opts.root_clone_flags & CLONE_NEWNET)) TRY(LockRootNetwork());
  if (ctx_.opts.root_forked) ctx_.opts.root_forked(ctx_.root_host_pid);
  if (hooked_) TRY(Handshake());
  report_wr_.reset();
  TRY(WaitReports());
  if (ctx_.fds) ctx_.fds->ClosePrepared();
  if (ctx_.inner_level > 0) {
    TRY(MapHostPids(ctx_, ctx_.root_host_pid));
    for (auto& p : ctx_.procs)
      if (p->pid != ctx_.root_host_pid) created_.push_back(p->pid);
  }
  return Ok();
}

Result<void> TreeFork::ForkRoot() {
  const RestoreOptions& opts = ctx_.opts;
  pid_t root = ctx_.tree.root_pid();
  fflush(nullptr);  // nothing buffered is written twice by the copies
  uint64_t root_flags = opts.root_clone_flags & ~(CLONE_NEWCGROUP | CLONE_NEWPID);
  pid_t got;
  // Detached without container hooks (the container verb waits for its init as our child): the
  // root gets its final parent at once.
  if (opts.detach && !hooked_) {
    // The root's parent-death signal (the rule, see RestoreAfterCreds in restore/pstate.cc): it
    // may fire only when the parent the root keeps dies. Detached, that parent is not us but our
    // reaper (the nearest child subreaper above us, or init), which adopts the root when we exit;
    // that reparenting would send the signal (the kernel's forget_original_parent). So the root
    // is forked by a short-lived intermediate: once that exits, the root already has its final
    // parent, and its signal is restored relative to it. Not yet a subreaper ourselves, or the
    // root would come to us.
    // The intermediate tells the root's host pid through a pipe.
    int hp[2];
    if (pipe2(hp, O_CLOEXEC) < 0) return Errno("pipe");
    UniqueFd hp_rd(hp[0]), hp_wr(hp[1]);
    pid_t mid = fork();
    if (mid < 0) return Errno("fork");
    if (mid == 0) {
      // After fork (after_clone.cc's rules): raw calls, then the root's ChildMain or _exit.
      pid_t r = CloneRoot(root_flags);
      if (r == 0) {
        close(report_rd_.get());
        ChildMain(env_, 0);
      }
      if (r > 0 && write(hp[1], &r, sizeof(r)) != sizeof(r)) _exit(1);
      _exit(r > 0 ? 0 : errno == EEXIST ? 17 : 1);
    }
    hp_wr.reset();
    int st = 0;
    while (waitpid(mid, &st, 0) < 0 && errno == EINTR) {
    }
    pid_t host_root = 0;
    if (read(hp_rd.get(), &host_root, sizeof(host_root)) == sizeof(host_root) && host_root > 0)
      root = host_root;
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
      if (WIFEXITED(st) && WEXITSTATUS(st) == 17)
        return MakeError(ErrorKind::kExists, EEXIST, "pid %d is in use", root);
      return Err("clone3 root pid %d failed (intermediate status %#x)", root, st);
    }
    got = root;
  } else {
    got = CloneRoot(root_flags);
    if (got < 0) {
      if (errno == EEXIST) return MakeError(ErrorKind::kExists, EEXIST, "pid %d is in use", root);
      return Errno("clone3 root pid %d", root);
    }
    if (got == 0) {
      // The root (after_clone.cc's rules from here on).
      if (hooked_) RootHandshake(ctx_, root, up_wr_.get(), down_rd_.get(), base_fd_);
      // The child's report fd number is the same; close the read end (not CLOEXEC-relevant).
      close(report_rd_.get());
      ChildMain(env_, 0);
    }
  }
  if (ctx_.inner_level > 0) {
    root = got;
    created_.push_back(got);
  }
  ctx_.root_host_pid = root;
  forked_ = true;
  // Orphans of a failed restore come to us (KillAll reaps them).
  prctl(PR_SET_CHILD_SUBREAPER, 1);
  return Ok();
}

// The root's clone3 (after_clone.cc's rules: raw calls only, the intermediate makes it too),
// into RestoreOptions::root_cgroup_fd when given, and again without where the kernel refuses
// CLONE_INTO_CGROUP. The root returns from it too: it finds root_born_into_cgroup as set before
// the call it returns from.
pid_t TreeFork::CloneRoot(uint64_t flags) {
  const int cg = ctx_.opts.root_cgroup_fd;
  ctx_.root_born_into_cgroup = cg >= 0;
  pid_t got = Clone3Tree(ctx_.tree.processes(0), 1, ctx_.inner_level, flags, cg);
  if (got < 0 && cg >= 0 && CloneIntoCgroupRefused(errno)) {
    ctx_.root_born_into_cgroup = false;
    got = Clone3Tree(ctx_.tree.processes(0), 1, ctx_.inner_level, flags);
  }
  return got;
}

// A fresh net namespace: its TCP connections are locked before anything brings its addresses
// up (a peer's retransmission would get a RST); Finalize unlocks.
Result<void> TreeFork::LockRootNetwork() {
  pid_t root = ctx_.root_host_pid;
  TRY_CTX(ctx_.fds->LockNetwork(root), "restore root %d: network lock", root);
  LOG_DEBUG("restore: root %d network locked", root);
  return Ok();
}

// The coordinator's side of the container hooks (RootHandshake in after_clone.cc).
Result<void> TreeFork::Handshake() {
  const RestoreOptions& opts = ctx_.opts;
  pid_t root = ctx_.root_host_pid;
  up_wr_.reset();
  down_rd_.reset();
  TRY(ReadHandshake(up_rd_.get(), root));
  LOG_DEBUG("restore: root %d built its namespaces", root);
  // A net namespace root_inside joined (made ahead): locked now, before the outside hook.
  if (ctx_.fds && opts.root_fresh_netns && !(opts.root_clone_flags & CLONE_NEWNET))
    TRY(LockRootNetwork());
  if (opts.root_outside) TRY_CTX(opts.root_outside(root), "restore root %d: outside", root);
  LOG_DEBUG("restore: root %d outside hook done", root);
  char go = 1;
  if (write(down_wr_.get(), &go, 1) != 1) return Errno("restore: wake root %d", root);
  TRY(ReadHandshake(up_rd_.get(), root));  // files prepared in the root
  LOG_DEBUG("restore: root %d prepared its files", root);
  up_rd_.reset();
  down_wr_.reset();
  return Ok();
}

// A report from every live process (zombies exit without one).
Result<void> TreeFork::WaitReports() {
  size_t want = ctx_.procs.size();
  std::set<pid_t> ready;
  auto deadline = Clock::now() + std::chrono::seconds(60);
  while (ready.size() < want) {
    pollfd pf{report_rd_.get(), POLLIN, 0};
    int left = static_cast<int>(
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count());
    if (left <= 0) return Err("restore: timed out waiting for the tree to be forked");
    int n = poll(&pf, 1, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return Errno("poll");
    if (n == 0) continue;
    Report rep;
    ssize_t r = read(report_rd_.get(), &rep, sizeof(rep));
    if (r == 0) return Err("restore: the tree died while being forked");
    if (r != sizeof(rep)) return Errno("read report");
    rep.msg[sizeof(rep.msg) - 1] = 0;
    if (rep.err != 0)
      return MakeError(rep.err == EEXIST ? ErrorKind::kExists : ErrorKind::kGeneric, rep.err,
                       "restore pid %d: %s", rep.pid, rep.msg);
    ready.insert(rep.pid);
  }
  return Ok();
}

}  // namespace godwit::restore
