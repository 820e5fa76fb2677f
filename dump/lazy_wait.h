// A tree restored with --lazy (restore/lazy.h) may still be owed pages: its pager installs them
// from outside with userfaultfd, and until it is done those pages are simply not there. A dump
// that ran then would see them as never touched (zero) and lose them, and its own userfaultfd
// (pre-copy's write-protect tracking) could not register those VMAs. So a dump first waits for
// the pager: the kernel shows a VMA registered for missing faults as "um" in smaps' VmFlags, and
// the pager unregisters everything when its last page is in.
#pragma once

#include <sys/types.h>

#include <map>

#include "common/result.h"
#include "dump/vmflags.h"

namespace godwit::dump {

// Waits (up to timeout_ms) until no process of root's tree has a VMA registered for missing
// faults. kBusy-like error naming the pid when the time is up. Returns at once in the usual case.
// known: smaps flags read just before (dump.cc, big processes): a process whose flags there
// show no such VMA is not read again (smaps walks every page table: ~60 ms per GiB).
Result<void> WaitLazyPages(pid_t root, int timeout_ms,
                           const std::map<pid_t, VmFlagsSnapshot>* known = nullptr);
inline constexpr int kLazyWaitMs = 60000;

}  // namespace godwit::dump
