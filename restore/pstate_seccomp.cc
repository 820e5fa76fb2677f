// Restore step "seccomp": each thread's filter chain, installed by injected seccomp() in that
// thread, oldest filter first. Runs after everything else that injects but "core": a filter
// filters injected calls too, so only core's few calls (rseq, set_tid_address, munmap of the
// scratch area) pass through it; a filter that refuses those fails the restore there.
//
// The oldest filters all threads have in common are installed once with TSYNC (SharedPrefix): the
// kernel shares such a chain, and a TSYNC filter the process installs later needs it shared
// (zdtm seccomp_filter_tsync hung: the TSYNC failed, a thread it should have filtered ran on).
// The rest of each thread's chain is its own. Installing needs no_new_privs or CAP_SYS_ADMIN in
// the thread, which by now has its dumped credentials: a thread that holds filters but neither
// (it dropped CAP_SYS_ADMIN after installing them) cannot be restored; it fails clearly instead
// of restoring a weaker sandbox.
//
// Strict mode (read, write, _exit, sigreturn only) is set by an injected prctl too: the calls
// "core" injects afterwards pass because the restore seized the process with
// PTRACE_O_SUSPEND_SECCOMP (the mode bites once we detach). That needs CAP_SYS_ADMIN and an
// unconfined coordinator; without them strict mode is refused (it would kill the process).
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#include <algorithm>
#include <climits>

#include "restore/pstate.h"
#include "restore/steps.h"

namespace godwit::restore {
namespace {

// Whether our seizes got PTRACE_O_SUSPEND_SECCOMP: CAP_SYS_ADMIN, and no seccomp of our own.
bool SeccompSuspended() {
  struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct d[2] = {};
  if (syscall(SYS_capget, &h, d) < 0) return false;
  if (!(d[0].effective & (1U << CAP_SYS_ADMIN))) return false;
  return prctl(PR_GET_SECCOMP) == 0;
}

// Filter i of thread t, installed by an injected seccomp() in host thread tid with extra flags.
Result<void> InstallFilter(RestoreContext& ctx, ProcessRestore& p, const img::ThreadState& t,
                           int i, pid_t tid, uint64_t extra) {
  (void)ctx;
  remote::Remote* r = p.remote.get();
  const auto& sc = t.seccomp();
  const std::string& insns = sc.filters(i).insns();
  size_t n = insns.size() / sizeof(sock_filter);
  if (n == 0 || n > BPF_MAXINSNS || insns.size() % sizeof(sock_filter) != 0)
    return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: thread %d: bad filter #%d", p.pid,
                     t.tid(), i);
  struct {
    uint16_t len;
    uint16_t pad[3];
    uint64_t filter;
  } prog = {static_cast<uint16_t>(n), {}, r->scratch() + 64};
  TRY(r->Write(r->scratch(), &prog, sizeof(prog)));
  TRY(r->Write(r->scratch() + 64, insns.data(), insns.size()));
  // Only the flags that describe the filter itself; TSYNC & co. were about installing it.
  uint64_t flags = (sc.filters(i).flags() & SECCOMP_FILTER_FLAG_LOG) | extra;
  ASSIGN_OR_RETURN(long ret, r->SyscallIn(tid, SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags,
                                          r->scratch()));
  if (ret != 0)  // TSYNC: the tid of a thread whose chain is not an ancestor
    return MakeError(ErrorKind::kGeneric, 0, "thread %d: seccomp filter #%d: TSYNC refused by %ld",
                     t.tid(), i, ret);
  return Ok();
}

bool SameFilter(const img::SeccompFilter& a, const img::SeccompFilter& b) {
  return a.insns() == b.insns() && a.flags() == b.flags();
}

// How many of the oldest filters every thread has in common (all threads in filter mode): the
// kernel shares those between the threads (they were installed before the threads were made, or
// with TSYNC), and a later TSYNC in the restored process needs them shared again.
int SharedPrefix(const img::ProcessState& ps) {
  if (ps.threads_size() < 2) return 0;
  int n = INT32_MAX;
  const auto& first = ps.threads(0).seccomp();
  for (const auto& t : ps.threads()) {
    const auto& sc = t.seccomp();
    if (sc.mode() != SECCOMP_MODE_FILTER) return 0;
    int k = 0;
    while (k < sc.filters_size() && k < first.filters_size() &&
           SameFilter(sc.filters(k), first.filters(k)))
      ++k;
    n = std::min(n, k);
  }
  return n == INT32_MAX ? 0 : n;
}

}  // namespace

