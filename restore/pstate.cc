// Restore steps for the simple kinds of process state: rlimits, cwd/root/umask, personality,
// comm, scheduling, process flags (child subreaper, THP), the post-creds flags (pdeathsig,
// dumpable). Every call that changes "current" is injected into the thread the state
// belongs to; scheduling attributes are set from outside (sched_setattr takes a tid).
#include "restore/pstate.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "common/pid_standin.h"
#include "common/scope_exit.h"
#include "common/sched_attr.h"
#include "files/files.h"
#include "restore/steps.h"

namespace godwit::restore {

Result<const img::ProcessState*> LoadPstate(const RestoreContext& ctx, const ProcessRestore& p) {
  if (p.pstate) return p.pstate.get();
  auto loaded = std::make_shared<img::ProcessState>();
  img::ProcessState& ps = *loaded;
  std::string name = StrFormat("pstate-%d.img", p.entry->pid());
  TRY_CTX(ctx.images->ReadOne(name, &ps), "read %s", name.c_str());
  if (ps.pid() != p.entry->pid())
    return MakeError(ErrorKind::kBadImage, 0, "%s: holds pid %d", name.c_str(), ps.pid());
  if (ps.threads_size() == 0 || ps.threads(0).tid() != p.entry->pid())
    return MakeError(ErrorKind::kBadImage, 0, "%s: main thread missing", name.c_str());
  // Every thread must be one the engine restored (core-<pid>.img), or injecting into it would
  // hit a task that is not ours.
  if (ps.threads_size() != p.core.threads_size())
    return MakeError(ErrorKind::kBadImage, 0, "%s: %d threads, core-%d.img has %d", name.c_str(),
                     ps.threads_size(), p.pid, p.core.threads_size());
  for (const auto& t : ps.threads()) {
    bool known = false;
    for (const auto& c : p.core.threads()) known = known || c.tid() == t.tid();
    if (!known)
      return MakeError(ErrorKind::kBadImage, 0, "%s: thread %d is not in core-%d.img", name.c_str(),
                       t.tid(), p.pid);
  }
  p.pstate = std::move(loaded);
  return p.pstate.get();
}

namespace {

std::string LimitStr(uint64_t v) {
  return v == RLIM_INFINITY ? std::string("unlimited") : StrFormat("%llu", (unsigned long long)v);
}

}  // namespace

// Policy (this machine has no CAP_SYS_RESOURCE, so a hard limit can only go down): every limit is
// set exactly as dumped when the kernel allows it. A hard limit that the kernel refuses to raise
// fails the restore with an error naming the limit and both values: quietly restoring a lower
// hard limit would change what the program may do later (a soft limit it raises would fail).
//
// Set last (CRIU too), just before seccomp and the registers: a low limit restored early would
// get in the way of the restore itself (RLIMIT_SIGPENDING of queued signals, RLIMIT_AS or
// RLIMIT_MEMLOCK of the memory, RLIMIT_NOFILE of fds opened by injected calls). The process sets
// them itself (injected prlimit64 on itself): from outside, prlimit on a process whose
// credentials are no longer ours needs CAP_SYS_RESOURCE.
// The limits a process has now, from /proc/PID/limits (one read, where an injected prlimit64
// per limit cost 0.6-0.9 ms a process): the kernel prints them in resource order after a header,
// the values in columns from 26 on, "unlimited" for RLIM_INFINITY. false if unreadable.
static bool ReadProcLimits(pid_t pid, rlimit (&out)[RLIM_NLIMITS]) {
  auto text = fs::ReadFile(StrFormat("/proc/%d/limits", pid));
  if (!text.ok()) return false;
  auto lines = fs::Split(*text, '\n');
  if (lines.size() < RLIM_NLIMITS + 1) return false;
  for (int i = 0; i < RLIM_NLIMITS; ++i) {
    const std::string& line = lines[i + 1];
    if (line.size() <= 26) return false;
    char soft[32], hard[32];
    if (sscanf(line.c_str() + 26, "%31s %31s", soft, hard) != 2) return false;
    auto value = [](const char* v, rlim_t* to) {
      if (!strcmp(v, "unlimited")) {
        *to = RLIM_INFINITY;
        return true;
      }
      char* end = nullptr;
      *to = strtoull(v, &end, 10);
      return end && *end == 0 && end != v;
    };
    if (!value(soft, &out[i].rlim_cur) || !value(hard, &out[i].rlim_max)) return false;
  }
  return true;
}

Result<void> RestoreRlimits(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  const uint64_t old_at = r->scratch(), new_at = r->scratch() + sizeof(rlimit);
  rlimit now[RLIM_NLIMITS];
  const bool known = ReadProcLimits(p.pid, now);
  for (const auto& l : ps.rlimits().limits()) {
    if (l.cur() > l.max())
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: %s soft %s above hard %s", p.pid,
                       l.name().c_str(), LimitStr(l.cur()).c_str(), LimitStr(l.max()).c_str());
    if (l.resource() < 0 || l.resource() >= RLIM_NLIMITS)
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: bad rlimit resource %d", p.pid,
                       l.resource());
    rlimit have{};
    if (known) {
      have = now[l.resource()];
    } else {
      uint64_t get[6] = {0, static_cast<uint64_t>(l.resource()), 0, old_at, 0, 0};
      ASSIGN_OR_RETURN(long g, r->RawSyscallIn(p.pid, SYS_prlimit64, get));
      if (g < 0) {
        errno = static_cast<int>(-g);
        return Errno("pid %d: prlimit64 get %s", p.pid, l.name().c_str());
      }
      TRY(r->Read(old_at, &have, sizeof(have)));
    }
    if (have.rlim_cur == l.cur() && have.rlim_max == l.max()) continue;
    rlimit want{l.cur(), l.max()};
    TRY(r->Write(new_at, &want, sizeof(want)));
    uint64_t set[6] = {0, static_cast<uint64_t>(l.resource()), new_at, 0, 0, 0};
    ASSIGN_OR_RETURN(long v, r->RawSyscallIn(p.pid, SYS_prlimit64, set));
    if (v == 0) continue;
    if (v == -EPERM)
      return MakeError(ErrorKind::kUnsupported, EPERM,
                       "%s: cannot restore hard limit %s (soft %s): this restore's hard limit is "
                       "%s and raising it needs CAP_SYS_RESOURCE",
                       l.name().c_str(), LimitStr(l.max()).c_str(), LimitStr(l.cur()).c_str(),
                       LimitStr(have.rlim_max).c_str());
    errno = static_cast<int>(-v);
    return Errno("pid %d: prlimit64 %s soft %s hard %s", p.pid, l.name().c_str(),
                 LimitStr(l.cur()).c_str(), LimitStr(l.max()).c_str());
  }
  return Ok();
}

