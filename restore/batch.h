// Injected syscalls run as one batch: the calls are queued, then a small loop in the target's
// scratch area makes them one after the other and stops at its int3 (remote::Remote::RunCode):
// one ptrace stop for the batch instead of one each (each stop is a dozen ptrace calls and two
// context switches, and on a busy machine a wait for a core, 12 us to milliseconds). The calls
// must not depend on each other's results (an fd a call returns, say); they run in the order
// queued and the batch stops at the first that fails. Where an int3 is not safe in the target
// (Remote::RunCode declines), Flush makes the calls one by one: the same calls, the same order.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/remote.h"
#include "common/result.h"

namespace godwit::restore {

class SyscallBatch {
 public:
  explicit SyscallBatch(remote::Remote* r) : r_(r) {}
  // Queues nr(args) in the main thread; `what` names it in an error. expect: the value the call
  // must return (an mmap's MAP_FIXED address), else any non-error value.
  void Add(std::string what, long nr, uint64_t a0 = 0, uint64_t a1 = 0, uint64_t a2 = 0,
           uint64_t a3 = 0, uint64_t a4 = 0, uint64_t a5 = 0,
           std::optional<uint64_t> expect = std::nullopt);
  // Runs what was queued; the first failure is the result (the calls after it did not run).
  Result<void> Flush();
  size_t pending() const { return calls_.size(); }

 private:
  struct Call {
    std::string what;
    long nr;
    uint64_t args[6];
    std::optional<uint64_t> expect;
  };
  Result<void> Check(const Call& c, long rc) const;
  remote::Remote* r_;
  std::vector<Call> calls_;
};

}  // namespace godwit::restore
