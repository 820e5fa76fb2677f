// Terminals for process.terminal: true (create, exec), the way runc hands them to its caller:
// the caller (conmon, a shell wrapper) listens on a unix socket and passes its path as
// --console-socket; the runtime connects to it before the process starts, the process makes a
// new pty inside the container (its /dev/ptmx, i.e. the container's devpts instance), sends the
// master over the socket as SCM_RIGHTS (with the pty's name as the message) and makes the slave
// its stdio and controlling terminal.
#pragma once

#include <sys/types.h>

#include <string>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::runtime {

// Connects to the console socket (SOCK_STREAM unix socket at path).
Result<UniqueFd> ConnectConsoleSocket(const std::string& path);

// In the process about to exec (after its root is the container's): opens /dev/ptmx, unlocks it,
// sizes it (height/width 0: left alone), sends the master over sock, then setsid(), makes the
// slave its controlling terminal and fds 0-2, owned by uid/gid. Uses no heap (runs in the
// init). Returns 0 or -errno with *what naming the failed step.
int SetupConsole(int sock, uint16_t height, uint16_t width, uid_t uid, gid_t gid,
                 const char** what);

}  // namespace godwit::runtime
