// Restore steps "sigactions" (all 64 dispositions, injected rt_sigaction) and "sigaltstack" (per
// thread). Both point into the process's own memory, so they run after "mm".
#include <signal.h>
#include <sys/syscall.h>

#include "restore/pstate.h"
#include "restore/steps.h"

namespace godwit::restore {

// Every signal is set, defaults included: the restored process starts as a copy of the
// coordinator and must not keep any of its dispositions.
Result<void> RestoreSigactions(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  bool seen[65] = {};
  for (const auto& a : ps.handlers().actions()) {
    int sig = a.signo();
    if (sig < 1 || sig > 64 || sig == SIGKILL || sig == SIGSTOP || seen[sig])
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: bad signal %d", p.pid, sig);
    seen[sig] = true;
    uint64_t ka[4] = {a.handler(), a.flags(), a.restorer(), a.mask()};
    TRY(r->Write(r->scratch(), ka, sizeof(ka)));
    TRY_CTX(r->Syscall(SYS_rt_sigaction, sig, r->scratch(), 0, 8), "rt_sigaction %d", sig);
  }
  for (int sig = 1; sig <= 64; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP || seen[sig]) continue;
    return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: no disposition for signal %d", p.pid,
                     sig);
  }
  return Ok();
}

Result<void> RestoreSigaltstack(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  for (const auto& t : ps.threads()) {
    stack_t ss{};
    const auto& a = t.altstack();
    if (a.flags() & SS_DISABLE) {
      ss.ss_flags = SS_DISABLE;
    } else {
      ss.ss_sp = reinterpret_cast<void*>(a.sp());
      ss.ss_size = a.size();
      ss.ss_flags = a.flags();
    }
    TRY(r->Write(r->scratch(), &ss, sizeof(ss)));
    TRY_CTX(r->SyscallIn(t.tid(), SYS_sigaltstack, r->scratch(), 0),
            "sigaltstack %#llx+%llu flags %#x in %d", (unsigned long long)a.sp(),
            (unsigned long long)a.size(), a.flags(), t.tid());
  }
  return Ok();
}

}  // namespace godwit::restore