namespace {

// A path call (mkdir, chmod, chdir, chroot, rmdir) run by the process (r: injected, resolved in
// its root and mount namespace) or by the coordinator (r null); the kernel's result, -errno.
Result<long> PathCall(remote::Remote* r, pid_t pid, long nr, const std::string& path,
                      uint64_t arg = 0) {
  if (!r) {
    long v = syscall(nr, path.c_str(), arg);
    return v < 0 ? -static_cast<long>(errno) : v;
  }
  ASSIGN_OR_RETURN(uint64_t at, r->WriteString(0, path));
  uint64_t args[6] = {at, arg, 0, 0, 0, 0};
  return r->RawSyscallIn(pid, nr, args);
}

// Recreates a removed directory for a moment (cwd01/cwd02: the process must be in a removed
// directory again): its missing parents (0700), then the directory with its mode (chmod: the
// umask does not apply). Something at its path now: a sibling name is used. *made: the created
// directories, the deepest last; *at: the directory to enter.
Result<void> MakeRemovedDir(remote::Remote* r, pid_t pid, const std::string& path, uint32_t mode,
                            std::vector<std::string>* made, std::string* at) {
  if (path.empty() || path[0] != '/' || path == "/")
    return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: removed directory \"%s\"", pid,
                     path.c_str());
  for (size_t i = path.find('/', 1); i != std::string::npos; i = path.find('/', i + 1)) {
    std::string parent = path.substr(0, i);
    ASSIGN_OR_RETURN(long v, PathCall(r, pid, SYS_mkdir, parent, 0700));
    if (v == 0) made->push_back(parent);
    else if (v != -EEXIST)
      return MakeError(ErrorKind::kGeneric, static_cast<int>(-v), "mkdir %s: %s", parent.c_str(),
                       strerror(static_cast<int>(-v)));
  }
  *at = path;
  for (int k = 0;; ++k) {
    if (k > 0) *at = StrFormat("%s.godwit-removed-%d-%d", path.c_str(), pid, k);
    ASSIGN_OR_RETURN(long v, PathCall(r, pid, SYS_mkdir, *at, 0700));
    if (v == 0) break;
    if (v != -EEXIST || k >= 100)
      return MakeError(ErrorKind::kGeneric, static_cast<int>(-v), "mkdir %s: %s", at->c_str(),
                       strerror(static_cast<int>(-v)));
  }
  made->push_back(*at);
  ASSIGN_OR_RETURN(long v, PathCall(r, pid, SYS_chmod, *at, mode & 07777));
  if (v < 0)
    return MakeError(ErrorKind::kGeneric, static_cast<int>(-v), "chmod %s %o: %s", at->c_str(),
                     mode, strerror(static_cast<int>(-v)));
  return Ok();
}

