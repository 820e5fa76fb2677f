#include "dump/lazy_wait.h"

#include <time.h>

#include <string>
#include <vector>

#include "common/log.h"
#include "common/proc.h"
#include "dump/vmflags.h"

namespace godwit::dump {
namespace {

// Whether pid has a VMA registered for missing faults. false if unreadable (gone).
bool HasMissingRegistration(pid_t pid) {
  auto flags = ReadVmFlags(pid);
  if (!flags.ok()) return false;
  for (const auto& [start, f] : *flags)
    if (f.uffd_missing) return true;
  return false;
}

}  // namespace

Result<void> WaitLazyPages(pid_t root, int timeout_ms,
                           const std::map<pid_t, VmFlagsSnapshot>* known) {
  std::vector<pid_t> pids = proc::Descendants(root);
  pids.insert(pids.begin(), root);
  timespec start, now;
  clock_gettime(CLOCK_MONOTONIC, &start);
  bool logged = false;
  for (pid_t pid : pids) {
    if (known != nullptr) {
      if (auto it = known->find(pid); it != known->end()) {
        bool um = false;
        for (const auto& [start, f] : it->second.flags) um = um || f.uffd_missing;
        if (!um) continue;
      }
    }
    while (HasMissingRegistration(pid)) {
      if (!logged) {
        LOG_INFO("pid %d is still being paged in by a lazy restore's pager: waiting for it", pid);
        logged = true;
      }
      clock_gettime(CLOCK_MONOTONIC, &now);
      double ms = (now.tv_sec - start.tv_sec) * 1e3 + (now.tv_nsec - start.tv_nsec) / 1e6;
      if (ms > timeout_ms)
        return MakeError(ErrorKind::kGeneric, EBUSY,
                         "pid %d still has pages owed by a lazy restore's pager after %d ms "
                         "(its memory is not all there yet): try again when it is done",
                         pid, timeout_ms);
      // The pager's progress is kernel-side state only: poll it.
      timespec ts{0, 5 * 1000 * 1000};
      nanosleep(&ts, nullptr);
    }
  }
  return Ok();
}

}  // namespace godwit::dump
