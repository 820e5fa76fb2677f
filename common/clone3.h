// clone3 as a fork with chosen pids: the child gets set_tid[0] in the innermost pid namespace,
// set_tid[1] in its parent namespace and so on (set_tid_size 0: the kernel chooses). Plain raw
// syscall, no allocation: usable right after another clone (restore/after_clone.cc's rules).
#pragma once

#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace godwit {

// Returns what clone3 returns: the child's pid in the caller's namespace, 0 in the child, -1 with
// errno (EEXIST: a chosen pid is taken).
inline pid_t Clone3WithPids(uint64_t flags, const pid_t* set_tid, size_t set_tid_size) {
  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.flags = flags;
  args.exit_signal = SIGCHLD;
  args.set_tid = reinterpret_cast<uint64_t>(set_tid);
  args.set_tid_size = set_tid_size;
  return static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof(args)));
}

}  // namespace godwit
