// Restore steps "posix-timers" (create the POSIX timers with their dumped ids, disarmed) and
// "timers" (arm them and the interval timers, late, so that no timer fires while the process is
// being rebuilt). The time between dump and restore is not counted: a timer has as much time
// left as it had at the dump.
//
// Timer ids: this kernel (6.13+) has prctl(PR_TIMER_CREATE_RESTORE_IDS) which makes timer_create
// take the id from *created_timer_id. Older kernels hand out ids sequentially per process, so
// there we create (and delete) timers until the wanted id comes up.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/time.h>

#include <algorithm>

#include "common/log.h"
#include "restore/pstate.h"
#include "restore/steps.h"

#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS 77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF 0
#define PR_TIMER_CREATE_RESTORE_IDS_ON 1
#endif

namespace godwit::restore {
namespace {

// The kernel's struct sigevent on x86-64 (64 bytes): value, signo, notify, then the tid.
struct KSigevent {
  uint64_t value;
  int32_t signo;
  int32_t notify;
  int32_t tid;
  int32_t pad[11];
};
static_assert(sizeof(KSigevent) == 64);

timespec Ts(uint64_t ns) {
  return {static_cast<time_t>(ns / 1000000000ULL), static_cast<long>(ns % 1000000000ULL)};
}
timeval Tv(uint64_t us) {
  return {static_cast<time_t>(us / 1000000ULL), static_cast<suseconds_t>(us % 1000000ULL)};
}

Result<long> CreateTimer(remote::Remote* r, const img::PosixTimer& t, int32_t id_in) {
  KSigevent ev{};
  ev.value = t.sigev_value();
  ev.signo = t.signo();
  ev.notify = t.notify();
  ev.tid = t.notify_tid();
  uint64_t at = r->scratch();
  TRY(r->Write(at, &ev, sizeof(ev)));
  TRY(r->Write(at + sizeof(ev), &id_in, sizeof(id_in)));
  TRY_CTX(r->Syscall(SYS_timer_create, static_cast<uint64_t>(static_cast<int64_t>(t.clock())), at,
                     at + sizeof(ev)),
          "timer_create clock %d signal %d notify %d", t.clock(), t.signo(), t.notify());
  int32_t id = -1;
  TRY(r->Read(at + sizeof(ev), &id, sizeof(id)));
  return id;
}

Result<void> CreateTimers(remote::Remote* r, pid_t pid,
                          std::vector<const img::PosixTimer*> timers) {
  std::sort(timers.begin(), timers.end(), [](auto* a, auto* b) { return a->id() < b->id(); });
  for (size_t i = 1; i < timers.size(); ++i)
    if (timers[i]->id() == timers[i - 1]->id())
      return MakeError(ErrorKind::kBadImage, 0, "pstate-%d.img: timer id %d twice", pid,
                       timers[i]->id());
  uint64_t args[6] = {PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0, 0};
  ASSIGN_OR_RETURN(long on, r->RawSyscallIn(pid, SYS_prctl, args));
  if (on == 0) {
    Result<void> res = Ok();
    for (const auto* t : timers) {
      auto id = CreateTimer(r, *t, t->id());
      if (!id.ok()) {
        res = std::move(id.error().wrap(StrFormat("timer %d", t->id())));
        break;
      }
      if (*id != t->id()) {
        res = Err("timer %d: the kernel gave id %ld", t->id(), *id);
        break;
      }
    }
    args[1] = PR_TIMER_CREATE_RESTORE_IDS_OFF;
    ASSIGN_OR_RETURN(long off, r->RawSyscallIn(pid, SYS_prctl, args));
    if (off != 0 && res.ok()) res = Err("PR_TIMER_CREATE_RESTORE_IDS off: %ld", off);
    return res;
  }
  // Sequential ids: burn the ids below each wanted one, then delete the fillers.
  std::vector<long> fillers;
  for (const auto* t : timers) {
    for (;;) {
      ASSIGN_OR_RETURN(long id, CreateTimer(r, *t, 0));
      if (id == t->id()) break;
      if (id > t->id() || fillers.size() > 100000)
        return Err("timer %d: the kernel hands out id %ld (ids are not sequential here)", t->id(),
                   id);
      fillers.push_back(id);
    }
  }
  for (long id : fillers) TRY_CTX(r->Syscall(SYS_timer_delete, id), "timer_delete %ld", id);
  return Ok();
}

}  // namespace

// Step "posix-timers": creates the timers (disarmed, so none fires) before "creds", because an
// alarm clock (CLOCK_*_ALARM) needs CAP_WAKE_ALARM at creation, which the process may have
// dropped since.
Result<void> RestorePosixTimers(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  std::vector<const img::PosixTimer*> timers;
  for (const auto& t : ps.timers()) timers.push_back(&t);
  if (!timers.empty()) TRY_CTX(CreateTimers(p.remote.get(), p.pid, timers), "posix timers");
  return Ok();
}

// Step "timers": arms the POSIX timers and the interval timers, last before "core".
Result<void> RestoreTimers(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(const img::ProcessState* pstate, LoadPstate(ctx, p));
  const img::ProcessState& ps = *pstate;
  remote::Remote* r = p.remote.get();
  std::vector<const img::PosixTimer*> timers;
  for (const auto& t : ps.timers()) timers.push_back(&t);
  // Arm everything last, close together.
  for (const auto* t : timers) {
    // 0 left on a periodic timer: expired, its re-arm waiting for its signal's dequeue (as for
    // ITIMER_REAL below): armed for a full period.
    uint64_t left = t->value_ns() ? t->value_ns() : t->interval_ns();
    if (left == 0) continue;
    itimerspec v{Ts(t->interval_ns()), Ts(left)};
    TRY(r->Write(r->scratch(), &v, sizeof(v)));
    TRY_CTX(r->Syscall(SYS_timer_settime, t->id(), 0, r->scratch(), 0), "timer_settime %d",
            t->id());
  }
  const std::pair<int, const img::ITimer*> which[] = {{ITIMER_REAL, &ps.itimers().real()},
                                                      {ITIMER_VIRTUAL, &ps.itimers().virt()},
                                                      {ITIMER_PROF, &ps.itimers().prof()}};
  for (const auto& [w, it] : which) {
    // A periodic ITIMER_REAL reads 0 left between its expiry and the dequeue of its SIGALRM,
    // which re-arms it (the kernel's dequeue_signal): dumped while that SIGALRM was pending
    // (blocked, or queued during the dump). setitimer with 0 left would disarm it for good, so
    // it gets a full period (its SIGALRM is restored with the pending signals).
    uint64_t left = it->value_us();
    if (left == 0 && it->interval_us() != 0 && w == ITIMER_REAL) left = it->interval_us();
    if (left == 0) continue;  // fork does not inherit itimers: already disarmed
    itimerval v{Tv(it->interval_us()), Tv(left)};
    TRY(r->Write(r->scratch(), &v, sizeof(v)));
    TRY_CTX(r->Syscall(SYS_setitimer, w, r->scratch(), 0), "setitimer %d", w);
  }
  return Ok();
}

}  // namespace godwit::restore
