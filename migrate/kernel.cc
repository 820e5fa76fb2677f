#include "migrate/kernel.h"

#include <mutex>

#include "common/kernel_features.h"
#include "common/log.h"

namespace godwit::migrate {

// The features this host offers, by name (`godwit check`'s names), from the probe cache the
// check verb also uses (re-probed when the kernel or the boot differs): a source sends what it
// has (what its dump may have relied on), a destination refuses names it lacks.
std::vector<std::string> KernelFeatureNames(const std::string& root) {
  static std::once_flag once;
  static std::vector<std::string> names;
  std::call_once(once, [&root] {
    auto f = CachedKernelFeatures(root + "/kernel-features.json");
    if (!f.ok()) f = ProbeKernelFeatures();
    if (!f.ok()) {
      LOG_WARN("kernel features: %s", f.error().to_string().c_str());
      return;
    }
    for (const auto& info : KernelFeatureList())
      if ((*f).*(info.field)) names.push_back(info.name);
  });
  return names;
}

}  // namespace godwit::migrate
