// Pseudo-terminals: a master (/dev/ptmx) and its slave (/dev/pts/N), both ends in the tree.
// Restore opens a new master, and the slave through TIOCGPTPEER; termios, window size, the
// lock and packet mode go back. The slave's number may differ (devpts hands out the lowest
// free one); unread bytes in the line discipline are not restored.
#include <fcntl.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "common/fs.h"
#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

// The input queued for the slave (what the master wrote, not yet read): read now through a new
// description of the slave (non-blocking, not the process's). With --leave-running it goes back
// with TIOCSTI.
static Result<void> DumpTtyInput(FdDumpContext& ctx, const Probe& p, img::TtyFile* t) {
  UniqueFd rd(open(StrFormat("/proc/%d/fd/%d", p.pid, p.fd).c_str(),
                   O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC));
  if (!rd) return Errno("pid %d fd %d: reopen %s", p.pid, p.fd, p.link.c_str());
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = read(rd.get(), buf, sizeof(buf));
    if (n > 0) {
      data.append(buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;  // EAGAIN: empty (or only a partial canonical line, which stays)
  }
  if (data.empty()) return Ok();
  ASSIGN_OR_RETURN(*t->mutable_input(), ctx.Blob(data.data(), data.size()));
  if (ctx.opts().leave_running) {
    int keep = fcntl(rd.get(), F_DUPFD_CLOEXEC, 0);
    ctx.OnResume([keep, data] {
      for (char c : data) ioctl(keep, TIOCSTI, &c);
      close(keep);
    });
  }
  return Ok();
}

// Writes data to the slave with output processing off, so the master reads exactly these bytes
// (they were processed when first written); waits (bounded) until the master has them.
static Result<void> WriteRawOutput(int master, int slave, const std::string& data) {
  struct termios orig {};
  if (tcgetattr(slave, &orig) < 0) return Errno("tcgetattr");
  struct termios raw = orig;
  raw.c_oflag &= ~OPOST;
  if (tcsetattr(slave, TCSANOW, &raw) < 0) return Errno("tcsetattr");
  int fl = fcntl(slave, F_GETFL);
  fcntl(slave, F_SETFL, fl | O_NONBLOCK);
  auto w = fs::WriteAll(slave, data.data(), data.size());
  fcntl(slave, F_SETFL, fl);
  for (int i = 0; i < 1000 && w.ok() && master >= 0; i++) {
    int n = 0;
    if (ioctl(master, FIONREAD, &n) < 0 || static_cast<size_t>(n) >= data.size()) break;
    usleep(1000);
  }
  if (tcsetattr(slave, TCSANOW, &orig) < 0) return Errno("tcsetattr");
  TRY_CTX(w, "requeue %zu bytes of pty output", data.size());
  return Ok();
}

// The output waiting for the master: read through the process's own description (a master
// cannot be reopened), non-blocking for the while (the tree is frozen).
static Result<void> DumpTtyOutput(FdDumpContext& ctx, const Probe& p, img::TtyFile* t, int index) {
  int avail = 0;
  if (ioctl(p.local, FIONREAD, &avail) < 0 || avail <= 0) return Ok();
  int fl = fcntl(p.local, F_GETFL);
  if (fl < 0) return Errno("pid %d fd %d: F_GETFL", p.pid, p.fd);
  fcntl(p.local, F_SETFL, fl | O_NONBLOCK);
  std::string data;
  char buf[4096];
  for (;;) {
    ssize_t n = read(p.local, buf, sizeof(buf));
    if (n > 0) {
      data.append(buf, n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  fcntl(p.local, F_SETFL, fl);
  if (data.empty()) return Ok();
  ASSIGN_OR_RETURN(*t->mutable_output(), ctx.Blob(data.data(), data.size()));
  if (ctx.opts().leave_running) {
    int keep = fcntl(p.local, F_DUPFD_CLOEXEC, 0);
    std::string slave_path = StrFormat("/proc/%d/root/dev/pts/%d", p.pid, index);
    ctx.OnResume([keep, data, slave_path] {
      int s = open(slave_path.c_str(), O_RDWR | O_NOCTTY | O_CLOEXEC);
      if (s >= 0) {
        auto r = WriteRawOutput(keep, s, data);
        if (!r.ok()) LOG_WARN("pty output not given back: %s", r.error().to_string().c_str());
        close(s);
      }
      close(keep);
    });
  }
  return Ok();
}

Result<void> DumpTty(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::TtyFile* t = e.mutable_tty();
  unsigned maj = major(p.st.st_rdev);
  bool master = !(maj >= 136 && maj <= 143);
  t->set_master(master);
  int index = -1;
  if (master) {
    if (ioctl(p.local, TIOCGPTN, &index) < 0) return Errno("TIOCGPTN");
    int lock = 0;
    if (ioctl(p.local, TIOCGPTLCK, &lock) == 0) t->set_locked(lock);
    int pkt = 0;
    if (ioctl(p.local, TIOCGPKT, &pkt) == 0) t->set_pkt_mode(pkt);
    if (!pkt) TRY(DumpTtyOutput(ctx, p, t, index));  // packet mode: a status byte per read
    t->set_path(StrFormat("/dev/pts/%d", index));
  } else {
    index = minor(p.st.st_rdev) + (maj - 136) * 256;
    t->set_path(p.link);
    // devpts removes a slave's node once its master is closed: the terminal is hung up (zdtm
    // pty04). The hangup also took it away from the session it controlled, so nothing is left
    // of it but a file that reads end of file and fails writes: no termios, queues or owner.
    const std::string gone = " (deleted)";
    if (p.link.size() > gone.size() &&
        p.link.compare(p.link.size() - gone.size(), gone.size(), gone) == 0) {
      t->set_hung_up(true);
      t->set_pty_index(index);
      return Ok();
    }
  }
  t->set_pty_index(index);
  struct stat ss {};
  if (stat(StrFormat("/proc/%d/root/dev/pts/%d", p.pid, index).c_str(), &ss) == 0 &&
      ss.st_rdev == makedev(136 + index / 256, index % 256)) {
    t->set_has_slave_stat(true);
    t->set_slave_uid(ss.st_uid);
    t->set_slave_gid(ss.st_gid);
    t->set_slave_mode(ss.st_mode & 07777);
  }
  if (!master && ctx.ptys_with_data.insert(index).second) TRY(DumpTtyInput(ctx, p, t));
  struct termios tio {};
  if (tcgetattr(p.local, &tio) == 0) {
    img::Termios* x = t->mutable_termios();
    x->set_iflag(tio.c_iflag);
    x->set_oflag(tio.c_oflag);
    x->set_cflag(tio.c_cflag);
    x->set_lflag(tio.c_lflag);
    x->set_cc(std::string(reinterpret_cast<char*>(tio.c_cc), sizeof(tio.c_cc)));
    x->set_ispeed(cfgetispeed(&tio));
    x->set_ospeed(cfgetospeed(&tio));
  }
  struct winsize ws {};
  if (ioctl(p.local, TIOCGWINSZ, &ws) == 0) {
    t->set_rows(ws.ws_row);
    t->set_cols(ws.ws_col);
  }
  return Ok();
}

static Result<void> ApplyTermios(int fd, const img::TtyFile& t) {
  if (t.has_termios()) {
    struct termios tio {};
    tcgetattr(fd, &tio);
    tio.c_iflag = t.termios().iflag();
    tio.c_oflag = t.termios().oflag();
    tio.c_cflag = t.termios().cflag();
    tio.c_lflag = t.termios().lflag();
    memcpy(tio.c_cc, t.termios().cc().data(), std::min(sizeof(tio.c_cc), t.termios().cc().size()));
    cfsetispeed(&tio, t.termios().ispeed());
    cfsetospeed(&tio, t.termios().ospeed());
    if (tcsetattr(fd, TCSANOW, &tio) < 0) return Errno("tcsetattr");
  }
  struct winsize ws {};
  ws.ws_row = t.rows();
  ws.ws_col = t.cols();
  if (ioctl(fd, TIOCSWINSZ, &ws) < 0) return Errno("TIOCSWINSZ");
  return Ok();
}

// Queued input goes in through the master again, with echo and input translation off for the
// while (it was echoed and translated the first time); the line discipline forms its lines again.
static Result<void> RequeueInput(FdRestoreContext& ctx, const img::TtyFile& t, int master,
                                 int slave) {
  ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(t.input()));
  struct termios orig {};
  if (tcgetattr(slave, &orig) < 0) return Errno("tcgetattr");
  struct termios raw = orig;
  raw.c_lflag &= ~(ECHO | ECHONL | ECHOE | ECHOK | ECHOCTL | ISIG | IEXTEN);
  raw.c_iflag &= ~(ICRNL | INLCR | IGNCR | ISTRIP | IXON | IUCLC);
  if (tcsetattr(slave, TCSANOW, &raw) < 0) return Errno("tcsetattr");
  int fl = fcntl(master, F_GETFL);
  fcntl(master, F_SETFL, fl | O_NONBLOCK);
  auto w = fs::WriteAll(master, data.data(), data.size());
  fcntl(master, F_SETFL, fl);
  // The line discipline takes the bytes asynchronously: wait until the slave has them all
  // queued before the settings change back (bounded: a kernel worker flushes them).
  size_t want = data.size();
  if (orig.c_lflag & ICANON) {  // only whole lines count as readable
    size_t nl = data.find_last_of('\n');
    want = nl == std::string::npos ? 0 : nl + 1;
  }
  for (int i = 0; i < 1000 && w.ok(); i++) {
    int n = 0;
    if (ioctl(slave, FIONREAD, &n) < 0 || static_cast<size_t>(n) >= want) break;
    usleep(1000);
  }
  if (tcsetattr(slave, TCSANOW, &orig) < 0) return Errno("tcsetattr");
  TRY_CTX(w, "requeue %zu bytes of pty input", data.size());
  return Ok();
}

Result<void> SetCtty(FdRestoreContext& ctx, const img::ProcessFds& pf, pid_t old_pid) {
  const int index = pf.ctty_pty() - 1;
  auto of_pty = [&](uint64_t id, bool want_slave) {
    const img::FileEntry* x = ctx.Entry(id);
    return x && x->kind() == img::FILE_KIND_TTY && x->tty().pty_index() == index &&
           !x->tty().hung_up() && (!want_slave || !x->tty().master());
  };
  // TIOCSCTTY takes any fd of the pair: on the master the kernel acts on its slave. A leader
  // often keeps no fd of its terminal (it closed the slave after the open that made it its
  // terminal, or only the master is left, or another process holds the pair): then a prepared
  // description of the pair, still open in this process until the prepared copies go, is used.
  int use = -1;
  for (bool want_slave : {true, false})
    for (const auto& fe : pf.fds())
      if (use < 0 && of_pty(fe.file_id(), want_slave)) use = fe.fd();
  if (use < 0)
    for (const auto& [id, x] : ctx.entries())
      if (use < 0 && of_pty(id, false)) use = ctx.Prepared(id);
  if (use < 0) {
    LOG_WARN("pid %d: its controlling terminal (pty %d) is open nowhere in the tree: not restored",
             old_pid, index);
    return Ok();
  }
  if (ioctl(use, TIOCSCTTY, 0) < 0)
    return Errno("pid %d: make pty %d its controlling terminal (through fd %d)", old_pid, index,
                 use);
  return Ok();
}

// A hung-up slave (TtyFile.hung_up): the slave of a new pair, hung up by closing its master at
// once, here in the coordinator, before any restored process (or session) exists: the kernel
// signals nobody. Each description gets its own pair (a hung-up file keeps nothing of its tty).
static Result<UniqueFd> OpenHungUpSlave(const img::TtyFile& t, int flags) {
  UniqueFd m(open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC));
  if (!m) return Errno("pty %d (hung up): open /dev/ptmx", t.pty_index());
  int unlock = 0;
  if (ioctl(m.get(), TIOCSPTLCK, &unlock) < 0) return Errno("TIOCSPTLCK");
  UniqueFd s(ioctl(m.get(), TIOCGPTPEER, (flags & O_ACCMODE) | O_NOCTTY | O_CLOEXEC));
  if (!s) return Errno("pty %d (hung up): TIOCGPTPEER", t.pty_index());
  m.reset();  // pty_close of the master hangs the slave up
  return s;
}

Result<UniqueFd> OpenTty(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::TtyFile& t = e.tty();
  if (!t.master() && t.hung_up()) return OpenHungUpSlave(t, e.flags());
  auto it = ctx.ptys.find(t.pty_index());
  if (it == ctx.ptys.end()) {
    // The same pts number when it is free (programs remember ttyname): devpts hands out the
    // lowest free index, so the lower free ones are held open until the wanted one comes.
    UniqueFd m;
    std::vector<UniqueFd> lower;
    for (int tries = 0; tries <= 256; tries++) {
      UniqueFd c(open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC));
      if (!c) return Errno("open /dev/ptmx");
      int got = -1;
      if (ioctl(c.get(), TIOCGPTN, &got) < 0 || got >= t.pty_index() || tries == 256) {
        if (got != t.pty_index())
          LOG_WARN("pty %d: restored as /dev/pts/%d (taken)", t.pty_index(), got);
        m = std::move(c);
        break;
      }
      lower.push_back(std::move(c));
    }
    lower.clear();
    int unlock = 0;
    if (ioctl(m.get(), TIOCSPTLCK, &unlock) < 0) return Errno("TIOCSPTLCK");
    UniqueFd s(ioctl(m.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!s) return Errno("TIOCGPTPEER");
    // In a user namespace the dumped ids may not map: then the kernel's are kept, with a warning.
    if (t.has_slave_stat() && (fchown(s.get(), t.slave_uid(), t.slave_gid()) < 0 ||
                               fchmod(s.get(), t.slave_mode()) < 0))
      LOG_WARN("pty %d: slave owner %u:%u mode %o not restored: %s", t.pty_index(),
               t.slave_uid(), t.slave_gid(), t.slave_mode(), strerror(errno));
    // Settings of the slave side (termios belongs to the tty, either end sets it).
    for (const auto& [id, x] : ctx.entries())
      if (x.kind() == img::FILE_KIND_TTY && x.tty().pty_index() == t.pty_index())
        TRY(ApplyTermios(s.get(), x.tty()));
    for (const auto& [id, x] : ctx.entries())
      if (x.kind() == img::FILE_KIND_TTY && x.tty().pty_index() == t.pty_index() &&
          x.tty().has_input())
        TRY(RequeueInput(ctx, x.tty(), m.get(), s.get()));
    for (const auto& [id, x] : ctx.entries())
      if (x.kind() == img::FILE_KIND_TTY && x.tty().pty_index() == t.pty_index() &&
          x.tty().has_output()) {
        ASSIGN_OR_RETURN(std::string out, ctx.ReadBlob(x.tty().output()));
        TRY(WriteRawOutput(m.get(), s.get(), out));
      }
    for (const auto& [id, x] : ctx.entries())
      if (x.kind() == img::FILE_KIND_TTY && x.tty().pty_index() == t.pty_index() && x.tty().master()) {
        int pkt = x.tty().pkt_mode();
        if (pkt) ioctl(m.get(), TIOCPKT, &pkt);
      }
    ASSIGN_OR_RETURN(int pm, ctx.Park(std::move(m)));
    ASSIGN_OR_RETURN(int ps, ctx.Park(std::move(s)));
    ctx.KeepUntilPrepared(UniqueFd(pm));
    ctx.KeepUntilPrepared(UniqueFd(ps));
    it = ctx.ptys.emplace(t.pty_index(), std::make_pair(pm, ps)).first;
  }
  int end = t.master() ? it->second.first : it->second.second;
  std::string mark = StrFormat("pty:%d:%c", t.pty_index(), t.master() ? 'm' : 's');
  if (ctx.used.insert(mark).second) {
    int d = fcntl(end, F_DUPFD_CLOEXEC, 0);
    if (d < 0) return Errno("dup pty");
    if (t.master() && t.locked()) {
      int lock = 1;
      ioctl(d, TIOCSPTLCK, &lock);
    }
    return UniqueFd(d);
  }
  if (t.master()) return MakeError(ErrorKind::kUnsupported, 0, "two descriptions of one pty master");
  return Reopen(end, e.flags() | O_NOCTTY);
}

}  // namespace godwit::files
