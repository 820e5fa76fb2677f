// Restore step "seccomp": each thread's filter chain, installed by injected seccomp() in that
// thread, oldest filter first. Runs after everything else that injects but "core": a filter
// filters injected calls too, so only core's few calls (rseq, set_tid_address, munmap of the
// scratch area) pass through it; a filter that refuses those fails the restore there.
//
// Threads get their own copy of the chain (the kernel shares inherited filters between threads;
// the filtering is the same). Installing needs no_new_privs or CAP_SYS_ADMIN in the thread, which
// by now has its dumped credentials: a thread that holds filters but neither (it dropped
// CAP_SYS_ADMIN after installing them) cannot be restored; it fails clearly instead of restoring
// a weaker sandbox.
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

}  // namespace

namespace {

// A thread whose dumped credentials can install filters (no_new_privs or CAP_SYS_ADMIN).
bool CanInstall(const img::ThreadState& t) {
  return t.creds().no_new_privs() || (t.creds().cap_effective() & (1ULL << CAP_SYS_ADMIN));
}

Result<void> InstallSeccomp(RestoreContext& ctx, ProcessRestore& p, bool early) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  // Early (before "creds"): the filters of threads that gave up CAP_SYS_ADMIN without
  // no_new_privs (runc's and Podman's default: a seccomp profile, a reduced capability set) go
  // in while the thread still has the coordinator's privileges. The calls injected afterwards
  // (creds, signals, rlimits, core) bypass them because the seize suspended seccomp
  // (PTRACE_O_SUSPEND_SECCOMP); without that suspension they are left to the late step, which
  // refuses them clearly.
  const bool suspended = SeccompSuspended();
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
    for (int i = 0; i < sc.filters_size(); ++i) {
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
      uint64_t flags = sc.filters(i).flags() & SECCOMP_FILTER_FLAG_LOG;
      TRY_CTX(r->SyscallIn(p.HostTid(t.tid()), SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, r->scratch()),
              "thread %d: seccomp filter #%d (%zu insns)", t.tid(), i, n);
    }
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
