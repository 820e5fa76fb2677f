// Keeping the kernel's cgroup migration lock warm until a restored container joins its cgroups.
#pragma once

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>

namespace godwit::container {

// Every write to a cgroup.procs file takes the kernel's cgroup_threadgroup_rwsem for writing. The
// first writer after a quiet spell waits for an RCU grace period (rcu_sync; 7-15 ms in this VM),
// writers within a grace period of the previous one do not (0.04 ms). A restore's cgroup join
// (AddProcess of the root task: one write per hierarchy) is on the way to the container running
// again, so from the start of the restore until Stop() a thread "moves" this process into the
// cgroup it is already in (a no-op migration) every millisecond: the grace period is paid while
// the restore prepares, and the join finds the lock warm. Without a writable cgroup.procs of our
// own the thread does nothing.
class CgroupJoinWarmer {
 public:
  CgroupJoinWarmer();
  ~CgroupJoinWarmer() { Stop(); }
  CgroupJoinWarmer(const CgroupJoinWarmer&) = delete;
  CgroupJoinWarmer& operator=(const CgroupJoinWarmer&) = delete;

  void Stop();

 private:
  void Run();

  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace godwit::container
