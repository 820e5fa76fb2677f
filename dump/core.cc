// Step "core": per thread registers (general purpose, xstate, fs/gs base), blocked signals, rseq,
// pending signals (per thread and shared), clear_child_tid. Writes core-<pid>.img.
#include <elf.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "common/proc.h"
#include "images/regs.h"
#include "dump/steps.h"
#include "proto/core.pb.h"

namespace godwit::dump {
namespace {

struct RseqConf {
  uint64_t rseq_abi_pointer;
  uint32_t rseq_abi_size;
  uint32_t signature;
  uint32_t flags;
  uint32_t pad;
};

Result<void> PeekSigInfo(pid_t tid, bool shared,
                         google::protobuf::RepeatedPtrField<img::PendingSignal>* out) {
  struct {
    uint64_t off;
    uint32_t flags;
    int32_t nr;
  } args = {0, shared ? 1u : 0u, 32};
  siginfo_t infos[32];
  for (;;) {
    long n =
        ptrace(static_cast<__ptrace_request>(0x4209 /* PTRACE_PEEKSIGINFO */), tid, &args, infos);
    if (n < 0) return Errno("PTRACE_PEEKSIGINFO %d", tid);
    for (long i = 0; i < n; ++i) {
      auto* s = out->Add();
      s->set_signo(infos[i].si_signo);
      s->set_siginfo(std::string(reinterpret_cast<char*>(&infos[i]), sizeof(siginfo_t)));
    }
    if (n < args.nr) return Ok();
    args.off += n;
  }
}

}  // namespace

Result<void> DumpCore(DumpContext& ctx, ProcessDump& p) {
  img::ProcessCore core;
  core.set_pid(p.pid);
  for (pid_t tid : p.entry->threads()) {
    img::ThreadCore* t = core.add_threads();
    t->set_tid(tid);
    user_regs_struct regs;
    if (p.remote) {
      ASSIGN_OR_RETURN(regs, p.remote->OriginalRegs(tid));
    } else {
      ASSIGN_OR_RETURN(regs, remote::GetRegs(tid));
    }
    RegsToProto(regs, t->mutable_regs());
    alignas(64) static char xbuf[16384];
    iovec iov{xbuf, sizeof(xbuf)};
    if (ptrace(PTRACE_GETREGSET, tid, reinterpret_cast<void*>(NT_X86_XSTATE), &iov) < 0)
      return Errno("PTRACE_GETREGSET NT_X86_XSTATE %d", tid);
    t->set_xstate(std::string(xbuf, iov.iov_len));
    uint64_t mask = 0;
    if (ptrace(PTRACE_GETSIGMASK, tid, reinterpret_cast<void*>(sizeof(mask)), &mask) < 0)
      return Errno("PTRACE_GETSIGMASK %d", tid);
    t->set_blocked(mask);
    RseqConf rc{};
    if (ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), tid,
               reinterpret_cast<void*>(sizeof(rc)), &rc) < 0)
      return Errno("PTRACE_GET_RSEQ_CONFIGURATION %d", tid);
    if (rc.rseq_abi_pointer != 0) {
      t->mutable_rseq()->set_addr(rc.rseq_abi_pointer);
      t->mutable_rseq()->set_len(rc.rseq_abi_size);
      t->mutable_rseq()->set_flags(rc.flags);
      t->mutable_rseq()->set_sig(rc.signature);
    }
    TRY(PeekSigInfo(tid, false, t->mutable_pending()));
    if (auto ns = proc::ReadNsPids(p.pid, tid); ns.ok() && ns->size() > 1)
      for (pid_t n : *ns) t->add_ns_tids(n);
    auto comm = fs::ReadFile(StrFormat("/proc/%d/task/%d/comm", p.pid, tid));
    if (comm.ok()) {
      // Only the kernel's newline goes: a thread name may end in (or be) spaces.
      std::string c = *comm;
      if (!c.empty() && c.back() == '\n') c.pop_back();
      t->set_comm(c);
    }
  }
  TRY(PeekSigInfo(p.pid, true, core.mutable_shared_pending()));
  // clear_child_tid lives only in the kernel's task struct: ask each thread for it.
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  for (auto& t : *core.mutable_threads()) {
    TRY_CTX(r->SyscallIn(t.tid(), SYS_prctl, PR_GET_TID_ADDRESS, r->scratch()),
            "PR_GET_TID_ADDRESS in %d", t.tid());
    uint64_t addr = 0;
    TRY(r->Read(r->scratch(), &addr, sizeof(addr)));
    t.set_clear_child_tid(addr);
    // The robust futex list (a robust mutex's owner dying marks it OWNER_DIED through it).
    uint64_t head = 0;
    size_t len = 0;
    if (syscall(SYS_get_robust_list, t.tid(), &head, &len) < 0)
      return Errno("get_robust_list %d", t.tid());
    t.set_robust_list(head);
    t.set_robust_list_len(len);
  }
  ctx.stats.threads += core.threads_size();
  return images::WriteImage(*ctx.sink, StrFormat("core-%d.img", p.pid), core);
}

}  // namespace godwit::dump
