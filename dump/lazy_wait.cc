#include "dump/lazy_wait.h"

#include <poll.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "common/log.h"
#include "common/pidfd.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "common/timing.h"
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

// Blocks until the pager exits (kExited) or the deadline passes (kDeadline), using no CPU.
// kNotThePager if it is gone or its pid was reused.
enum class PagerWait { kNotThePager, kDeadline, kExited };
PagerWait WaitPagerExit(const LazyPagerRef& pager, timing::Clock::time_point deadline) {
  if (pager.pid <= 0 || pager.start_time == 0) return PagerWait::kNotThePager;
  auto fd = pidfd::Open(pager.pid);
  if (!fd.ok()) {
    LOG_DEBUG("lazy pager %d: %s: smaps polled instead", pager.pid,
              fd.error().to_string().c_str());
    return PagerWait::kNotThePager;
  }
  // Checked after the pidfd is open: it then stays this process, whatever happens to the pid.
  auto st = proc::ReadStat(pager.pid);
  if (!st.ok() || st->start_time != pager.start_time) {
    LOG_DEBUG("lazy pager %d: started at %llu, not %llu (gone, its pid reused): smaps polled",
              pager.pid, st.ok() ? static_cast<unsigned long long>(st->start_time) : 0ULL,
              static_cast<unsigned long long>(pager.start_time));
    return PagerWait::kNotThePager;
  }
  for (;;) {
    double left = timing::MsBetween(timing::Clock::now(), deadline);
    if (left <= 0) return PagerWait::kDeadline;
    pollfd p{fd->get(), POLLIN, 0};
    int n = ::poll(&p, 1, static_cast<int>(std::min(left, 1e9)) + 1);
    if (n > 0) return PagerWait::kExited;
    if (n < 0 && errno != EINTR) {
      LOG_DEBUG("lazy pager %d: poll its pidfd: %s: smaps polled instead", pager.pid,
                strerror(errno));
      return PagerWait::kNotThePager;
    }
  }
}

}  // namespace

Result<void> WaitLazyPages(pid_t root, int timeout_ms,
                           const std::map<pid_t, VmFlagsSnapshot>* known,
                           const LazyPagerRef& pager, LazyWaitStats* stats) {
  LazyWaitStats own;
  LazyWaitStats& st = stats ? *stats : own;
  st = {};
  bool logged = false, pager_waited = false;
  std::vector<pid_t> pids = proc::Descendants(root);
  pids.insert(pids.begin(), root);
  const auto start = timing::Clock::now();
  const auto deadline = start + std::chrono::milliseconds(timeout_ms);
  ScopeExit waited([&] {
    if (logged) st.waited_ms = timing::MsSince(start);
  });
  for (pid_t pid : pids) {
    if (known != nullptr) {
      if (auto it = known->find(pid); it != known->end()) {
        bool um = false;
        for (const auto& [va, f] : it->second.flags) um = um || f.uffd_missing;
        if (!um) continue;
      }
    }
    for (;;) {
      const auto t0 = timing::Clock::now();
      st.smaps_reads++;
      if (!HasMissingRegistration(pid)) break;
      const double read_ms = timing::MsSince(t0);
      if (!logged) {
        LOG_INFO("pid %d is still being paged in by a lazy restore's pager%s: waiting for it", pid,
                 pager.pid > 0 ? StrFormat(" (pid %d)", pager.pid).c_str() : "");
        logged = true;
      }
      if (timing::Clock::now() > deadline)
        return MakeError(ErrorKind::kGeneric, EBUSY,
                         "pid %d still has pages owed by a lazy restore's pager after %d ms "
                         "(its memory is not all there yet): try again when it is done",
                         pid, timeout_ms);
      if (!pager_waited) {
        pager_waited = true;
        PagerWait pw = WaitPagerExit(pager, deadline);
        st.pager_exit = pw == PagerWait::kExited;
        if (pw != PagerWait::kNotThePager) continue;
      }
      // The pager's progress is kernel-side state only: poll it, at most a fifth of the time
      // (smaps of a process of 1 GiB takes ~40 ms to read).
      const double nap_ms =
          std::min(std::clamp(4 * read_ms, 5.0, 250.0),
                   std::max(0.0, timing::MsBetween(timing::Clock::now(), deadline)) + 0.1);
      timespec ts{0, static_cast<long>(nap_ms * 1e6)};
      nanosleep(&ts, nullptr);
    }
  }
  return Ok();
}

}  // namespace godwit::dump
