#include "restore/steps.h"

namespace godwit::restore {

const std::vector<RestoreStep>& ProcessSteps() {
  // Ordering:
  //  - mm first: it unmaps the coordinator's copy and builds the dumped address space, so every
  //    later step can point the kernel at the process's own memory (handlers, rseq, altstacks).
  //  - threads next: clone3 with set_tid inside the process; later steps may inject per thread.
  //  - new kinds of per-process state (signal handlers, creds, rlimits, timers...) go here.
  //  - signals: queues pending signals with every signal blocked (no delivery while we inject).
  //  - core last: per-thread rseq, clear_child_tid, xstate, sigmask, unmaps the scratch area and
  //    sets the final registers. Nothing may inject after it.
  static const std::vector<RestoreStep> steps = {
      {"mm", RestoreMm},
      {"threads", RestoreThreads},
      // Process state (restore/pstate*.cc). Handlers and altstacks point into the new memory;
      // everything that needs privilege (chroot, sched) before "creds"; pdeathsig and
      // dumpable after it (a cred change resets both); timers armed late so none fires early.
      {"sigactions", RestoreSigactions},
      {"sigaltstack", RestoreSigaltstack},
      {"fs", RestoreFs},
      {"personality", RestorePersonality},
      {"comm", RestoreComm},
      {"sched", RestoreSched},
      {"proc-flags", RestoreProcFlags},
      {"posix-timers", RestorePosixTimers},  // created disarmed; alarm clocks need privilege
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

}  // namespace godwit::restore
