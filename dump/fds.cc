// Step "fds": the process's file descriptors, through the per-kind table in files/.
#include "dump/steps.h"
#include "files/files.h"

namespace godwit::dump {

Result<void> DumpFds(DumpContext& ctx, ProcessDump& p) {
  if (ctx.fds == nullptr) return Ok();
  // Its parent's table, dumped with the parent (FreezeTree found it with kcmp KCMP_FILES).
  if (p.entry && p.entry->shares_parent_files()) return Ok();
  TRY_CTX(ctx.fds->DumpProcess(p.pid), "pid %d: file descriptors", p.pid);
  return Ok();
}

}  // namespace godwit::dump
