#include "common/netns.h"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>

#include "common/fs.h"
#include "common/log.h"

namespace godwit::netns {
namespace {

const char* NsName(int nstype) {
  switch (nstype) {
    case CLONE_NEWNET:
      return "net";
    case CLONE_NEWUTS:
      return "uts";
    case CLONE_NEWIPC:
      return "ipc";
    default:
      return nullptr;
  }
}

Result<UniqueFd> OpenNs(pid_t pid, const char* name) {
  std::string path = pid == 0 ? StrFormat("/proc/thread-self/ns/%s", name)
                              : StrFormat("/proc/%d/ns/%s", pid, name);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return MakeError(errno == ENOENT || errno == ESRCH ? ErrorKind::kNotFound : ErrorKind::kGeneric,
                     errno, "open %s", path.c_str());
  return UniqueFd(fd);
}

}  // namespace

Result<UniqueFd> Open(pid_t pid) { return OpenNs(pid, "net"); }

Result<void> NftRunIn(int netns_fd, const std::string& script) {
  int in[2], out[2];
  if (pipe2(in, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd in_rd(in[0]), in_wr(in[1]);
  if (pipe2(out, O_CLOEXEC) < 0) return Errno("pipe");
  UniqueFd out_rd(out[0]), out_wr(out[1]);
  pid_t pid = fork();
  if (pid < 0) return Errno("fork nft");
  if (pid == 0) {
    // Only raw calls here: the caller may have other threads.
    if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) < 0) _exit(126);
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(out[1], 2);
    execlp("nft", "nft", "-f", "-", static_cast<char*>(nullptr));
    // Not on PATH (a daemon's minimal environment): where distributions put it.
    execl("/usr/sbin/nft", "nft", "-f", "-", static_cast<char*>(nullptr));
    execl("/sbin/nft", "nft", "-f", "-", static_cast<char*>(nullptr));
    _exit(127);
  }
  in_rd.reset();
  out_wr.reset();
  auto w = fs::WriteAll(in_wr.get(), script.data(), script.size());
  in_wr.reset();
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = read(out_rd.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    text.append(buf, n);
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 126)
    return MakeError(ErrorKind::kGeneric, 0, "nft: could not enter the net namespace (fd %d)",
                     netns_fd);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
    return MakeError(ErrorKind::kNotFound, 0, "nft: not found");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return MakeError(ErrorKind::kGeneric, 0, "nft failed (status %#x): %s", st,
                     fs::Trim(text).c_str());
  if (!w.ok()) return std::move(w.error().wrap("nft script"));
  return Ok();
}

Result<void> NftRun(pid_t netns_pid, const std::string& script) {
  if (netns_pid == 0) return NftRunIn(-1, script);
  ASSIGN_OR_RETURN(UniqueFd ns, Open(netns_pid));
  return NftRunIn(ns.get(), script);
}

Result<ScopedNetns> ScopedNetns::Enter(int ns_fd, int nstype) {
  const char* name = NsName(nstype);
  if (!name) return MakeError(ErrorKind::kUsage, EINVAL, "ScopedNetns: namespace type %#x", nstype);
  ASSIGN_OR_RETURN(UniqueFd own, OpenNs(0, name));
  if (setns(ns_fd, nstype) < 0) return Errno("setns(fd %d, %s)", ns_fd, name);
  return ScopedNetns(std::move(own), nstype);
}

Result<void> ScopedNetns::Leave() {
  if (!own_) return Ok();
  if (setns(own_.get(), nstype_) < 0)
    return Errno("setns back to our own %s namespace (this thread stays in the other one)",
                 NsName(nstype_));
  own_.reset();
  return Ok();
}

ScopedNetns::~ScopedNetns() {
  auto r = Leave();
  if (!r.ok()) {
    LOG_ERROR("%s", r.error().to_string().c_str());
    abort();
  }
}

}  // namespace godwit::netns
