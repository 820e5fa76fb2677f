// The container's writable storage with a disk quota: a tmpfs of the quota's size, mounted in
// the host's mount namespace on <state dir>/storage, holding the overlay's upper/ and work/
// dirs (and merged/, the mount point the init mounts the overlay on inside its own mount
// namespace). The rootfs is the read-only lower layer and never changes; writes past the quota
// fail with ENOSPC inside the container. Being on the host, upper/ is where a checkpoint finds
// the container's file system changes (and where a restore puts them back before the init
// mounts the overlay).
#pragma once

#include <sys/types.h>

#include <string>

#include "common/result.h"

namespace godwit::runtime {

// mkdir dir, mount a tmpfs of size bytes on it, mkdir upper/ work/ merged/ owned by uid:gid
// (the container's root on the host: not 0 with a user namespace).
Result<void> MountStorage(const std::string& dir, int64_t size, uid_t uid, gid_t gid);
// Lazily unmounts it (the container's overlay may still pin it while its init exits). Missing or
// not mounted is success.
Result<void> UnmountStorage(const std::string& dir);

inline std::string StorageUpper(const std::string& dir) { return dir + "/upper"; }
inline std::string StorageWork(const std::string& dir) { return dir + "/work"; }
inline std::string StorageMerged(const std::string& dir) { return dir + "/merged"; }

}  // namespace godwit::runtime
