// A process with a chosen pid for a moment (clone3 set_tid), so that /proc/PID of a process
// that died before the dump exists again while the restore opens it (zdtm remap_dead_pid: an
// fd on /proc/PID/mountinfo; unhashed_proc: the cwd in /proc/PID). Once the stand-in is gone,
// what was opened or entered there refers to a dead process's /proc entry, as it did when
// dumped. The stand-in only waits for its pipe to close, then exits; the destructor reaps it.
#pragma once

#include <fcntl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/clone3.h"
#include "common/result.h"

namespace godwit {

class PidStandIn {
 public:
  // kExists (EEXIST) when the pid is taken.
  static Result<PidStandIn> Make(pid_t pid) {
    int go[2];
    if (pipe2(go, O_CLOEXEC) < 0) return Errno("pipe for the stand-in of pid %d", pid);
    pid_t c = Clone3WithPids(0, &pid, 1);
    if (c == 0) {
      // The child of a threaded process: nothing but async-signal-safe calls.
      char b;
      close(go[1]);
      while (read(go[0], &b, 1) < 0) {
      }
      _exit(0);
    }
    int err = errno;
    close(go[0]);
    if (c < 0) {
      close(go[1]);
      errno = err;
      return Errno("a stand-in process with pid %d", pid);
    }
    PidStandIn s;
    s.pid_ = c;
    s.go_ = go[1];
    return s;
  }
  PidStandIn(PidStandIn&& o) noexcept : pid_(o.pid_), go_(o.go_) { o.pid_ = o.go_ = -1; }
  PidStandIn& operator=(PidStandIn&&) = delete;
  PidStandIn(const PidStandIn&) = delete;
  ~PidStandIn() {
    if (go_ >= 0) close(go_);
    if (pid_ > 0)
      while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
      }
  }

 private:
  PidStandIn() = default;
  pid_t pid_ = -1;
  int go_ = -1;
};

}  // namespace godwit
