#include "container/ns.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/stat.h>
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
