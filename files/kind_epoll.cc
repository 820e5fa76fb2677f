// epoll: each registration (target description, the fd number it was registered under, events,
// data) from the "tfd:" lines of fdinfo. The dumper resolves each target to a description with
// kcmp(KCMP_EPOLL_TFD). The kernel keys registrations by (file, fd number), so they are made
// again in Install, in the process that owned the epoll at dump, with each target put at its
// registered number for the epoll_ctl (it may be closed, or hold another file, afterwards).
#include <sys/epoll.h>
#include <unistd.h>

#include <cstdio>

#include "files/kind.h"

namespace godwit::files {

Result<void> DumpEpoll(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::EpollFile* ep = e.mutable_epoll();
  ep->set_owner_pid(p.pid);
  // "tfd:        5 events:       19 data:                5  pos:0 ino:2b sdev:d"
  for (const std::string& v : p.info.All("tfd")) {
    int tfd;
    unsigned events;
    unsigned long long data;
    if (sscanf(v.c_str(), "%d events: %x data: %llx", &tfd, &events, &data) != 3)
      return MakeError(ErrorKind::kUnsupported, 0, "epoll: cannot parse fdinfo line 'tfd: %s'",
                       v.c_str());
    img::EpollTarget* t = ep->add_targets();
    t->set_tfd(tfd);
    t->set_events(events);
    t->set_data(data);
  }
  return Ok();
}

Result<UniqueFd> OpenEpoll(FdRestoreContext& ctx, const img::FileEntry& e) {
  UniqueFd fd(epoll_create1(EPOLL_CLOEXEC));
  if (!fd) return Errno("epoll_create1");
  return fd;
}

Result<void> InstallEpoll(FdRestoreContext& ctx, const img::FileEntry& e, pid_t pid) {
  if (e.epoll().owner_pid() != pid) return Ok();
  int epfd = ctx.Prepared(e.id());
  if (epfd < 0) return Ok();
  for (const auto& t : e.epoll().targets()) {
    int src = ctx.Prepared(t.file_id());
    if (src < 0)
      return MakeError(ErrorKind::kBadImage, 0, "epoll target file id %llu not prepared",
                       static_cast<unsigned long long>(t.file_id()));
    if (dup2(src, t.tfd()) < 0) return Errno("dup2 %d -> %d", src, t.tfd());
    struct epoll_event ev {};
    ev.events = t.events();
    ev.data.u64 = t.data();
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, t.tfd(), &ev) < 0)
      return Errno("epoll_ctl ADD fd %d events %#x", t.tfd(), t.events());
  }
  return Ok();
}

}  // namespace godwit::files
