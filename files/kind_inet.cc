#include "files/kind.h"
namespace godwit::files {
Result<void> DumpInet(DumpContext& ctx, const Probe& p, img::FileEntry& e) {
  return MakeError(ErrorKind::kUnsupported, 0, "inet sockets: not yet");
}
Result<UniqueFd> OpenInet(RestoreContext& ctx, const img::FileEntry& e) {
  return MakeError(ErrorKind::kUnsupported, 0, "inet sockets: not yet");
}
Result<void> FinalizeInet(RestoreContext& ctx, const img::FileEntry& e, int fd) { return Ok(); }
Result<int> DumpContext::DiagSocket(pid_t pid) { return -1; }
Result<void> DumpContext::LockConnection(pid_t pid, const img::InetSocket& sk) { return Ok(); }
Result<void> NetUnlock(const std::string& table) { return Ok(); }
}  // namespace godwit::files
