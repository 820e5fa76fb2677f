// What the VmFlags line of /proc/PID/smaps says about each VMA (the flags maps does not show):
// the page dump (dump/mm.cc) and the wait for a lazy restore's pager (dump/lazy_wait.cc).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <optional>
#include <vector>

#include "common/result.h"
#include "dump/vma_iter.h"

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

// smaps' flags together with the raw VMAs they were read from (dump/vma_iter.h): taken by a
// pre-copy round while the tree runs, reused by the final dump while it is frozen.
struct VmFlagsSnapshot {
  std::vector<RawVma> raw;
  std::map<uint64_t, VmFlags> flags;
};
// Reads smaps between two raw reads of pid's VMAs; nothing when they differ (the process changed
// its mappings meanwhile), when the iterator is unavailable, or when smaps and the raw VM_LOCKED /
// VM_LOCKONFAULT bits disagree (then the bits mean something else on this kernel).
std::optional<VmFlagsSnapshot> TakeVmFlagsSnapshot(pid_t pid);
// pid's flags now, from snap, if its VMAs outside [skip_start, skip_end) (the dumper's scratch
// mapping, made since) are exactly those of snap, flags included; the scratch mapping's own entry
// carries its lock bits (mm.cc reads mlockall(MCL_FUTURE) there). Nothing otherwise: read smaps.
std::optional<std::map<uint64_t, VmFlags>> ReuseVmFlags(pid_t pid, const VmFlagsSnapshot& snap,
                                                        uint64_t skip_start, uint64_t skip_end);

}  // namespace godwit::dump