// Removes what MakeRemovedDir made, deepest first. Failing to: a warning (the process is right).
void RemoveMade(remote::Remote* r, pid_t pid, const std::vector<std::string>& made) {
  for (auto it = made.rbegin(); it != made.rend(); ++it) {
    auto v = PathCall(r, pid, SYS_rmdir, *it);
    if (!v.ok() || *v < 0)
      LOG_WARN("pid %d: cannot remove the recreated directory %s again", pid, it->c_str());
  }
}

}  // namespace

// The pid of a "/proc/PID[/...]" path whose process is gone here, or 0.
static pid_t DeadProcPid(const std::string& path) {
  if (path.rfind("/proc/", 0) != 0) return 0;
  size_t end = 6;
  while (end < path.size() && path[end] >= '0' && path[end] <= '9') end++;
  if (end == 6 || end - 6 >= 10 || (end < path.size() && path[end] != '/')) return 0;
  pid_t pid = atoi(path.c_str() + 6);
  return kill(pid, 0) < 0 && errno == ESRCH ? pid : 0;
}

// chroot first (the root is a path in the dumper's view, resolved from the restorer's root),
// then chdir to the cwd as the process saw it, under its new root (a cwd outside the root: in
// our view, before the chroot). chroot needs CAP_SYS_CHROOT, so this runs before "creds". A
// removed root or cwd is recreated, entered and removed again: a removed root from here (its
// path is in our view), a removed cwd by the process.
Result<void> RestoreFs(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  const auto& fs = ps.fs();
  if (fs.cwd_outside_root()) {
    // A cwd outside the root (chroot without a chdir, zdtm chroot): entered before the chroot,
    // which keeps it.
    ASSIGN_OR_RETURN(uint64_t cd, r->WriteString(0, fs.cwd()));
    TRY_CTX(r->Syscall(SYS_chdir, cd), "chdir %s (outside root %s)", fs.cwd().c_str(),
            fs.root().c_str());
  }
  if (fs.root_deleted()) {
    std::vector<std::string> root_made;
    std::string at;
    TRY_CTX(MakeRemovedDir(nullptr, p.pid, fs.root(), fs.root_mode(), &root_made, &at),
            "removed root %s", fs.root().c_str());
    // Removed again right after the chroot (also on failure); "/" still resolves to it.
    ScopeExit cleanup([&] { RemoveMade(nullptr, p.pid, root_made); });
    ASSIGN_OR_RETURN(uint64_t a, r->WriteString(0, at));
    TRY_CTX(r->Syscall(SYS_chroot, a), "chroot %s (removed)", at.c_str());
  } else if (!fs.root().empty() && fs.root() != "/") {
    ASSIGN_OR_RETURN(uint64_t at, r->WriteString(0, fs.root()));
    TRY_CTX(r->Syscall(SYS_chroot, at), "chroot %s", fs.root().c_str());
  }
  int open_dir = fs.cwd_deleted() && ctx.fds && fs.cwd_ino()
                     ? ctx.fds->RemovedDirFd(p.entry->pid(), fs.cwd_dev(), fs.cwd_ino())
                     : -1;
  if (open_dir >= 0) {
    // Also open (zdtm cwd02): files/ restored it as a removed directory; entering it through
    // that fd keeps cwd and fd one directory.
    TRY_CTX(r->Syscall(SYS_fchdir, open_dir), "fchdir %d (removed cwd %s, also open)", open_dir,
            fs.cwd().c_str());
  } else if (fs.cwd_deleted() && DeadProcPid(fs.cwd()) > 0) {
    // The cwd was /proc/PID of a process that died before the dump (zdtm unhashed_proc): entered
    // through a stand-in with that pid, which then goes (getcwd says ENOENT again).
    ASSIGN_OR_RETURN(PidStandIn standin, PidStandIn::Make(DeadProcPid(fs.cwd())));
    ASSIGN_OR_RETURN(long cd, PathCall(r, p.pid, SYS_chdir, fs.cwd()));
    if (cd < 0)
      return MakeError(ErrorKind::kGeneric, static_cast<int>(-cd), "chdir %s (a dead process's "
                       "/proc entry): %s", fs.cwd().c_str(), strerror(static_cast<int>(-cd)));
  } else if (fs.cwd_deleted()) {
    std::vector<std::string> made;
    std::string at;
    auto mk = MakeRemovedDir(r, p.pid, fs.cwd(), fs.cwd_mode(), &made, &at);
    Result<long> cd = 0L;
    if (mk.ok()) cd = PathCall(r, p.pid, SYS_chdir, at);
    RemoveMade(r, p.pid, made);
    TRY_CTX(std::move(mk), "removed cwd %s", fs.cwd().c_str());
    if (!cd.ok()) return std::move(cd.error().wrap("chdir " + at));
    if (*cd < 0)
      return MakeError(ErrorKind::kGeneric, static_cast<int>(-*cd), "chdir %s (removed cwd): %s",
                       at.c_str(), strerror(static_cast<int>(-*cd)));
  } else if (!fs.cwd().empty() && !fs.cwd_outside_root()) {
    ASSIGN_OR_RETURN(uint64_t at, r->WriteString(0, fs.cwd()));
    TRY_CTX(r->Syscall(SYS_chdir, at), "chdir %s (under root %s)", fs.cwd().c_str(),
            fs.root().c_str());
  }
  TRY_CTX(r->Syscall(SYS_umask, fs.umask() & 0777), "umask %o", fs.umask());
  return Ok();
}

