// linux.seccomp: the config's profile compiled with libseccomp into a classic BPF program in the
// parent (where errors can be reported and libseccomp may allocate freely), then installed by
// the container's init (or an exec'd process) with one seccomp(2) call right before it
// execs. As runc: syscall names this libseccomp or architecture does not know are skipped (so
// profiles listing newer syscalls still load), rules whose action is the default are dropped,
// args with distinct indexes are ANDed in one rule and repeated indexes become separate rules.
#pragma once

#include <linux/filter.h>

#include <vector>

#include "common/result.h"
#include "runtime/spec.h"

namespace godwit::runtime {

struct SeccompProgram {
  std::vector<sock_filter> insns;  // empty: no filter
  unsigned int flags = 0;          // SECCOMP_FILTER_FLAG_* from linux.seccomp.flags
  bool empty() const { return insns.empty(); }
};

// kBadConfig naming the field on an unknown action, operator, architecture or flag, or a rule
// libseccomp refuses.
Result<SeccompProgram> CompileSeccomp(const Seccomp& sc);

// Installs the program in the calling thread (async-signal-safe: one syscall). Without
// no_new_privs the caller needs CAP_SYS_ADMIN in its user namespace. Returns 0 or -errno.
int LoadSeccomp(const SeccompProgram& prog);

}  // namespace godwit::runtime
