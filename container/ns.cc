#include "container/ns.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <thread>

#include "common/fs.h"

namespace godwit::container {

Result<void> RunInNamespace(int ns_fd, int nstype, const std::function<Result<void>()>& fn,
                            const NsThreadOptions& opts) {
  Result<void> result = Ok();
  std::thread t([&] {
    if (opts.private_mounts) {
      if (::unshare(CLONE_FS | CLONE_NEWNS) < 0) {
        result = Errno("unshare(CLONE_FS|CLONE_NEWNS)");
        return;
      }
      if (::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0) {
        result = Errno("make / rprivate");
        return;
      }
    }
    if (opts.unshare_fs && ::unshare(CLONE_FS) < 0) {
      result = Errno("unshare(CLONE_FS)");
      return;
    }
    if (ns_fd >= 0 && ::setns(ns_fd, nstype) < 0) {
      result = Errno("setns(fd %d, 0x%x)", ns_fd, nstype);
      return;
    }
    result = fn();
  });
  t.join();
  return result;
}

Result<UniqueFd> OpenNamespace(pid_t pid, const char* name) {
  std::string path = pid == 0 ? StrFormat("/proc/thread-self/ns/%s", name)
                              : StrFormat("/proc/%d/ns/%s", pid, name);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return MakeError(errno == ENOENT || errno == ESRCH ? ErrorKind::kNotFound : ErrorKind::kGeneric,
                     errno, "open %s", path.c_str());
  }
  return UniqueFd(fd);
}

namespace {

Result<UniqueFd> MemFd(const char* name) {
  int fd = ::memfd_create(name, MFD_CLOEXEC);
  if (fd < 0) return Errno("memfd_create %s", name);
  return UniqueFd(fd);
}

Result<std::string> ReadWhole(int fd) {
  if (::lseek(fd, 0, SEEK_SET) < 0) return Errno("lseek");
  std::string out;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read");
    }
    if (n == 0) return out;
    out.append(buf, n);
  }
}

}  // namespace

Result<CommandOutput> RunInNetns(int netns_fd, const std::vector<std::string>& argv,
                                 const std::string& input) {
  if (argv.empty()) return MakeError(ErrorKind::kUsage, 0, "empty command");
  ASSIGN_OR_RETURN(UniqueFd in, MemFd("godwit-in"));
  ASSIGN_OR_RETURN(UniqueFd out, MemFd("godwit-out"));
  ASSIGN_OR_RETURN(UniqueFd err, MemFd("godwit-err"));
  TRY(fs::WriteAll(in.get(), input.data(), input.size()));
  if (::lseek(in.get(), 0, SEEK_SET) < 0) return Errno("lseek");
  // Everything the child needs is prepared before fork: it only makes raw calls.
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork for %s", argv[0].c_str());
  if (pid == 0) {
    if (::setns(netns_fd, CLONE_NEWNET) < 0) ::_exit(126);
    if (::dup2(in.get(), 0) < 0 || ::dup2(out.get(), 1) < 0 || ::dup2(err.get(), 2) < 0)
      ::_exit(126);
    ::execvp(cargv[0], cargv.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return Errno("waitpid %d", pid);
  }
  CommandOutput res;
  res.exit_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  ASSIGN_OR_RETURN(res.out, ReadWhole(out.get()));
  ASSIGN_OR_RETURN(res.err, ReadWhole(err.get()));
  if (res.exit_status == 126 || res.exit_status == 127) {
    return MakeError(ErrorKind::kGeneric, 0, "%s: could not enter netns or exec (status %d)",
                     argv[0].c_str(), res.exit_status);
  }
  return res;
}

Result<std::string> ReadSysctl(const std::string& name) {
  std::string path = "/proc/sys/" + name;
  ASSIGN_OR_RETURN(std::string v, fs::ReadFile(path));
  while (!v.empty() && v.back() == '\n') v.pop_back();
  return v;
}

Result<void> WriteSysctl(const std::string& name, const std::string& value) {
  std::string path = "/proc/sys/" + name;
  int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return Errno("open %s", path.c_str());
  UniqueFd owned(fd);
  // A sysctl takes its value in one write.
  ssize_t n = ::write(fd, value.data(), value.size());
  if (n < 0) return Errno("write %s = '%s'", path.c_str(), value.c_str());
  if (static_cast<size_t>(n) != value.size())
    return MakeError(ErrorKind::kGeneric, 0, "short write to %s", path.c_str());
  return Ok();
}

}  // namespace godwit::container
