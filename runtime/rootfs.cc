// A busybox root filesystem for tests, the demo and the benchmark.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/fs.h"
#include "runtime/runtime.h"

namespace godwit::runtime {
namespace {

// `busybox --list`: the applets this build has.
Result<std::vector<std::string>> Applets(const std::string& busybox) {
  int p[2];
  if (::pipe2(p, O_CLOEXEC) < 0) return Errno("pipe");
  pid_t pid = ::fork();
  if (pid < 0) return Errno("fork");
  if (pid == 0) {
    ::dup2(p[1], 1);
    ::execl(busybox.c_str(), "busybox", "--list", nullptr);
    _exit(127);
  }
  ::close(p[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::read(p[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  ::close(p[0]);
  int status;
  ::waitpid(pid, &status, 0);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return MakeError(ErrorKind::kNotFound, 0, "%s --list failed", busybox.c_str());
  std::vector<std::string> names;
  for (const auto& l : fs::Split(out, '\n'))
    if (!fs::Trim(l).empty()) names.push_back(fs::Trim(l));
  return names;
}

}  // namespace

Result<void> MakeBusyboxRootfs(const std::string& dir, const std::string& busybox) {
  ASSIGN_OR_RETURN(auto applets, Applets(busybox));
  for (const char* d : {"bin", "sbin", "usr/bin", "usr/sbin", "etc", "proc", "sys", "dev", "tmp",
                        "root", "var/tmp", "run", "home"})
    TRY(fs::MkdirAll(dir + "/" + d, 0755));
  ::chmod((dir + "/tmp").c_str(), 01777);
  std::string target = dir + "/bin/busybox";
  if (!fs::Exists(target)) {
    ASSIGN_OR_RETURN(std::string bin, fs::ReadFile(busybox));
    TRY(fs::WriteFile(target + ".tmp", bin));
    if (::chmod((target + ".tmp").c_str(), 0755) < 0) return Errno("chmod %s", target.c_str());
    if (::rename((target + ".tmp").c_str(), target.c_str()) < 0)
      return Errno("rename %s", target.c_str());
  }
  for (const auto& a : applets) {
    if (a == "busybox") continue;
    std::string link = dir + "/bin/" + a;
    if (::symlink("busybox", link.c_str()) < 0 && errno != EEXIST)
      return Errno("symlink %s", link.c_str());
  }
  TRY(fs::WriteFile(dir + "/etc/passwd",
                    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"));
  TRY(fs::WriteFile(dir + "/etc/group", "root:x:0:\nnogroup:x:65534:\n"));
  TRY(fs::WriteFile(dir + "/etc/hosts", "127.0.0.1 localhost\n"));
  return Ok();
}

}  // namespace godwit::runtime