Result<void> RestorePersonality(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  TRY_CTX(p.remote->Syscall(SYS_personality, ps.personality()), "personality %#x",
          ps.personality());
  return Ok();
}

// The names come from core-<pid>.img (the engine dumps them with the registers).
Result<void> RestoreComm(RestoreContext&, ProcessRestore& p) {
  remote::Remote* r = p.remote.get();
  for (const auto& t : p.core.threads()) {
    if (t.comm().empty()) continue;
    char name[16] = {};
    memcpy(name, t.comm().data(), std::min<size_t>(t.comm().size(), 15));
    TRY(r->Write(r->scratch(), name, sizeof(name)));
    TRY_CTX(r->SyscallIn(p.HostTid(t.tid()), SYS_prctl, PR_SET_NAME, r->scratch()), "comm of %d", t.tid());
  }
  return Ok();
}

// Timer slack first: the kernel ignores (and reports 0 for) the slack of real-time tasks.
Result<void> RestoreSched(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  for (const auto& t : ps.threads()) {
    if (t.timer_slack_ns() != 0)
      TRY_CTX(r->SyscallIn(p.HostTid(t.tid()), SYS_prctl, PR_SET_TIMERSLACK, t.timer_slack_ns()),
              "timer slack of %d", t.tid());
  }
  return Ok();
}

Result<void> ApplySchedAttrs(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  for (const auto& t : ps.threads()) {
    const auto& s = t.sched();
    SchedAttr sa{};
    sa.size = sizeof(sa);
    sa.sched_policy = s.policy();
    // Only the flags sched_setattr takes back (SCHED_FLAG_RESET_ON_FORK, RECLAIM, DL_OVERRUN,
    // UTIL_CLAMP); the kernel reports no others.
    sa.sched_flags = s.flags();
    sa.sched_nice = s.nice();
    sa.sched_priority = s.priority();
    sa.sched_runtime = s.runtime();
    sa.sched_deadline = s.deadline();
    sa.sched_period = s.period();
    sa.sched_util_min = s.util_min();
    sa.sched_util_max = s.util_max();
    if (syscall(SYS_sched_setattr, p.HostTid(t.tid()), &sa, 0) < 0) {
      // Without util clamping support the UTIL_CLAMP flags are refused: retry without them.
      sa.sched_flags &= ~0x60ULL;
      if (syscall(SYS_sched_setattr, p.HostTid(t.tid()), &sa, 0) < 0)
        return Errno("sched_setattr %d policy %u nice %d prio %u", t.tid(), s.policy(), s.nice(),
                     s.priority());
    }
    // Real-time policies ignore sched_nice, yet keep a nice value for a later switch back.
    if (setpriority(PRIO_PROCESS, static_cast<id_t>(p.HostTid(t.tid())), s.nice()) < 0)
      return Errno("setpriority %d nice %d", t.tid(), s.nice());
    if (!t.cpu_affinity().empty()) {
      cpu_set_t cpus;
      CPU_ZERO(&cpus);
      memcpy(&cpus, t.cpu_affinity().data(), std::min(t.cpu_affinity().size(), sizeof(cpus)));
      // None of its CPUs here (another machine, a narrower cpuset): it keeps the ones it has.
      if (sched_setaffinity(p.HostTid(t.tid()), sizeof(cpus), &cpus) < 0)
        LOG_WARN("restore: thread %d keeps its CPU affinity: sched_setaffinity: %s", t.tid(),
                 strerror(errno));
    }
  }
  return Ok();
}

