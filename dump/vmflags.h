// What the VmFlags line of /proc/PID/smaps says about each VMA (the flags maps does not show):
// the page dump (dump/mm.cc) and the wait for a lazy restore's pager (dump/lazy_wait.cc).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>

#include "common/result.h"

namespace godwit::dump {

struct VmFlags {
  bool growsdown = false, noreserve = false, locked = false, onfault = false, sealed = false,
       droppable = false, maywrite = false, hugetlb = false;
  bool uffd_missing = false;  // "um": registered with a userfaultfd for missing faults
  uint64_t kernel_page_kb = 0;
  uint64_t madv = 0;  // 1 << MADV_x
};

// VmFlags of every VMA of pid by start address. smaps is the only interface that shows them
// (PROCMAP_QUERY reports r/w/x/shared only); reading it costs a page-table walk per VMA.
Result<std::map<uint64_t, VmFlags>> ReadVmFlags(pid_t pid);

}  // namespace godwit::dump
