// A detached container's output: `run --detach` and a container `restore --detach` (not driven
// by an engine) make the container's stdout/stderr a log file under the state root
// (runtime::LogPath, read by `godwit logs`) and its stdin /dev/null, when godwit's own stdout is
// a terminal or a pipe (where a detached container's output would be lost or would hold the
// reader). A stdout redirected to a file or /dev/null stays the container's, as with runc
// (`godwit run -d ... > app.log`; issue 11 keeps that file across checkpoint and restore).
//
// The log is outside the container's state dir on purpose: a checkpoint records the init's
// stdout as a host file by path and a restore opens that path again, while the checkpoint (which
// deletes the container) removes the state dir. So the log outlives the container until
// `godwit delete` (the cli verb) removes it; a restore appends to it.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "runtime/container.h"

namespace godwit::cli {

// While alive, godwit's own fds 0-2 are /dev/null and the log: the init of a container created
// or restored meanwhile inherits them.
class DetachedOutput {
 public:
  // godwit's stdout is a terminal, a pipe or a socket (or closed): the container's output goes
  // to its log. A file or a device like /dev/null is the caller's choice, kept.
  static bool Wanted() {
    struct stat st;
    if (::fstat(STDOUT_FILENO, &st) < 0) return true;
    return isatty(STDOUT_FILENO) || S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode);
  }

  // fresh: a new container (`run`): the log starts empty. Otherwise (a restore) it is appended
  // to, and made if missing (a restore on another host opens the path its images name).
  static Result<std::unique_ptr<DetachedOutput>> Open(const std::string& root,
                                                       const std::string& id, bool fresh) {
    std::unique_ptr<DetachedOutput> d(new DetachedOutput());
    d->path_ = runtime::LogPath(root, id);
    // The root as Create makes it (0711: a user-namespaced container's root must traverse it).
    TRY(fs::MkdirAll(root, 0711));
    TRY(fs::MkdirAll(root + "/" + runtime::kLogDir, 0700));
    UniqueFd log(::open(d->path_.c_str(),
                        O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC | (fresh ? O_TRUNC : 0), 0640));
    if (!log) return Errno("open %s", d->path_.c_str());
    d->fresh_ = fresh;
    UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!null) return Errno("open /dev/null");
    fflush(stdout);
    fflush(stderr);
    for (int fd = 0; fd < 3; ++fd) {
      d->saved_[fd] = UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
      if (!d->saved_[fd]) return Errno("dup fd %d", fd);
    }
    if (::dup2(null.get(), 0) < 0 || ::dup2(log.get(), 1) < 0 || ::dup2(log.get(), 2) < 0)
      return Errno("dup2 %s", d->path_.c_str());
    d->redirected_ = true;
    SetProgressFd(d->saved_[2].get());  // a progress meter stays on the terminal
    log::SetFd(d->saved_[2].get());     // and godwit's warnings: the caller's, not the app's log
    return d;
  }

  // godwit's own stdio back (before anything is printed).
  void Restore() {
    if (!redirected_) return;
    fflush(stdout);
    fflush(stderr);
    for (int fd = 0; fd < 3; ++fd) (void)::dup2(saved_[fd].get(), fd);
    SetProgressFd(STDERR_FILENO);
    log::SetFd(STDERR_FILENO);
    redirected_ = false;
  }

  // The container exists: the log stays.
  void Keep() { path_.clear(); }

  // Without Keep a fresh log goes (the container was not made).
  ~DetachedOutput() {
    Restore();
    if (fresh_ && !path_.empty()) ::unlink(path_.c_str());
  }

 private:
  DetachedOutput() = default;
  std::string path_;
  bool fresh_ = false;
  UniqueFd saved_[3];
  bool redirected_ = false;
};

}  // namespace godwit::cli
