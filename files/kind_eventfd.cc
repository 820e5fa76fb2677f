// eventfd: the counter and the semaphore flag, from fdinfo.
#include <sys/eventfd.h>
#include <fcntl.h>
#include <unistd.h>

#include "files/kind.h"

namespace godwit::files {

Result<void> DumpEventfd(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  std::string c = p.info.Get("eventfd-count");  // "%16llx"
  if (c.empty()) return MakeError(ErrorKind::kUnsupported, 0, "no eventfd-count in fdinfo");
  e.mutable_eventfd()->set_count(strtoull(c.c_str(), nullptr, 16));
  std::string sem = p.info.Get("eventfd-semaphore");
  // Kernels before 6.7 do not print the flag: EFD_SEMAPHORE is not visible there.
  e.mutable_eventfd()->set_semaphore(!sem.empty() && sem != "0");
  return Ok();
}

Result<UniqueFd> OpenEventfd(FdRestoreContext& ctx, const img::FileEntry& e) {
  UniqueFd fd(eventfd(0, EFD_CLOEXEC | (e.eventfd().semaphore() ? EFD_SEMAPHORE : 0)));
  if (!fd) return Errno("eventfd");
  uint64_t c = e.eventfd().count();
  if (c == UINT64_MAX) return MakeError(ErrorKind::kBadImage, 0, "eventfd count overflow");
  if (c && write(fd.get(), &c, sizeof(c)) != sizeof(c)) return Errno("eventfd write %llu",
                                                                     static_cast<unsigned long long>(c));
  return fd;
}

}  // namespace godwit::files
