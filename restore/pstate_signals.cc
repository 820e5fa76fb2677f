// Restore steps "sigactions" (all 64 dispositions, injected rt_sigaction) and "sigaltstack" (per
// thread). Both point into the process's own memory, so they run after "mm".
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common/fs.h"
#include "restore/pstate.h"
#include "restore/steps.h"

namespace godwit::restore {

namespace {

// SigCgt | SigIgn of a process: the signals not at SIG_DFL.
Result<uint64_t> NotDefault(pid_t pid) {
  std::string path = StrFormat("/proc/%d/status", pid);
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  uint64_t out = 0;
  int found = 0;
  for (const auto& line : fs::Split(text, '\n')) {
    if (line.rfind("SigCgt:", 0) == 0 || line.rfind("SigIgn:", 0) == 0) {
      out |= strtoull(line.c_str() + 7, nullptr, 16);
      found++;
    }
  }
  if (found != 2) return Err("%s: no SigCgt/SigIgn", path.c_str());
  return out;
}

}  // namespace

// The restored process starts as a copy of the coordinator, so its dispositions are the
// coordinator's own: a signal whose dumped disposition (handler, flags, restorer, mask) equals the
// coordinator's needs no call, as long as /proc agrees the process still has it (SigCgt/SigIgn).
// Every other signal is set by an injected rt_sigaction: exact, and usually only a few calls.
Result<void> RestoreSigactions(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  ASSIGN_OR_RETURN(uint64_t current, NotDefault(p.pid));
  remote::Remote* r = p.remote.get();
  bool seen[65] = {};
  for (const auto& a : ps.handlers().actions()) {
    int sig = a.signo();
    if (sig < 1 || sig > 64 || sig == SIGKILL || sig == SIGSTOP || seen[sig])
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: bad signal %d", p.pid, sig);
    seen[sig] = true;
    uint64_t mine[4] = {};
    if (syscall(SYS_rt_sigaction, sig, nullptr, mine, 8) == 0 && mine[0] == a.handler() &&
        mine[1] == a.flags() && mine[2] == a.restorer() && mine[3] == a.mask() &&
        ((current >> (sig - 1)) & 1) == (mine[0] != 0 ? 1u : 0u))
      continue;
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
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
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
    TRY_CTX(r->SyscallIn(p.HostTid(t.tid()), SYS_sigaltstack, r->scratch(), 0),
            "sigaltstack %#llx+%llu flags %#x in %d", (unsigned long long)a.sp(),
            (unsigned long long)a.size(), a.flags(), t.tid());
  }
  return Ok();
}

}  // namespace godwit::restore
