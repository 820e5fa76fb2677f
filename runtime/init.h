// The container's init: the code that runs in the cloned child, inside the new namespaces,
// between clone() and execve(). Internal to the runtime (used by lifecycle.cc and exec).
//
// The child is a raw clone() of a single-threaded parent, so the heap is usable, but it must not
// touch locks or the logger: errors go back to the parent through the sync socket as an
// InitReply, then the child exits.
#pragma once

#include <sys/types.h>

#include <string>
#include <utility>
#include <vector>

#include "common/result.h"
#include "runtime/cgroup.h"
#include "runtime/seccomp.h"
#include "runtime/spec.h"

namespace godwit::runtime::init {

struct Reply {
  int32_t ok = 0;
  int32_t kind = 1;  // ErrorKind
  int32_t err = 0;   // errno
  char msg[1024] = {0};
};

struct Plan {
  const Spec* spec = nullptr;
  Cgroup* cgroup = nullptr;  // set: the init joins it itself (EnterSelf) first thing
  bool born_into = false;    // clone3 put it into the cgroup2 part already
  std::string storage_dir;   // disk quota: tmpfs mount point (exists on the host, stays empty)
  int sync_fd = -1;          // SOCK_SEQPACKET to the parent: 'G' in, Reply out
  int fifo_fd = -1;          // exec.fifo opened O_RDWR: one byte from `start` releases execve
  // `run`: exec right after setup; the sync socket's EOF (close-on-exec) tells the parent.
  bool start_now = false;
  int cap_last_cap = 40;
  const SeccompProgram* seccomp = nullptr;  // installed right before the credentials change
  int console_fd = -1;  // process.terminal: the connected --console-socket (console.h)
  // linux.namespaces[].path: (fd, CLONE_NEW*) joined with setns first thing.
  std::vector<std::pair<int, int>> join;
};

// Never returns: execs the container process or _exit()s.
[[noreturn]] void Run(const Plan& plan);

// The pieces of Run that a restore reuses to rebuild a container's environment in a process
// that is already in the container's new namespaces (mount, and pid for /proc):
// SetupUts: hostname and domain name (uts namespace).
Result<void> SetupUts(const Spec& s);
// BuildRoot: makes / private (or slave), mounts the rootfs (bind) or, with a disk quota, the
// overlay lowerdir=rootfs,upperdir=<storage_dir>/upper on <storage_dir>/merged, a tmpfs /dev
// unless the config has one, the config's mounts, device nodes, /dev/pts and /dev/shm,
// pivot_root into it, sysctls, lo up (network namespace), masked and read-only paths and the
// read-only root. Leaves umask 0 and cwd "/".
Result<void> BuildRoot(const Spec& s, const std::string& storage_dir);

// Shared with exec: setgroups/setresgid/capabilities/setresuid/no_new_privs/rlimits as the
// spec's process says. Returns 0 or -errno with *what naming the failed step.
int ApplyCredentials(const Process& p, int cap_last_cap, const char** what);

// Seccomp and credentials in runc's order: the filter before the capabilities are dropped when
// the process keeps its privileges (loading it without no_new_privs needs CAP_SYS_ADMIN), after
// them otherwise (no_new_privs is set by then and the filter sees fewer setup calls).
int ApplySeccompAndCredentials(const Process& p, const SeccompProgram* seccomp, int cap_last_cap,
                               const char** what);

// Looks up file in the PATH of env (or "/usr/local/sbin:...:/bin"); "" if not found.
std::string FindExecutable(const std::string& file, const std::vector<std::string>& env);

}  // namespace godwit::runtime::init
