// Restore step "timers": POSIX timers with their dumped ids, then arming them and the interval
// timers. Last step before "core" so that no timer fires while the process is being rebuilt; the
// time between dump and restore is not counted (a timer has as much time left as at the dump).
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

Result<void> RestoreTimers(RestoreContext& ctx, ProcessRestore& p) {
  ASSIGN_OR_RETURN(img::ProcessState ps, LoadPstate(ctx, p));
  remote::Remote* r = p.remote.get();
  std::vector<const img::PosixTimer*> timers;
  for (const auto& t : ps.timers()) timers.push_back(&t);
  if (!timers.empty()) TRY_CTX(CreateTimers(r, p.pid, timers), "posix timers");
  // Arm everything last, close together.
  for (const auto* t : timers) {
    if (t->value_ns() == 0) continue;
    itimerspec v{Ts(t->interval_ns()), Ts(t->value_ns())};
    TRY(r->Write(r->scratch(), &v, sizeof(v)));
    TRY_CTX(r->Syscall(SYS_timer_settime, t->id(), 0, r->scratch(), 0), "timer_settime %d",
            t->id());
  }
  const std::pair<int, const img::ITimer*> which[] = {{ITIMER_REAL, &ps.itimers().real()},
                                                      {ITIMER_VIRTUAL, &ps.itimers().virt()},
                                                      {ITIMER_PROF, &ps.itimers().prof()}};
  for (const auto& [w, it] : which) {
    if (it->value_us() == 0) continue;  // fork does not inherit itimers: already disarmed
    itimerval v{Tv(it->interval_us()), Tv(it->value_us())};
    TRY(r->Write(r->scratch(), &v, sizeof(v)));
    TRY_CTX(r->Syscall(SYS_setitimer, w, r->scratch(), 0), "setitimer %d", w);
  }
  return Ok();
}

}  // namespace godwit::restore
