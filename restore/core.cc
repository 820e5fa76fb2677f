// Steps "signals" and "core": pending signals, then per thread rseq, clear_child_tid, the robust
// futex list, xstate, blocked signals and, last of all, the registers.
#include <elf.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <cstring>
#include <map>

#include "images/regs.h"
#include "restore/steps.h"

namespace godwit::restore {
namespace {

Result<void> SetMask(pid_t tid, uint64_t mask) {
  if (ptrace(PTRACE_SETSIGMASK, tid, reinterpret_cast<void*>(sizeof(mask)), &mask) < 0)
    return Errno("PTRACE_SETSIGMASK %d", tid);
  return Ok();
}

// pid, tid: ids inside the process's own pid namespace (the calls run there).
Result<void> Queue(remote::Remote* r, pid_t pid, pid_t tid, const img::PendingSignal& s) {
  siginfo_t info;
  memset(&info, 0, sizeof(info));
  memcpy(&info, s.siginfo().data(), std::min(s.siginfo().size(), sizeof(info)));
  // rt_tgsigqueueinfo turns SI_TKILL into SI_USER on this kernel; a tgkill the thread sent
  // itself is re-sent with tgkill, which sets the same fields (si_pid, si_uid, SI_TKILL).
  if (tid != 0 && info.si_code == SI_TKILL && info.si_pid == pid) {
    TRY_CTX(r->Syscall(SYS_tgkill, pid, tid, s.signo()), "tgkill %d", s.signo());
    return Ok();
  }
  uint64_t at = r->scratch() + 1024;
  TRY(r->Write(at, &info, sizeof(info)));
  if (tid == 0)
    TRY_CTX(r->Syscall(SYS_rt_sigqueueinfo, pid, s.signo(), at), "queue signal %d", s.signo());
  else
    TRY_CTX(r->Syscall(SYS_rt_tgsigqueueinfo, pid, tid, s.signo(), at), "queue signal %d to %d",
            s.signo(), tid);
  return Ok();
}

}  // namespace

Result<void> RestoreSignals(RestoreContext& ctx, ProcessRestore& p) {
  // Block everything (but SIGKILL/SIGSTOP) so nothing queued is delivered while we inject; the
  // dumped masks are set by "core".
  for (pid_t tid : p.attached) TRY(SetMask(tid, ~0ULL));
  remote::Remote* r = p.remote.get();
  pid_t inner = InnerPid(*p.entry);
  for (const auto& s : p.core.shared_pending()) TRY(Queue(r, inner, 0, s));
  for (const auto& t : p.core.threads())
    for (const auto& s : t.pending()) TRY(Queue(r, inner, InnerTid(t), s));
  return Ok();
}

// A thread dumped inside an rseq critical section (its rip in [start_ip, start_ip +
// post_commit_offset) of the descriptor its rseq->rseq_cs points at): the kernel would abort the
// section when the thread next returns to user space after a preemption, migration or signal,
// but registering rseq again clears rseq_cs, and the thread would carry on inside the section
// as if nothing happened (on another CPU, say). So it resumes at the section's abort_ip, as the
// kernel would have sent it (CRIU: restore_rseq_cs). 0: not inside one.
Result<uint64_t> RseqAbortIp(remote::Remote* r, const img::ThreadCore& t) {
  if (t.rseq().len() < 32) return uint64_t{0};
  uint64_t cs = 0;
  if (!r->Read(t.rseq().addr() + 8, &cs, sizeof(cs)).ok() || cs == 0) return uint64_t{0};
  struct {
    uint32_t version, flags;
    uint64_t start_ip, post_commit_offset, abort_ip;
  } d{};
  if (!r->Read(cs, &d, sizeof(d)).ok()) return uint64_t{0};
  uint64_t ip = t.regs().rip();
  if (ip < d.start_ip || ip - d.start_ip >= d.post_commit_offset) return uint64_t{0};
  uint32_t sig = 0;
  if (!r->Read(d.abort_ip - 4, &sig, sizeof(sig)).ok() || sig != t.rseq().sig())
    return uint64_t{0};  // the kernel would kill it (SIGSEGV): leave that to it
  return d.abort_ip;
}

Result<void> RestoreCore(RestoreContext& ctx, ProcessRestore& p) {
  remote::Remote* r = p.remote.get();
  std::map<pid_t, uint64_t> rseq_abort;
  for (const auto& t : p.core.threads()) {
    pid_t tid = p.HostTid(t.tid());
    if (t.rseq().len() != 0) {
      ASSIGN_OR_RETURN(uint64_t abort_ip, RseqAbortIp(r, t));
      if (abort_ip) rseq_abort[tid] = abort_ip;
      TRY_CTX(r->SyscallIn(tid, SYS_rseq, t.rseq().addr(), t.rseq().len(), 0, t.rseq().sig()),
              "pid %d: rseq of thread %d", p.pid, tid);
    }
    TRY_CTX(r->SyscallIn(tid, SYS_set_tid_address, t.clear_child_tid()), "set_tid_address %d", tid);
    // Always: a thread without one must not keep the coordinator's (a fork's inherited head).
    TRY_CTX(r->SyscallIn(tid, SYS_set_robust_list, t.robust_list(),
                         t.robust_list() ? t.robust_list_len() : 24 /* sizeof robust_list_head */),
            "set_robust_list %d", tid);
    if (!t.xstate().empty()) {
      std::string x = t.xstate();
      iovec iov{x.data(), x.size()};
      if (ptrace(PTRACE_SETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) < 0)
        return Errno("pid %d: PTRACE_SETREGSET NT_X86_XSTATE %d", p.pid, tid);
    }
  }
  ctx.stats.remote_calls += r->calls();
  // The last injected call: unmap the scratch area. The main thread stops at its syscall exit.
  TRY_CTX(r->UnmapFinal(), "pid %d: unmap scratch", p.pid);
  for (const auto& t : p.core.threads()) {
    const pid_t tid = p.HostTid(t.tid());
    TRY(SetMask(tid, t.blocked()));
    user_regs_struct regs = img::RegsFromProto(t.regs());
    remote::PrepareSyscallRestart(&regs, /*live=*/false);
    if (rseq_abort.count(tid)) regs.rip = rseq_abort[tid];
    TRY_CTX(remote::SetRegs(tid, regs), "pid %d", p.pid);
  }
  return Ok();
}

}  // namespace godwit::restore