Result<void> RestoreProcFlags(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  TRY_CTX(r->Syscall(SYS_prctl, PR_SET_CHILD_SUBREAPER, ps.child_subreaper() ? 1 : 0),
          "PR_SET_CHILD_SUBREAPER");
  if (ps.thp_disable() & 1) {
    TRY_CTX(r->Syscall(SYS_prctl, PR_SET_THP_DISABLE, 1, ps.thp_disable() & ~1U, 0, 0),
            "PR_SET_THP_DISABLE %#x", ps.thp_disable());
  } else {
    TRY_CTX(r->Syscall(SYS_prctl, PR_SET_THP_DISABLE, 0, 0, 0, 0), "PR_SET_THP_DISABLE 0");
  }
  // oom_score_adj, written from outside. Below the value the restorer's process inherited, the
  // kernel wants CAP_SYS_RESOURCE (oom_score_adj_min), which this machine lacks: then a warning,
  // the process keeps the lowest value allowed (like CRIU, which does not fail on it either).
  // membarrier registrations of the mm (private expedited & co.): registered again, each once.
  for (uint32_t bit = 1; bit != 0 && bit <= ps.membarrier_registrations(); bit <<= 1) {
    if (!(ps.membarrier_registrations() & bit)) continue;
    TRY_CTX(r->Syscall(SYS_membarrier, bit, 0, 0), "pid %d: membarrier register %#x", p.pid, bit);
  }
  // loginuid: only the process itself may write it (proc_loginuid_write), with
  // CAP_AUDIT_CONTROL, which it still has here (before "creds").
  if (ps.has_loginuid()) {
    std::string lpath = StrFormat("/proc/%d/loginuid", p.pid);
    auto now = fs::ReadFile(lpath);
    if (!now.ok() || strtoul(fs::Trim(*now).c_str(), nullptr, 10) != ps.loginuid()) {
      ASSIGN_OR_RETURN(uint64_t name, r->WriteString(0, "/proc/self/loginuid"));
      ASSIGN_OR_RETURN(long fd, r->Syscall(SYS_openat, AT_FDCWD, name, O_WRONLY | O_CLOEXEC));
      std::string v = StrFormat("%u", ps.loginuid());
      TRY(r->Write(r->scratch() + 256, v.data(), v.size()));
      auto w = r->Syscall(SYS_write, fd, r->scratch() + 256, v.size());
      TRY(r->Syscall(SYS_close, fd));
      TRY_CTX(std::move(w), "pid %d: loginuid %u", p.pid, ps.loginuid());
    }
  }
  std::string path = StrFormat("/proc/%d/oom_score_adj", p.pid);
  auto have = fs::ReadFile(path);
  if (have.ok() && atoi(fs::Trim(*have).c_str()) != ps.oom_score_adj()) {
    auto w = fs::WriteFile(path, StrFormat("%d", ps.oom_score_adj()));
    if (!w.ok())
      LOG_WARN("pid %d: oom_score_adj %d not restored (%s)", p.pid, ps.oom_score_adj(),
               w.error().to_string().c_str());
  }
  return Ok();
}

// A credential change clears the parent-death signal and resets "dumpable" (commit_creds), so
// both are set after "creds".
Result<void> RestoreAfterCreds(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  for (const auto& t : ps.threads())
    TRY_CTX(r->SyscallIn(p.HostTid(t.tid()), SYS_prctl, PR_SET_PDEATHSIG, t.pdeathsig()),
            "PR_SET_PDEATHSIG %d in %d", t.pdeathsig(), t.tid());
  if (ps.dumpable() <= 1) {
    TRY_CTX(r->Syscall(SYS_prctl, PR_SET_DUMPABLE, ps.dumpable()), "PR_SET_DUMPABLE %u",
            ps.dumpable());
  } else {
    // SUID_DUMP_ROOT (2) comes only from exec with fs.suid_dumpable=2; prctl cannot set it.
    LOG_WARN("pid %d: dumpable %u cannot be set back; left at the kernel's value", p.pid,
             ps.dumpable());
  }
  return Ok();
}

}  // namespace godwit::restore
