// Every VMA of a process with the kernel's raw vm_flags, read by a BPF task_vma iterator in
// microseconds, where /proc/PID/smaps (the only file that shows the flags) walks every page table
// first: 45-80 ms per GiB of resident memory here, inside the frozen time of a final dump.
//
// The raw bits are the kernel's internal VM_* flags. They are compared, never decoded: a pre-copy
// round reads smaps once with a snapshot on each side (dump/vmflags.h VmFlagsSnapshot), and the
// final dump, frozen, reuses those smaps flags when the snapshot it takes then is the same, VMA
// for VMA. The one exception is VM_LOCKED/VM_LOCKONFAULT of the dumper's own scratch mapping
// (mlockall(MCL_FUTURE) shows there), and those two bits are checked against smaps first.
//
// The program is a handful of instructions emitted here (no clang, no object file): the field
// offsets of struct vm_area_struct come from the running kernel's BTF. Where any of this is
// missing (no BTF, no BPF iterators, no privilege), Shared() is null and callers read smaps.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::dump {

struct RawVma {
  uint64_t start = 0, end = 0, flags = 0;
  bool operator==(const RawVma& o) const {
    return start == o.start && end == o.end && flags == o.flags;
  }
};

// The kernel's VM_LOCKED and VM_LOCKONFAULT (include/linux/mm.h, unchanged since 4.4).
inline constexpr uint64_t kVmLocked = 0x2000;
inline constexpr uint64_t kVmLockOnFault = 0x80000;

class VmaIter {
 public:
  // The program, loaded once per process; null when this kernel or privilege cannot run it.
  static VmaIter* Shared();
  // pid's VMAs in address order.
  Result<std::vector<RawVma>> Read(pid_t pid) const;

 private:
  static std::unique_ptr<VmaIter> Load();
  UniqueFd prog_;
};

}  // namespace godwit::dump
