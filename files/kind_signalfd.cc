// signalfd: the signal mask, from fdinfo ("sigmask": bit N-1 for signal N).
#include <signal.h>
#include <sys/signalfd.h>

#include "files/kind.h"

namespace godwit::files {

Result<void> DumpSignalfd(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  std::string m = p.info.Get("sigmask");
  if (m.empty()) return MakeError(ErrorKind::kUnsupported, 0, "no sigmask in fdinfo");
  e.mutable_signalfd()->set_mask(strtoull(m.c_str(), nullptr, 16));
  return Ok();
}

Result<UniqueFd> OpenSignalfd(FdRestoreContext& ctx, const img::FileEntry& e) {
  sigset_t set;
  sigemptyset(&set);
  for (int s = 1; s <= 64; s++)
    if (e.signalfd().mask() & (1ull << (s - 1))) sigaddset(&set, s);
  UniqueFd fd(signalfd(-1, &set, SFD_CLOEXEC));
  if (!fd) return Errno("signalfd mask %#llx", static_cast<unsigned long long>(e.signalfd().mask()));
  return fd;
}

}  // namespace godwit::files
