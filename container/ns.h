// Namespace plumbing shared by the per-namespace modules (net.cc, ipc.cc, uts.cc, mnt.cc).
//
// Net, IPC and UTS namespaces are per thread: setns() on a thread switches only that thread
// (RunHere: the calling thread, and back; RunInNamespace: a fresh one, also for a mount
// namespace), so the dumper's own namespaces never change and parallel dumps do not interfere. A
// netlink socket, a mqueue fd or an open /proc/sys/net file stays bound to the namespace it was
// opened in, so they may be used from any thread afterwards.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>
#include <vector>

#include "common/netns.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::container {

struct NsThreadOptions {
  // unshare(CLONE_FS | CLONE_NEWNS) and make every mount private first: the thread then owns a
  // private mount namespace (for mounting mqueue/proc views) that dies with it.
  bool private_mounts = false;
  // unshare(CLONE_FS) first: needed to setns() into a mount namespace (CLONE_NEWNS) from a thread.
  bool unshare_fs = false;
};

// Runs fn on a new thread that first joins ns_fd (nstype: CLONE_NEWNET, CLONE_NEWIPC,
// CLONE_NEWUTS; 0 accepts any). Returns fn's result; the thread ends when fn returns.
Result<void> RunInNamespace(int ns_fd, int nstype, const std::function<Result<void>()>& fn,
                            const NsThreadOptions& opts = {});

// Opening a namespace and running a function inside one on the calling thread: common/netns.h.
using netns::OpenNamespace;
using netns::RunHere;

// A sysctl under /proc/sys ("net/ipv4/ip_forward") of the calling thread's namespaces, trailing
// newline stripped.
Result<std::string> ReadSysctl(const std::string& name);
Result<void> WriteSysctl(const std::string& name, const std::string& value);

}  // namespace godwit::container
