// `godwit check [--force] [--json]`: which kernel features this machine offers and which godwit
// needs, like `criu check`. The probes and their cache (ROOT/kernel-features.json, trusted while
// the kernel release and boot id match) are common/kernel_features.h; --force probes anyway.
#include <cstdio>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/args.h"
#include "common/kernel_features.h"

namespace godwit::cli {
namespace {

int CheckCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{}, {"force"}, {}};
  auto pa = ParseArgs(args, spec);
  if (!pa.ok()) return ReportError(g, "check", pa.error());
  auto have = CachedKernelFeatures(g.root + "/kernel-features.json", pa->has("force"));
  if (!have.ok()) return ReportError(g, "check", have.error());
  std::vector<std::string> missing = Compare(RequiredKernelFeatures(), *have);
  nlohmann::json out = KernelFeaturesToJson(*have);
  out["cached"] = have->cached;
  out["ok"] = missing.empty();
  out["missing"] = missing;
  if (g.json) {
    printf("%s\n", out.dump().c_str());
  } else {
    for (const auto& f : out["features"]) {
      printf("%-20s %-4s %s%s%s\n", f["name"].get<std::string>().c_str(),
             f["ok"].get<bool>() ? "yes" : "NO", f["what"].get<std::string>().c_str(),
             f["detail"].get<std::string>().empty() ? "" : ": ",
             f["detail"].get<std::string>().c_str());
    }
    printf("xsave area: %u bytes; kernel %s\n", have->xsave_size, have->kernel_release.c_str());
    printf("%s%s\n",
           missing.empty() ? "godwit can checkpoint and restore on this kernel"
                           : "MISSING features godwit needs",
           have->cached ? " (cached; --force to probe again)" : "");
  }
  return missing.empty() ? 0 : static_cast<int>(ErrorKind::kUnsupported);
}

}  // namespace

GODWIT_COMMAND(check, "check", "check [--force] [--json]",
               "which kernel features godwit needs and this machine offers", CheckCmd,
               "Probes the kernel features checkpoint/restore needs (clone3 set_tid, ptrace\n"
               "seize, userfaultfd, TCP_REPAIR, ...) and prints one line each. The result is\n"
               "cached in <root>/kernel-features.json; exit 6 when a required feature is missing.\n"
               "\n"
               "options:\n"
               "  --force   probe again instead of reading the cache\n"
               "  --json    one object: {\"features\":[...],\"ok\":BOOL,\"missing\":[...],\"cached\":BOOL}\n"
               "\n"
               "examples:\n"
               "  godwit check\n"
               "  godwit check --force --json\n");

}  // namespace godwit::cli