namespace {

// A thread whose dumped credentials can install filters (no_new_privs or CAP_SYS_ADMIN).
bool CanInstall(const img::ThreadState& t) {
  return t.creds().no_new_privs() || (t.creds().cap_effective() & (1ULL << CAP_SYS_ADMIN));
}

Result<void> InstallSeccomp(RestoreContext& ctx, ProcessRestore& p, bool early) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  // Early (before "creds"): the filters of threads that gave up CAP_SYS_ADMIN without
  // no_new_privs (runc's and Podman's default: a seccomp profile, a reduced capability set) go
  // in while the thread still has the coordinator's privileges. The calls injected afterwards
  // (creds, signals, rlimits, core) bypass them because the seize suspended seccomp
  // (PTRACE_O_SUSPEND_SECCOMP); without that suspension they are left to the late step, which
  // refuses them clearly.
  const bool suspended = SeccompSuspended();
  // The common oldest filters go in once, from the first thread with TSYNC: one shared chain, as
  // the kernel had it (no thread has a filter yet, so TSYNC cannot be refused). In the step
  // (early or late) where the first thread's own filters go.
  int shared = SharedPrefix(ps);
  if (shared > 0) {
    const auto& t0 = ps.threads(0);
    if ((suspended && !CanInstall(t0)) == early) {
      if (!early && !CanInstall(t0))
        return MakeError(ErrorKind::kUnsupported, 0,
                         "thread %d: seccomp filters but neither no_new_privs nor CAP_SYS_ADMIN "
                         "to install them again",
                         t0.tid());
      for (int i = 0; i < shared; ++i)
        TRY(InstallFilter(ctx, p, t0, i, p.HostTid(t0.tid()), SECCOMP_FILTER_FLAG_TSYNC));
    }
  }
  for (const auto& t : ps.threads()) {
    const auto& sc = t.seccomp();
    if (sc.mode() == SECCOMP_MODE_DISABLED) continue;
    if (sc.mode() == SECCOMP_MODE_FILTER) {
      bool want_early = suspended && !CanInstall(t);
      if (want_early != early) continue;
    } else if (early) {
      continue;
    }
    if (sc.mode() == SECCOMP_MODE_STRICT) {
      if (!SeccompSuspended())
        return MakeError(ErrorKind::kUnsupported, 0,
                         "thread %d: seccomp strict mode needs a restore with CAP_SYS_ADMIN "
                         "(PTRACE_O_SUSPEND_SECCOMP)",
                         t.tid());
      TRY_CTX(r->SyscallIn(p.HostTid(t.tid()), SYS_prctl, PR_SET_SECCOMP, SECCOMP_MODE_STRICT),
              "thread %d: seccomp strict mode", t.tid());
      continue;
    }
    if (sc.mode() != SECCOMP_MODE_FILTER)
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: thread %d: seccomp mode %u",
                       p.pid, t.tid(), sc.mode());
    if (!early && !CanInstall(t))
      return MakeError(ErrorKind::kUnsupported, 0,
                       "thread %d: %d seccomp filters but neither no_new_privs nor CAP_SYS_ADMIN "
                       "to install them again",
                       t.tid(), sc.filters_size());
    for (int i = shared; i < sc.filters_size(); ++i)
      TRY_CTX(InstallFilter(ctx, p, t, i, p.HostTid(t.tid()), 0), "thread %d: seccomp filter #%d",
              t.tid(), i);
  }
  return Ok();
}

}  // namespace

Result<void> RestoreSeccompEarly(RestoreContext& ctx, ProcessRestore& p) {
  return InstallSeccomp(ctx, p, /*early=*/true);
}

Result<void> RestoreSeccomp(RestoreContext& ctx, ProcessRestore& p) {
  return InstallSeccomp(ctx, p, /*early=*/false);
}

}  // namespace godwit::restore
