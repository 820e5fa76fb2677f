// The kernel features a migration's two ends compare in the handshake: the names `godwit check`
// prints for the features this host has (probed once per process, cached).
#pragma once

#include <string>
#include <vector>

namespace godwit::migrate {

// root: the state root whose kernel-features.json caches the probes (as `godwit check` does).
std::vector<std::string> KernelFeatureNames(const std::string& root);

}  // namespace godwit::migrate
