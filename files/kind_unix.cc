#include "files/kind.h"
namespace godwit::files {
Result<void> DumpUnix(DumpContext& ctx, const Probe& p, img::FileEntry& e) {
  return MakeError(ErrorKind::kUnsupported, 0, "unix sockets: not yet");
}
Result<UniqueFd> OpenUnix(RestoreContext& ctx, const img::FileEntry& e) {
  return MakeError(ErrorKind::kUnsupported, 0, "unix sockets: not yet");
}
}  // namespace godwit::files
