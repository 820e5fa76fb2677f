// What this kernel offers that godwit needs or uses, as a value: probed once (a few ms: a clone3,
// a ptrace attach, a userfaultfd...), cached in a JSON file (`godwit check`: ROOT/kernel-features
// .json), carried by dump, restore and a migration handshake and compared between hosts.
//
//   ASSIGN_OR_RETURN(KernelFeatures have, CachedKernelFeatures(root + "/kernel-features.json"));
//   std::vector<std::string> missing = Compare(RequiredKernelFeatures(), have);
//   // a peer's needs: Compare(KernelFeaturesFromJson(theirs), have)
//
// The cache is trusted while the kernel release, the boot id (a reboot may change sysctls and
// modules) and the probe version match; otherwise the kernel is probed again and the file
// rewritten. Probing runs in the calling process and needs what godwit itself needs (root:
// clone3 set_tid, ptrace).
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/result.h"

namespace godwit {

// Bump when a probe changes, so older cached answers are not trusted.
inline constexpr int kKernelProbeVersion = 4;

struct KernelFeatures {
  int probe_version = kKernelProbeVersion;
  std::string kernel_release;  // uname -r
  std::string boot_id;         // /proc/sys/kernel/random/boot_id
  // Needed by every dump or restore.
  bool clone3_set_tid = false;      // restore pids and tids
  bool ptrace_rseq_config = false;  // PTRACE_GET_RSEQ_CONFIGURATION: dump rseq registrations
  bool pr_set_mm_map = false;       // PR_SET_MM_MAP: restore the mm fields
  bool map_files = false;           // /proc/PID/map_files: shared memory contents
  bool pidfd_getfd = false;         // take fds out of a frozen process
  // Used when present.
  bool uffd_wp_async = false;  // userfaultfd WP_ASYNC: pre-copy dirty tracking
  bool pagemap_scan = false;   // PAGEMAP_SCAN: pre-copy dirty tracking
  bool soft_dirty = false;     // CRIU's dirty tracking (godwit does not need it)
  bool tcp_repair = false;     // TCP_REPAIR: established connections
  uint32_t xsave_size = 0;     // bytes of the XSAVE area (cpuid 0xd): the registers a thread has
  // Per feature name: why a probe failed, or what it found (shown by `godwit check`).
  std::map<std::string, std::string> details;
  // Set by CachedKernelFeatures: answered from the cache file (not serialized).
  bool cached = false;
};

// The boolean features, in the order `godwit check` shows them.
struct KernelFeatureInfo {
  const char* name;  // as in the JSON and in Compare's answer
  bool required;     // needed by every dump or restore
  const char* what;
  bool KernelFeatures::*field;
};
const std::vector<KernelFeatureInfo>& KernelFeatureList();

// Probes this kernel now.
Result<KernelFeatures> ProbeKernelFeatures();
// The cached answer at path when still valid (see above), else a fresh probe saved there (a
// cache that cannot be written is logged, not an error). force: probe and save regardless.
Result<KernelFeatures> CachedKernelFeatures(const std::string& path, bool force = false);

// What a godwit dump or restore needs on any host: the required features, nothing else.
KernelFeatures RequiredKernelFeatures();
// The names of what needed has and have lacks (every feature set in needed but not in have, and
// "xsave_size" when have's XSAVE area is smaller); empty: have is enough.
std::vector<std::string> Compare(const KernelFeatures& needed, const KernelFeatures& have);

// {"probe_version", "kernel_release", "boot_id", "xsave_size",
//  "features": [{"name", "ok", "required", "what", "detail"}...]}
nlohmann::json KernelFeaturesToJson(const KernelFeatures& f);
// The inverse. A malformed document is kBadConfig; an unknown feature name is ignored, a missing
// one reads as absent.
Result<KernelFeatures> KernelFeaturesFromJson(const nlohmann::json& j);

}  // namespace godwit
