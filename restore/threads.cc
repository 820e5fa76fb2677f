// Step "threads": the other threads of a process, created by an injected clone3 in the main
// thread with set_tid = the dumped tid. PTRACE_O_TRACECLONE hands each new thread to us stopped.
// In a tree restored in its own pid namespace (ctx.inner_level) a taken host tid is left to the
// kernel (only the tids inside are set); the host tid is found by the inner one (NSpid) and
// recorded in p.host_tids.
#include <linux/sched.h>
#include <sched.h>
#include <sys/syscall.h>

#include <cstring>
#include <vector>

#include "common/proc.h"
#include "restore/steps.h"

namespace godwit::restore {

Result<void> RestoreThreads(RestoreContext& ctx, ProcessRestore& p) {
  remote::Remote* r = p.remote.get();
  for (int i = 1; i < p.core.threads_size(); ++i) {
    const img::ThreadCore& tc = p.core.threads(i);
    pid_t tid = tc.tid();
    struct clone_args args;
    memset(&args, 0, sizeof(args));
    args.flags = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
    // Its id in every pid namespace, innermost first.
    uint64_t tid_at = r->scratch() + 512;
    std::vector<pid_t> want;  // the kernel reads an array of pid_t
    if (tc.ns_tids_size() > 1)
      for (int k = tc.ns_tids_size() - 1; k >= 0; --k) want.push_back(tc.ns_tids(k));
    else
      want.push_back(tid);
    TRY(r->Write(tid_at, want.data(), want.size() * sizeof(pid_t)));
    args.set_tid = tid_at;
    args.set_tid_size = want.size();
    TRY(r->Write(r->scratch(), &args, sizeof(args)));
    auto got = r->Syscall(SYS_clone3, r->scratch(), sizeof(args));
    if (!got.ok() && got.error().sys_errno() == EEXIST && ctx.inner_level > 0 &&
        tc.ns_tids_size() > ctx.inner_level) {
      // Its host tid is taken (see Clone3Tree in restore.cc): the ids inside only.
      want.resize(tc.ns_tids_size() - ctx.inner_level);
      TRY(r->Write(tid_at, want.data(), want.size() * sizeof(pid_t)));
      args.set_tid_size = want.size();
      TRY(r->Write(r->scratch(), &args, sizeof(args)));
      got = r->Syscall(SYS_clone3, r->scratch(), sizeof(args));
    }
    if (!got.ok()) {
      if (got.error().sys_errno() == EEXIST)
        return MakeError(ErrorKind::kExists, EEXIST, "pid %d: thread id %d is in use", p.pid, tid);
      return std::move(got.error().wrap(StrFormat("pid %d: clone3 thread %d", p.pid, tid)));
    }
    if (*got != InnerTid(tc))
      return Err("pid %d: clone3 gave tid %ld, not %d", p.pid, *got, InnerTid(tc));
    pid_t host = tid;
    if (ctx.inner_level > 0) {
      host = 0;
      ASSIGN_OR_RETURN(auto tasks, proc::ListTasks(p.pid));
      for (pid_t t : tasks) {
        auto ns = proc::ReadNsPids(p.pid, t);
        if (ns.ok() && !ns->empty() && ns->back() == InnerTid(tc)) host = t;
      }
      if (host == 0) return Err("pid %d: new thread %d (%d inside) not found", p.pid, tid, InnerTid(tc));
      p.host_tids[tid] = host;
    }
    // The new thread starts in a PTRACE_EVENT_STOP.
    TRY_CTX(remote::WaitStop(host), "pid %d: new thread %d", p.pid, host);
    p.attached.push_back(host);
    ctx.stats.threads++;
  }
  return Ok();
}

}  // namespace godwit::restore
