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

#include "files/kind.h"

namespace godwit::files {

Result<void> DumpTty(DumpContext& ctx, const Probe& p, img::FileEntry& e) {
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
    t->set_path(StrFormat("/dev/pts/%d", index));
  } else {
    index = minor(p.st.st_rdev) + (maj - 136) * 256;
    t->set_path(p.link);
  }
  t->set_pty_index(index);
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

Result<UniqueFd> OpenTty(RestoreContext& ctx, const img::FileEntry& e) {
  const img::TtyFile& t = e.tty();
  auto it = ctx.ptys.find(t.pty_index());
  if (it == ctx.ptys.end()) {
    UniqueFd m(open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!m) return Errno("open /dev/ptmx");
    int unlock = 0;
    if (ioctl(m.get(), TIOCSPTLCK, &unlock) < 0) return Errno("TIOCSPTLCK");
    UniqueFd s(ioctl(m.get(), TIOCGPTPEER, O_RDWR | O_NOCTTY | O_CLOEXEC));
    if (!s) return Errno("TIOCGPTPEER");
    // Settings of the slave side (termios belongs to the tty, either end sets it).
    for (const auto& [id, x] : ctx.entries())
      if (x.kind() == img::FILE_KIND_TTY && x.tty().pty_index() == t.pty_index())
        TRY(ApplyTermios(s.get(), x.tty()));
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
