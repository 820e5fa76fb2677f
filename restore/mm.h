// Shared by the files of the "mm" step (mm.cc, pages.cc, shmem.cc).
#pragma once

#include <fcntl.h>

#include <string>

#include "common/remote.h"
#include "common/result.h"

namespace godwit::restore {

// openat(dirfd, path, flags | O_CLOEXEC) inside the process of r; the fd there.
Result<long> OpenInTarget(remote::Remote* r, const std::string& path, int flags,
                          int dirfd = AT_FDCWD);

}  // namespace godwit::restore

namespace godwit::img {
class Vma;
}
namespace godwit::restore {

// restore/aio.cc: the AIO ring of v made again in the process of r: io_setup with the dumped size,
// its completed-event tail moved where it was (writes to /dev/null complete at once), head and
// events written back, and the ring moved to its address with mremap (the kernel follows the move:
// the context id is the address). Run once the other VMAs are in place (the ring's own range is
// left free for it).
Result<void> RestoreAioRing(remote::Remote* r, const img::Vma& v);

}  // namespace godwit::restore
