// Restore steps for the simple kinds of process state: rlimits, cwd/root/umask, personality,
// comm, scheduling, process flags (child subreaper, THP), the post-creds flags (pdeathsig,
// dumpable). Every call that changes "current" is injected into the thread the state
// belongs to; scheduling attributes are set from outside (sched_setattr takes a tid).
#include "restore/pstate.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "common/log.h"
#include "common/sched_attr.h"
#include "restore/steps.h"

namespace godwit::restore {

Result<img::ProcessState> LoadPstate(const RestoreContext& ctx, const ProcessRestore& p) {
  img::ProcessState ps;
  std::string name = StrFormat("pstate-%d.img", p.pid);
  TRY_CTX(ctx.images->ReadOne(name, &ps), "read %s", name.c_str());
  if (ps.pid() != p.pid)
    return MakeError(ErrorKind::kBadImage, 0, "%s: holds pid %d", name.c_str(), ps.pid());
  if (ps.threads_size() == 0 || ps.threads(0).tid() != p.pid)
    return MakeError(ErrorKind::kBadImage, 0, "%s: main thread missing", name.c_str());
  return ps;
}

Result<const img::ThreadState*> FindThread(const img::ProcessState& ps, pid_t tid) {
  for (const auto& t : ps.threads())
    if (t.tid() == tid) return &t;
  return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: no thread %d", ps.pid(), tid);
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
Result<void> RestoreRlimits(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  for (const auto& l : ps.rlimits().limits()) {
    if (l.cur() > l.max())
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: %s soft %s above hard %s", p.pid,
                       l.name().c_str(), LimitStr(l.cur()).c_str(), LimitStr(l.max()).c_str());
    uint64_t want[2] = {l.cur(), l.max()};
    TRY(r->Write(r->scratch(), want, sizeof(want)));
    uint64_t args[6] = {0, static_cast<uint64_t>(l.resource()), r->scratch(),
                        r->scratch() + sizeof(want), 0, 0};
    ASSIGN_OR_RETURN(long ret, r->RawSyscallIn(p.pid, SYS_prlimit64, args));
    if (ret == 0) continue;
    uint64_t have[2] = {};
    TRY(r->Read(r->scratch() + sizeof(want), have, sizeof(have)));
    if (ret == -EPERM)
      return MakeError(ErrorKind::kUnsupported, EPERM,
                       "%s: cannot restore hard limit %s (soft %s): this restore's hard limit is "
                       "%s and raising it needs CAP_SYS_RESOURCE",
                       l.name().c_str(), LimitStr(l.max()).c_str(), LimitStr(l.cur()).c_str(),
                       LimitStr(have[1]).c_str());
    errno = static_cast<int>(-ret);
    return Errno("prlimit64 %s soft %s hard %s", l.name().c_str(), LimitStr(l.cur()).c_str(),
                 LimitStr(l.max()).c_str());
  }
  return Ok();
}

// chdir before chroot: the dumped cwd is a path in the dumper's view, as is the root; chroot
// leaves the cwd alone. chroot needs CAP_SYS_CHROOT, so this runs before "creds".
Result<void> RestoreFs(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  const auto& fs = ps.fs();
  if (!fs.cwd().empty()) {
    ASSIGN_OR_RETURN(uint64_t at, r->WriteString(0, fs.cwd()));
    TRY_CTX(r->Syscall(SYS_chdir, at), "chdir %s", fs.cwd().c_str());
  }
  if (!fs.root().empty() && fs.root() != "/") {
    ASSIGN_OR_RETURN(uint64_t at, r->WriteString(0, fs.root()));
    TRY_CTX(r->Syscall(SYS_chroot, at), "chroot %s", fs.root().c_str());
  }
  TRY_CTX(r->Syscall(SYS_umask, fs.umask() & 0777), "umask %o", fs.umask());
  return Ok();
}

Result<void> RestorePersonality(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
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
    TRY_CTX(r->SyscallIn(t.tid(), SYS_prctl, PR_SET_NAME, r->scratch()), "comm of %d", t.tid());
  }
  return Ok();
}

// Timer slack first: the kernel ignores (and reports 0 for) the slack of real-time tasks.
Result<void> RestoreSched(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  for (const auto& t : ps.threads()) {
    const auto& s = t.sched();
    if (t.timer_slack_ns() != 0)
      TRY_CTX(r->SyscallIn(t.tid(), SYS_prctl, PR_SET_TIMERSLACK, t.timer_slack_ns()),
              "timer slack of %d", t.tid());
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
    if (syscall(SYS_sched_setattr, t.tid(), &sa, 0) < 0) {
      // Without util clamping support the UTIL_CLAMP flags are refused: retry without them.
      sa.sched_flags &= ~0x60ULL;
      if (syscall(SYS_sched_setattr, t.tid(), &sa, 0) < 0)
        return Errno("sched_setattr %d policy %u nice %d prio %u", t.tid(), s.policy(), s.nice(),
                     s.priority());
    }
    // Real-time policies ignore sched_nice, yet keep a nice value for a later switch back.
    if (setpriority(PRIO_PROCESS, static_cast<id_t>(t.tid()), s.nice()) < 0)
      return Errno("setpriority %d nice %d", t.tid(), s.nice());
  }
  return Ok();
}

Result<void> RestoreProcFlags(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  TRY_CTX(r->Syscall(SYS_prctl, PR_SET_CHILD_SUBREAPER, ps.child_subreaper() ? 1 : 0),
          "PR_SET_CHILD_SUBREAPER");
  if (ps.thp_disable() & 1) {
    TRY_CTX(r->Syscall(SYS_prctl, PR_SET_THP_DISABLE, 1, ps.thp_disable() & ~1U, 0, 0),
            "PR_SET_THP_DISABLE %#x", ps.thp_disable());
  } else {
    TRY_CTX(r->Syscall(SYS_prctl, PR_SET_THP_DISABLE, 0, 0, 0, 0), "PR_SET_THP_DISABLE 0");
  }
  return Ok();
}

// A credential change clears the parent-death signal and resets "dumpable" (commit_creds), so
// both are set after "creds".
Result<void> RestoreAfterCreds(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  for (const auto& t : ps.threads())
    TRY_CTX(r->SyscallIn(t.tid(), SYS_prctl, PR_SET_PDEATHSIG, t.pdeathsig()),
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
