// The kernel features a migration's two ends compare in the handshake: the names `godwit check`
// prints for the features this host has (probed once per process, cached).
#pragma once

#include <string>
#include <vector>

namespace godwit::migrate {

std::vector<std::string> KernelFeatureNames();

}  // namespace godwit::migrate
