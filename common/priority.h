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
//
// A lazy restore's pushes and the checks ahead of a migration's restore are the other way round:
// work nobody waits for while the restored container serves its clients. They nap briefly and
// often (Pacer).
#pragma once

#include <sys/resource.h>
#include <sys/types.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <ctime>
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

// Background work that naps 100 us after every 2 ms of CPU, so that no CPU stays busy without
// a break while it runs.
//
// Measured (session 14): a client echoing through a container every 1 ms saw gaps of ~100 ms
// while the container ran at 1 GiB (bench 60): its echo process was runnable and waited for a
// CPU (perf sched: 114 ms) while both CPUs of the host were busy: with a migration's stream, or
// with the lazy pager's two workers filling the migrated copy. Napping workers: the longest gap
// outside the blackout, median of 12, 74.0 -> 35.3 ms (docs/migration.md). The pattern without
// godwit: two CPU hogs on a two-CPU host, a task sleeping 1 ms at a
// time in a cgroup whose other task computes 20 ms every 100 ms, and the sleeper waits up to
// 100 ms (58-104 ms in most of 3 runs each), whatever the hogs' priority: nice 0, nice 19,
// SCHED_IDLE, or in a cgroup of cpu.shares 2. With both hogs on one CPU, or one hog, 5 ms at most.
// With the hogs napping 0.1 ms after every 2 ms, 5.8 ms at most (3 runs; every 4 ms: 8.4 ms).
// Priority does not help; a break does. Its cost: a 1 GiB lazy fill ~10% longer (docs/engine.md).
class Pacer {
 public:
  static constexpr int64_t kRunNs = 2'000'000;
  static constexpr int64_t kNapNs = 100'000;

  explicit Pacer(bool on = true) : on_(on) {}
  // Between two pieces of work (each well under kRunNs): naps once the calling thread used
  // kRunNs of CPU since its last nap. One Pacer per thread.
  void Tick() {
    if (!on_) return;
    int64_t now = ThreadCpuNs();
    if (mark_ == 0) {
      mark_ = now;
      return;
    }
    if (now - mark_ < kRunNs) return;
    timespec nap{0, kNapNs};
    nanosleep(&nap, nullptr);
    mark_ = ThreadCpuNs();
  }

 private:
  static int64_t ThreadCpuNs() {
    timespec t;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
    return static_cast<int64_t>(t.tv_sec) * 1'000'000'000 + t.tv_nsec;
  }
  bool on_;
  int64_t mark_ = 0;  // the thread's CPU time at its last nap (0: not started)
};

}  // namespace godwit
