// The per-process dump steps, in order. Each kind of state is one step in its own file; a new kind
// adds one line to the table in dump/steps.cc.
#pragma once

#include <vector>

#include "dump/context.h"

namespace godwit::dump {

struct DumpStep {
  const char* name;
  Result<void> (*fn)(DumpContext& ctx, ProcessDump& p);
};

const std::vector<DumpStep>& ProcessSteps();

// The steps (defined in their own files).
Result<void> DumpCore(DumpContext& ctx, ProcessDump& p);    // core.cc: threads, registers
Result<void> DumpMm(DumpContext& ctx, ProcessDump& p);      // mm.cc: VMAs, mm fields, pages
Result<void> DumpPstate(DumpContext& ctx, ProcessDump& p);  // pstate*.cc: pstate-<pid>.img
Result<void> DumpFds(DumpContext& ctx, ProcessDump& p);     // fds.cc: files/ FdDumper

// mm.cc: the page blob of pid (pages-PID.img), created early by the driver to reserve space.
// raw: store uncompressed even if the dump compresses (the data did not compress in a sample).
Result<images::BlobWriter> OpenPageBlob(DumpContext& ctx, pid_t pid, bool raw = false);
// The second page file of pid (DumpTuning::split_pages): a pagemap record of its own. Used from
// this many bytes of pages.
inline constexpr uint64_t kSplitPagesMin = 64ULL << 20;
std::string SecondPageBlobName(pid_t pid);
// mm.cc, kill mode with captured pages (DumpContext::captured), once every process is captured:
// releases each process's memory and copies its pages into its page files, then writes its
// pagemap. A failure leaves the tree unable to run (the caller kills it).
Result<void> FinishCapturedPages(DumpContext& ctx);

// pstate.cc: whether processes a and b (0: the caller) are in the same user namespace.
Result<bool> SameUserns(pid_t a, pid_t b);

}  // namespace godwit::dump
