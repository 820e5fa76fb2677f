#include "container/cgroup_warm.h"

#include <fcntl.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "common/fs.h"
#include "common/log.h"

namespace godwit::container {
namespace {

// The cgroup.procs of a cgroup this process is in (any hierarchy will do: they share the lock),
// or "" when none is writable.
std::string OwnProcsFile() {
  auto text = fs::ReadFile("/proc/self/cgroup");
  if (!text.ok()) return "";
  // Named hierarchies other than systemd's last: they are seldom mounted under /sys/fs/cgroup
  // (a machine that ran CRIU's tests can list dozens).
  std::vector<std::string> lines, named;
  for (auto& line : fs::Split(*text, '\n')) {
    bool other = line.find(":name=") != std::string::npos &&
                 line.find(":name=systemd:") == std::string::npos;
    (other ? named : lines).push_back(std::move(line));
  }
  lines.insert(lines.end(), named.begin(), named.end());
  for (const auto& line : lines) {
    auto first = line.find(':'), second = line.find(':', first + 1);
    if (first == std::string::npos || second == std::string::npos) continue;
    std::string ctrl = line.substr(first + 1, second - first - 1);
    std::string path = line.substr(second + 1);
    if (ctrl.rfind("name=", 0) == 0) ctrl = ctrl.substr(5);
    std::vector<std::string> mounts;
    if (ctrl.empty()) {
      mounts = {"/sys/fs/cgroup/unified", "/sys/fs/cgroup"};
    } else {
      mounts = {"/sys/fs/cgroup/" + ctrl};
    }
    for (const auto& m : mounts) {
      std::string procs = m + (path == "/" ? "" : path) + "/cgroup.procs";
      if (::access(procs.c_str(), W_OK) == 0) return procs;
    }
  }
  return "";
}

}  // namespace

CgroupJoinWarmer::CgroupJoinWarmer() {
  thread_ = std::thread([this] { Run(); });
}

void CgroupJoinWarmer::Run() {
  // Found here, not on the caller's thread: /proc/self/cgroup can list dozens of hierarchies
  // (named ones nobody mounted under /sys/fs/cgroup), each an access() or two.
  const std::string procs = OwnProcsFile();
  if (procs.empty()) return;
  const std::string pid = std::to_string(::getpid());
  // One open file, written again and again: each write is one migration (kernfs takes every
  // write as a new one), and an open and close each time cost as much as the write.
  int fd = ::open(procs.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) {
    LOG_DEBUG("cgroup warm-up through %s: %s; giving up", procs.c_str(), strerror(errno));
    return;
  }
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    lock.unlock();
    bool ok = ::write(fd, pid.data(), pid.size()) == static_cast<ssize_t>(pid.size());
    int err = errno;
    lock.lock();
    if (!ok) {
      LOG_DEBUG("cgroup warm-up through %s: %s; giving up", procs.c_str(), strerror(err));
      break;
    }
    // The lock goes cold one grace period after its last writer (rcu_sync), never less than a
    // jiffy (4 ms at HZ=250 here, 1 ms at HZ=1000): 1 ms apart keeps it warm everywhere; each
    // write is ~25 us of CPU.
    cv_.wait_for(lock, std::chrono::milliseconds(1), [this] { return stop_; });
  }
  ::close(fd);
}

void CgroupJoinWarmer::Stop() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
}

}  // namespace godwit::container
