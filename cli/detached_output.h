// A detached container's output: `run --detach` and a container `restore --detach` (not driven
// by an engine) make the container's stdout/stderr a log file in its state dir
// (runtime::Container::log_path, read by `godwit logs`) and its stdin /dev/null.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <memory>
#include <string>

#include "cli/command.h"
#include "common/unique_fd.h"
#include "common/fs.h"
#include "common/result.h"
#include "runtime/container.h"

namespace godwit::cli {

// While alive, godwit's own fds 0-2 are /dev/null and a log file: the init of a container
// created meanwhile inherits them. The file is made under the state root (the container's
// state dir does not exist before Create) and moved into it by Keep.
class DetachedOutput {
 public:
  static Result<std::unique_ptr<DetachedOutput>> Open(const std::string& root,
                                                       const std::string& id) {
    TRY(fs::MkdirAll(root, 0711));
    std::unique_ptr<DetachedOutput> d(new DetachedOutput());
    d->tmp_ = StrFormat("%s/.%s.log.%d", root.c_str(), id.c_str(), getpid());
    UniqueFd log(::open(d->tmp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC,
                        0640));
    if (!log) return Errno("open %s", d->tmp_.c_str());
    UniqueFd null(::open("/dev/null", O_RDONLY | O_CLOEXEC));
    if (!null) return Errno("open /dev/null");
    fflush(stdout);
    fflush(stderr);
    for (int fd = 0; fd < 3; ++fd) {
      d->saved_[fd] = UniqueFd(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
      if (!d->saved_[fd]) return Errno("dup fd %d", fd);
    }
    if (::dup2(null.get(), 0) < 0 || ::dup2(log.get(), 1) < 0 || ::dup2(log.get(), 2) < 0)
      return Errno("dup2 %s", d->tmp_.c_str());
    d->redirected_ = true;
    SetProgressFd(d->saved_[2].get());  // a progress meter stays on the terminal
    return d;
  }

  // godwit's own stdio back (before anything is printed).
  void Restore() {
    if (!redirected_) return;
    fflush(stdout);
    fflush(stderr);
    for (int fd = 0; fd < 3; ++fd) (void)::dup2(saved_[fd].get(), fd);
    SetProgressFd(STDERR_FILENO);
    redirected_ = false;
  }

  // The container exists: its log moves into its state dir.
  Result<void> Keep(const runtime::Container& c) {
    if (::rename(tmp_.c_str(), c.log_path().c_str()) < 0)
      return Errno("rename %s to %s", tmp_.c_str(), c.log_path().c_str());
    tmp_.clear();
    return Ok();
  }

  ~DetachedOutput() {
    Restore();
    if (!tmp_.empty()) ::unlink(tmp_.c_str());
  }

 private:
  DetachedOutput() = default;
  std::string tmp_;
  UniqueFd saved_[3];
  bool redirected_ = false;
};

}  // namespace godwit::cli
