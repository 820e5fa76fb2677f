// Named network namespaces a test makes itself (`ip netns add`, /run/netns/NAME), removed when
// the ScratchNetns goes out of scope (also after a failed assertion), and InNetns to run code in
// one of them: a socket stays in the namespace it was made in, so a test makes its sockets (or
// packet holds) there and uses them from anywhere.
#pragma once

#include <fcntl.h>
#include <sched.h>
#include <unistd.h>

#include <cstdlib>
#include <functional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace godwit::testing {

class ScratchNetns {
 public:
  explicit ScratchNetns(std::vector<std::string> names) : names_(std::move(names)) {}
  ~ScratchNetns() {
    for (const auto& n : names_) (void)std::system(("ip netns del " + n + " 2>/dev/null").c_str());
  }
  ScratchNetns(const ScratchNetns&) = delete;
  ScratchNetns& operator=(const ScratchNetns&) = delete;

 private:
  std::vector<std::string> names_;
};

// Runs fn on a thread that entered /run/netns/name (not at all if it cannot).
inline void InNetns(const std::string& name, const std::function<void()>& fn) {
  std::thread t([&] {
    int fd = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd >= 0 && ::setns(fd, CLONE_NEWNET) == 0) fn();
    if (fd >= 0) ::close(fd);
  });
  t.join();
}

}  // namespace godwit::testing
