#include "runtime/storage.h"

#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/scope_exit.h"

namespace godwit::runtime {

Result<void> MountStorage(const std::string& dir, int64_t size, uid_t uid, gid_t gid) {
  if (size <= 0)
    return MakeError(ErrorKind::kBadConfig, 0, "storage size %lld: must be > 0",
                     static_cast<long long>(size));
  if (::mkdir(dir.c_str(), 0711) < 0 && errno != EEXIST) return Errno("mkdir %s", dir.c_str());
  std::string data = StrFormat("size=%lld,mode=0711", static_cast<long long>(size));
  if (::mount("godwit-storage", dir.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, data.c_str()) < 0) {
    Error e = Errno("mount tmpfs (%s) on %s", data.c_str(), dir.c_str());
    if (e.sys_errno() == EINVAL) return Error(ErrorKind::kBadConfig, EINVAL, e.message());
    return e;
  }
  ScopeExit undo([&] { (void)UnmountStorage(dir); });
  for (const auto& d : {StorageUpper(dir), StorageWork(dir), StorageMerged(dir)}) {
    if (::mkdir(d.c_str(), 0755) < 0) return Errno("mkdir %s", d.c_str());
    if ((uid != 0 || gid != 0) && ::chown(d.c_str(), uid, gid) < 0)
      return Errno("chown %s", d.c_str());
  }
  undo.dismiss();
  return Ok();
}

Result<void> UnmountStorage(const std::string& dir) {
  if (::umount2(dir.c_str(), MNT_DETACH) < 0 && errno != EINVAL && errno != ENOENT)
    return Errno("umount %s", dir.c_str());
  return Ok();
}

}  // namespace godwit::runtime
