#include "dump/steps.h"

namespace godwit::dump {

const std::vector<DumpStep>& ProcessSteps() {
  // Ordering: core first (it reads the registers before any injected syscall changes them);
  // memory last among the injecting steps is not required (the scratch area is skipped), but
  // mm reads brk by injection. New kinds of state (signal handlers, creds, timers...) go after
  // core and before mm.
  static const std::vector<DumpStep> steps = {
      {"core", DumpCore},
      {"pstate", DumpPstate},  // pstate.cc: after core (its injections see the saved regs)
      {"fds", DumpFds},
      {"mm", DumpMm},
  };
  return steps;
}

}  // namespace godwit::dump
