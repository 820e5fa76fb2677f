// A tree restored with --lazy (restore/lazy.h) may still be owed pages: its pager installs them
// from outside with userfaultfd, and until it is done those pages are simply not there. A dump
// that ran then would see them as never touched (zero) and lose them, and its own userfaultfd
// (pre-copy's write-protect tracking) could not register those VMAs. So a dump first waits for
// the pager: the kernel shows a VMA registered for missing faults as "um" in smaps' VmFlags, and
// the pager unregisters everything when its last page is in.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>

#include "common/result.h"
#include "dump/vmflags.h"

namespace godwit::dump {

// The detached pager a container's record names (runtime::Container::pager_pid and its start
// time, /proc/PID/stat field 22), if any: waited for by its exit, which costs no CPU.
struct LazyPagerRef {
  pid_t pid = 0;
  uint64_t start_time = 0;
};

struct LazyWaitStats {
  int smaps_reads = 0;      // processes' smaps read (each walks its page tables)
  bool pager_exit = false;  // waited for the pager's exit
  double waited_ms = 0;     // 0 in the usual case: nothing owed
};

// Waits (up to timeout_ms) until no process of root's tree has a VMA registered for missing
// faults. kBusy-like error naming the pid when the time is up. Returns at once in the usual case.
// known: smaps flags read just before (dump.cc, big processes): a process whose flags there
// show no such VMA is not read again (smaps walks every page table: ~40-60 ms per GiB).
// pager: waited for by a pidfd first. Without it (or once it is gone) smaps is polled, at most a
// fifth of the time: reading it again at once would take a CPU from the pager and the workload.
Result<void> WaitLazyPages(pid_t root, int timeout_ms,
                           const std::map<pid_t, VmFlagsSnapshot>* known = nullptr,
                           const LazyPagerRef& pager = {}, LazyWaitStats* stats = nullptr);
inline constexpr int kLazyWaitMs = 60000;

}  // namespace godwit::dump
