// Two "hosts" and a client on one machine, for tests: the namespaces of scripts/netns-hosts (the
// same script, so tests exercise what the demo and the benchmark use), made by Up() and removed
// by Down() or the destructor, also after a failed assertion. A set left by a test that was
// killed is removed by the next Up() with the same prefix.
//
//   NetnsHosts h(StrFormat("gwt%d", getpid()));
//   ASSERT_OK(h.Up());
//   Godwit({"--root", ra, "--cgroup-parent", pa, "run", ..., "--bridge", "br0"}, true, h.Fd('a'));
//
// Needs GODWIT_SCRIPTS (the source tree's scripts/ directory) defined by the test's cmake.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <string>

#include "common/fs.h"
#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::testing {

class NetnsHosts {
 public:
  // The addresses scripts/netns-hosts gives (198.18.0.0/15, one segment, no route out).
  static constexpr const char* kBridge = "br0";  // in each host
  static constexpr const char* kHostA = "198.18.0.1";
  static constexpr const char* kHostB = "198.18.0.2";
  static constexpr const char* kClient = "198.18.0.100";
  static constexpr int kPrefixLen = 15;
  // The n-th container address (1 <= n <= 254): 198.18.1.n.
  static std::string ContainerIp(int n) { return StrFormat("198.18.1.%d", n); }

  // prefix: 1-32 of [A-Za-z0-9_-], unique among concurrent runs (a pid in it).
  explicit NetnsHosts(std::string prefix) : prefix_(std::move(prefix)) {}
  ~NetnsHosts() { (void)Down(); }
  NetnsHosts(const NetnsHosts&) = delete;
  NetnsHosts& operator=(const NetnsHosts&) = delete;

  Result<void> Up() {
    (void)Run("down");  // leftovers of a killed run with this prefix
    up_ = true;
    TRY(Run("up"));
    for (const char* n : {"a", "b", "c", "br"}) {
      int fd = ::open(Path(n).c_str(), O_RDONLY | O_CLOEXEC);
      if (fd < 0) return Errno("open %s", Path(n).c_str());
      fds_[n] = UniqueFd(fd);
    }
    return Ok();
  }

  // Idempotent. The netns fds are closed first: an open fd keeps a namespace (and its links)
  // alive after its bind mount is gone.
  Result<void> Down() {
    fds_.clear();
    if (!up_) return Ok();
    up_ = false;
    return Run("down");
  }

  const std::string& prefix() const { return prefix_; }
  // "a", "b" (hosts), "c" (client), "br" (the segment).
  std::string Name(const std::string& which) const { return prefix_ + "-" + which; }
  std::string Path(const std::string& which) const { return "/run/netns/" + Name(which); }
  // An fd of the namespace (valid between Up and Down), e.g. for Godwit(..., netns_fd).
  int Fd(const std::string& which) const {
    auto it = fds_.find(which);
    return it == fds_.end() ? -1 : it->second.get();
  }
  // A shell prefix running a command in the namespace without remounting /sys (unlike
  // `ip netns exec`, which would hide /sys/fs/cgroup).
  std::string Nsenter(const std::string& which) const {
    return "nsenter --net=" + Path(which) + " ";
  }

 private:
  Result<void> Run(const char* verb) {
    std::string cmd = StrFormat("%s/netns-hosts %s %s 2>&1", GODWIT_SCRIPTS, verb, prefix_.c_str());
    FILE* f = ::popen(cmd.c_str(), "r");
    if (!f) return Errno("popen %s", cmd.c_str());
    std::string out;
    char buf[1024];
    size_t n;
    while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
    int st = ::pclose(f);
    if (st != 0)
      return MakeError(ErrorKind::kGeneric, 0, "`%s` failed (%d): %s", cmd.c_str(), st,
                       out.c_str());
    return Ok();
  }

  std::string prefix_;
  bool up_ = false;
  std::map<std::string, UniqueFd> fds_;
};

}  // namespace godwit::testing
