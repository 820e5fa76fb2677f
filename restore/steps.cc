#include "restore/steps.h"

#include <sys/syscall.h>

#include "common/log.h"

namespace godwit::restore {

const std::vector<RestoreStep>& ProcessSteps() {
  // Ordering:
  //  - mm first: it unmaps the coordinator's copy and builds the dumped address space, so every
  //    later step can point the kernel at the process's own memory (handlers, rseq, altstacks).
  //    It is the only step that reads image files from inside the process (the page files), so
  //    the images directory's fd is closed there after it (last_image_reader).
  //  - threads next: clone3 with set_tid inside the process; later steps may inject per thread.
  //  - new kinds of per-process state (signal handlers, creds, rlimits, timers...) go here.
  //  - signals: queues pending signals with every signal blocked (no delivery while we inject).
  //  - core last: per-thread rseq, clear_child_tid, xstate, sigmask, unmaps the scratch area and
  //    sets the final registers. Nothing may inject after it.
  static const std::vector<RestoreStep> steps = {
      {"mm", RestoreMm, /*last_image_reader=*/true},
      {"threads", RestoreThreads},
      // Process state (restore/pstate*.cc). Handlers and altstacks point into the new memory;
      // everything that needs privilege (chroot, timer slack) before "creds"; pdeathsig and
      // dumpable after it (a cred change resets both); timers armed late so none fires early.
      {"sigactions", RestoreSigactions},
      {"sigaltstack", RestoreSigaltstack},
      {"fs", RestoreFs},
      {"personality", RestorePersonality},
      {"comm", RestoreComm},
      {"sched", RestoreSched},
      {"proc-flags", RestoreProcFlags},
      {"posix-timers", RestorePosixTimers},  // created disarmed; alarm clocks need privilege
      {"seccomp-early", RestoreSeccompEarly},  // filters the dumped creds could not install
      {"creds", RestoreCreds},
      {"after-creds", RestoreAfterCreds},
      {"signals", RestoreSignals},
      {"timers", RestoreTimers},
      {"rlimits", RestoreRlimits},  // last: a low limit would hinder the steps before it
      {"seccomp", RestoreSeccomp},  // filters filter injected calls too: last before core
      {"core", RestoreCore},
  };
  return steps;
}

Result<void> RunProcessSteps(RestoreContext& ctx) {
  for (auto& p : ctx.procs) {
    for (const auto& step : ProcessSteps()) {
      LOG_DEBUG("restore pid %d: %s", p->pid, step.name);
      TRY_CTX(step.fn(ctx, *p), "restore pid %d: %s", p->pid, step.name);
      if (step.last_image_reader && ctx.images_fd >= 0)
        TRY_CTX(p->remote->Syscall(SYS_close, static_cast<uint64_t>(ctx.images_fd)),
                "pid %d: close the images dir", p->pid);
    }
  }
  return Ok();
}

}  // namespace godwit::restore
