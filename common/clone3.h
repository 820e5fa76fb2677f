// clone3 as a fork with chosen pids: the child gets set_tid[0] in the innermost pid namespace,
// set_tid[1] in its parent namespace and so on (set_tid_size 0: the kernel chooses). Plain raw
// syscall, no allocation: usable right after another clone (restore/after_clone.cc's rules).
#pragma once

#include <linux/sched.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>

namespace godwit {

// Returns what clone3 returns: the child's pid in the caller's namespace, 0 in the child, -1 with
// errno (EEXIST: a chosen pid is taken). cgroup_fd >= 0: the child is born in that cgroup2
// directory (CLONE_INTO_CGROUP: no migration, hence none of the RCU grace period a first write to
// cgroup.procs after a quiet spell waits for); a kernel that cannot (before 5.7, or a cgroup it
// refuses that way) fails with ENOSYS, E2BIG, EINVAL or EOPNOTSUPP.
inline pid_t Clone3WithPids(uint64_t flags, const pid_t* set_tid, size_t set_tid_size,
                            int cgroup_fd = -1) {
  struct clone_args args;
  memset(&args, 0, sizeof(args));
  args.flags = flags;
  args.exit_signal = SIGCHLD;
  args.set_tid = reinterpret_cast<uint64_t>(set_tid);
  args.set_tid_size = set_tid_size;
  if (cgroup_fd >= 0) {
    args.flags |= CLONE_INTO_CGROUP;
    args.cgroup = static_cast<uint64_t>(cgroup_fd);
  }
  return static_cast<pid_t>(syscall(SYS_clone3, &args, sizeof(args)));
}

// Whether a clone3 that failed with errno err may be retried without CLONE_INTO_CGROUP.
inline bool CloneIntoCgroupRefused(int err) {
  return err == ENOSYS || err == E2BIG || err == EINVAL || err == EOPNOTSUPP;
}

}  // namespace godwit
