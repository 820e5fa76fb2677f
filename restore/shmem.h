// Shared memory objects of a restored tree (restore/shmem.cc): made again in the coordinator
// before the fork, mapped by the "mm" step, sealed at the end.
#pragma once

#include "common/remote.h"
#include "restore/context.h"

namespace godwit::restore {

// The dumped object with this id (shmem.img), or null.
const img::ShmemObject* FindShmem(const RestoreContext& ctx, uint64_t id);
// A memfd ("/memfd:NAME (deleted)" in the maps).
bool IsMemfd(const img::ShmemObject& o);
// An empty object of the dumped one's kind and size: shared anonymous memory is a real one again
// ("/dev/zero (deleted)" in the maps), shared hugetlb memory likewise, anything else a memfd
// (sealable when the original was).
Result<UniqueFd> NewShmemObject(const img::ShmemObject& o, const char* memfd_name);
// Every object of shmem.img made again and filled with its dumped contents, into
// ctx.shmem_fds (before the fork: the restored processes get them passed in "mm").
Result<void> PrepareShmem(RestoreContext& ctx);

// In the "mm" step of one process (r: its remote channel):
// A SysV shm mapping attached with shmat: the segment itself when it still exists in the
// process's IPC namespace, else after creating it again. false: v is not a SysV mapping.
Result<bool> AttachSysv(RestoreContext& ctx, remote::Remote* r, const img::Vma& v);
// Seals that must be in place before an object is mapped (F_SEAL_WRITE: the original's
// mappings could never become writable).
Result<void> EarlySeals(RestoreContext& ctx, const ProcessRestore& p);
// Once the last process mapping an object is done: the remaining seals, and a SysV segment that
// was IPC_RMID'd removed again.
Result<void> FinishShmem(RestoreContext& ctx, ProcessRestore& p);

}  // namespace godwit::restore
