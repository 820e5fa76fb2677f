// timerfd: clock, remaining time, interval and unread expirations, from fdinfo. The remaining
// time is relative at dump; restore arms the timer relative again (or absolute = now +
// remaining for TFD_TIMER_ABSTIME timers, so CANCEL_ON_SET keeps working) and puts the pending
// ticks back with TFD_IOC_SET_TICKS.
#include <sys/ioctl.h>
#include <sys/timerfd.h>
#include <time.h>

#include <cstdio>

#include "files/kind.h"

#ifndef TFD_IOC_SET_TICKS
#define TFD_IOC_SET_TICKS _IOW('T', 0, uint64_t)
#endif

namespace godwit::files {

Result<void> DumpTimerfd(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::TimerfdFile* t = e.mutable_timerfd();
  t->set_clockid(atoi(p.info.Get("clockid").c_str()));
  t->set_ticks(strtoull(p.info.Get("ticks").c_str(), nullptr, 10));
  t->set_settime_flags(strtol(p.info.Get("settime flags").c_str(), nullptr, 8));
  long long s, ns;
  if (sscanf(p.info.Get("it_value").c_str(), "(%lld, %lld)", &s, &ns) != 2)
    return MakeError(ErrorKind::kUnsupported, 0, "timerfd: no it_value in fdinfo");
  t->set_value_sec(s);
  t->set_value_nsec(ns);
  if (sscanf(p.info.Get("it_interval").c_str(), "(%lld, %lld)", &s, &ns) != 2)
    return MakeError(ErrorKind::kUnsupported, 0, "timerfd: no it_interval in fdinfo");
  t->set_interval_sec(s);
  t->set_interval_nsec(ns);
  return Ok();
}

Result<UniqueFd> OpenTimerfd(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::TimerfdFile& t = e.timerfd();
  UniqueFd fd(timerfd_create(t.clockid(), TFD_CLOEXEC));
  if (!fd) return Errno("timerfd_create clock %d", t.clockid());
  struct itimerspec its {};
  its.it_value.tv_sec = t.value_sec();
  its.it_value.tv_nsec = t.value_nsec();
  its.it_interval.tv_sec = t.interval_sec();
  its.it_interval.tv_nsec = t.interval_nsec();
  if (its.it_value.tv_sec < 0 || its.it_value.tv_nsec < 0 || its.it_value.tv_nsec >= 1000000000 ||
      its.it_interval.tv_sec < 0 || its.it_interval.tv_nsec < 0 ||
      its.it_interval.tv_nsec >= 1000000000)
    return MakeError(ErrorKind::kBadImage, 0, "timerfd: bad time in image");
  bool armed = its.it_value.tv_sec || its.it_value.tv_nsec;
  if (!armed && (its.it_interval.tv_sec || its.it_interval.tv_nsec)) {
    its.it_value.tv_nsec = 1;  // due right now: the period continues
    armed = true;
  }
  int flags = 0;
  if (armed && (t.settime_flags() & TFD_TIMER_ABSTIME)) {
    struct timespec now;
    clock_gettime(t.clockid(), &now);
    its.it_value.tv_sec += now.tv_sec;
    its.it_value.tv_nsec += now.tv_nsec;
    if (its.it_value.tv_nsec >= 1000000000) {
      its.it_value.tv_sec++;
      its.it_value.tv_nsec -= 1000000000;
    }
    flags = t.settime_flags();
  }
  if (armed && timerfd_settime(fd.get(), flags, &its, nullptr) < 0) return Errno("timerfd_settime");
  if (t.ticks()) {
    uint64_t ticks = t.ticks();
    if (ioctl(fd.get(), TFD_IOC_SET_TICKS, &ticks) < 0) return Errno("TFD_IOC_SET_TICKS");
  }
  return fd;
}

}  // namespace godwit::files
