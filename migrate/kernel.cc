#include "migrate/kernel.h"

namespace godwit::migrate {

// Until the engine exposes its probes as a value (issue 9, KernelFeatures): nothing compared.
std::vector<std::string> KernelFeatureNames() { return {}; }

}  // namespace godwit::migrate
