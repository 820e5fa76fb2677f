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
