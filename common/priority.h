// Scheduling priority for a migration's blackout.
//
// From the freeze to the commit, a migration's work (the final dump on the source, receiving
// and restoring on the destination) is a critical section: every millisecond of it is a
// millisecond the container's clients wait. On a host whose CPUs are busy with other work, a
// nice-0 thread there gets a fair share only: a migration measured under two cores of compile
// jobs (load 7) froze for 80-160 ms where a quiet host took 60-80, the final dump alone 31-83 ms
// instead of 14-27 with the threads at nice -20. The threads doing that work are raised to nice
// -20 for the blackout and put back after it; what they create meanwhile inherits it (the
// restored tree takes its own scheduling attributes from its images: restore/pstate.cc).
// Needs CAP_SYS_NICE; without it nothing changes (the blackout is only longer under load).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <utility>
#include <vector>

namespace godwit {

inline constexpr int kBlackoutNice = -20;

// Raises a thread (tid; 0: the calling one) to kBlackoutNice; false if refused.
inline bool RaisePriority(pid_t tid) {
  if (tid == 0) tid = gettid();
  return setpriority(PRIO_PROCESS, static_cast<id_t>(tid), kBlackoutNice) == 0;
}

// Threads raised for a scope, each put back to the nice it had when the scope ends.
class PriorityBoost {
 public:
  PriorityBoost() = default;
  PriorityBoost(const PriorityBoost&) = delete;
  PriorityBoost& operator=(const PriorityBoost&) = delete;
  ~PriorityBoost() { End(); }

  // tid 0: the calling thread. Once per thread (a second Add would remember the raised nice).
  void Add(pid_t tid) {
    if (tid == 0) tid = gettid();
    for (const auto& [t, nice] : saved_)
      if (t == tid) return;
    errno = 0;
    int was = getpriority(PRIO_PROCESS, static_cast<id_t>(tid));
    if (was == -1 && errno != 0) return;
    if (RaisePriority(tid)) saved_.emplace_back(tid, was);
  }
  bool empty() const { return saved_.empty(); }
  void End() {
    for (const auto& [tid, nice] : saved_) setpriority(PRIO_PROCESS, static_cast<id_t>(tid), nice);
    saved_.clear();
  }

 private:
  std::vector<std::pair<pid_t, int>> saved_;
};

}  // namespace godwit
