#include "restore/attach.h"

#include <signal.h>
#include <sys/auxv.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <map>

#include "common/log.h"
#include "common/proc.h"
#include "common/timing.h"
#include "restore/pstate.h"

namespace godwit::restore {
namespace {

// An address range free in both the current layout of the process and its dumped one (the
// scratch area must survive the "mm" step, which rebuilds the dumped layout around it).
Result<uint64_t> FindArea(pid_t pid, const img::MmEntry& mm, size_t size) {
  ASSIGN_OR_RETURN(auto cur, proc::ReadMaps(pid));
  std::vector<std::pair<uint64_t, uint64_t>> used;
  for (const auto& m : cur) used.push_back({m.start, m.end});
  for (const auto& v : mm.vmas()) used.push_back({v.start(), v.end()});
  std::sort(used.begin(), used.end());
  const uint64_t guard = 1ULL << 20;
  uint64_t cand = 1ULL << 32;
  for (const auto& [s, e] : used) {
    if (e + guard <= cand) continue;
    if (cand + size + guard <= s) break;
    cand = std::max<uint64_t>(cand, (e + guard + (1ULL << 20) - 1) & ~((1ULL << 20) - 1));
  }
  if (cand + size >= (1ULL << 47)) return Err("pid %d: no free room for the scratch area", pid);
  return cand;
}

// A `syscall` instruction in our own [vdso], for Remote's bootstrap (0: none found, Remote
// searches the process). The restored processes are copies of this one until their "mm" step:
// their vdso is ours, at our address, so it is found once here rather than by reading every
// process's maps and vdso.
uint64_t OwnVdsoSyscall() {
  static const uint64_t at = [] {
    const uint64_t base = getauxval(AT_SYSINFO_EHDR);
    if (base == 0) return uint64_t{0};
    auto maps = proc::ReadMaps(getpid());
    if (!maps.ok()) return uint64_t{0};
    for (const auto& m : *maps) {
      if (m.start != base || m.path != "[vdso]") continue;
      const auto* b = reinterpret_cast<const unsigned char*>(m.start);
      for (uint64_t i = 0; i + 1 < m.end - m.start; ++i)
        if (b[i] == 0x0f && b[i + 1] == 0x05) return m.start + i;
    }
    return uint64_t{0};
  }();
  return at;
}

// The signal that stops p again: the one it was stopped with, unless p now handles, ignores or
// blocks it (then it would not stop p): SIGSTOP, which cannot be caught.
int StopSignal(const RestoreContext& ctx, const ProcessRestore& p) {
  int sig = p.entry->stop_signo();
  if (sig <= 0 || sig == SIGSTOP || sig > 31) return SIGSTOP;
  if (p.core.threads(0).blocked() & (1ULL << (sig - 1))) return SIGSTOP;
  auto ps = LoadPstate(ctx, p);
  if (!ps.ok()) return SIGSTOP;
  for (const auto& a : (*ps)->handlers().actions())
    if (a.signo() == sig && a.handler() != 0) return SIGSTOP;  // SIG_DFL is 0
  return sig;
}

}  // namespace

Result<void> SeizeTree(RestoreContext& ctx, int report_fd) {
  // Every process seized and interrupted first, then each stop waited for: the processes get
  // to their stops at the same time (each needs a core for it), not one after the other.
  for (auto& p : ctx.procs) {
    // PTRACE_O_SUSPEND_SECCOMP: the restored filters must not see the calls injected after the
    // "seccomp" step (it needs CAP_SYS_ADMIN: without it, seize without and hope).
    const unsigned long opts = PTRACE_O_TRACECLONE | PTRACE_O_TRACESYSGOOD | PTRACE_O_EXITKILL;
    long rc = ptrace(PTRACE_SEIZE, p->pid, nullptr, opts | PTRACE_O_SUSPEND_SECCOMP);
    if (rc < 0 && errno == EPERM) rc = ptrace(PTRACE_SEIZE, p->pid, nullptr, opts);
    if (rc < 0) {
      if (errno == ESRCH)
        return MakeError(ErrorKind::kNotFound, ESRCH, "seize restored pid %d: gone", p->pid);
      return Errno("seize restored pid %d", p->pid);
    }
    p->attached.push_back(p->pid);
    if (ptrace(PTRACE_INTERRUPT, p->pid, nullptr, nullptr) < 0)
      return Errno("PTRACE_INTERRUPT restored pid %d", p->pid);
  }
  for (auto& p : ctx.procs) {
    // The interrupt's stop (PTRACE_EVENT_STOP), or first a signal-delivery stop that raced with
    // it: resumed with its signal, which stays pending (remote::SeizeAndInterrupt's loop).
    for (;;) {
      ASSIGN_OR_RETURN(int status, remote::WaitStop(p->pid));
      if ((status >> 16) == PTRACE_EVENT_STOP) break;
      int sig = WSTOPSIG(status);
      if (ptrace(PTRACE_CONT, p->pid, nullptr, reinterpret_cast<void*>(static_cast<long>(sig))) < 0)
        return Errno("PTRACE_CONT restored pid %d", p->pid);
    }
  }
  for (auto& p : ctx.procs) {
    ASSIGN_OR_RETURN(uint64_t at, FindArea(p->pid, p->mm, 256 * 1024));
    remote::Remote::Options ro;
    ro.at = at;
    ro.bootstrap_syscall = OwnVdsoSyscall();
    auto rr = remote::Remote::Create(p->pid, p->pid, ro);
    if (!rr.ok()) return std::move(rr.error().wrap(StrFormat("pid %d", p->pid)));
    p->remote = std::move(*rr);
    // The process may have been seized between its report and its close of the pipe.
    uint64_t args[6] = {static_cast<uint64_t>(report_fd), 0, 0, 0, 0, 0};
    TRY(p->remote->RawSyscallIn(p->pid, SYS_close, args));
  }
  return Ok();
}

Result<std::vector<pid_t>> ResumeTree(RestoreContext& ctx) {
  // Threads about to re-issue an interrupted call are stepped into its syscall-entry stop first,
  // so they are detached already inside the kernel (see remote::EnterReissuedSyscalls).
  std::map<pid_t, int> detach_sig;
  for (auto& p : ctx.procs)
    TRY_CTX(remote::EnterReissuedSyscalls(p->attached, &detach_sig), "pid %d", p->pid);
  // A process dumped in a group stop is stopped again, with its stop signal (CRIU's
  // finalize_restore): pending now, taken as soon as it is detached, so its parent gets the
  // CLD_STOPPED it may wait for (WIFSTOPPED, WSTOPSIG) and a later SIGCONT a CLD_CONTINUED.
  std::vector<pid_t> stopped;
  for (auto& p : ctx.procs) {
    if (!p->entry->stopped()) continue;
    int sig = StopSignal(ctx, *p);
    if (kill(p->pid, sig) < 0) return Errno("stop %d with signal %d", p->pid, sig);
    stopped.push_back(p->pid);
  }
  // Resume everything together.
  for (auto& p : ctx.procs)
    for (pid_t tid : p->attached) {
      long sig = detach_sig.count(tid) ? detach_sig[tid] : 0;
      if (ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(sig)) < 0)
        PLOG_WARN("detach %d", tid);
    }
  return stopped;
}

void WaitGroupStopped(const std::vector<pid_t>& pids) {
  auto deadline = timing::Clock::now() + std::chrono::seconds(10);
  for (pid_t pid : pids) {
    for (;;) {
      bool all = true;
      auto tasks = proc::ListTasks(pid);
      if (!tasks.ok()) break;  // gone: nothing to wait for
      for (pid_t t : *tasks) {
        auto st = proc::ReadTaskStat(pid, t);
        if (st.ok() && st->state != 'T' && st->state != 'Z' && st->state != 'X') all = false;
      }
      if (all) break;
      if (timing::Clock::now() > deadline) {
        LOG_WARN("restore: pid %d was restored stopped but has not stopped yet", pid);
        break;
      }
      usleep(200);
    }
  }
}

}  // namespace godwit::restore
