#include "cli/terminal_relay.h"

#include <fcntl.h>
#include <poll.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>

namespace godwit::cli {

Result<std::unique_ptr<TerminalRelay>> TerminalRelay::Start() {
  if (!isatty(STDIN_FILENO))
    return MakeError(ErrorKind::kUsage, 0,
                     "exec --tty: stdin is not a terminal (pass --console-socket SOCK to have "
                     "the pty master sent elsewhere)");
  std::unique_ptr<TerminalRelay> r(new TerminalRelay());
  char tmpl[] = "/tmp/godwit-tty-XXXXXX";
  if (!mkdtemp(tmpl)) return Errno("mkdtemp %s", tmpl);
  r->dir_ = tmpl;
  r->path_ = r->dir_ + "/console.sock";
  r->listener_ = UniqueFd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!r->listener_) return Errno("socket");
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  strncpy(a.sun_path, r->path_.c_str(), sizeof(a.sun_path) - 1);
  if (::bind(r->listener_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0)
    return Errno("bind %s", r->path_.c_str());
  if (::listen(r->listener_.get(), 1) < 0) return Errno("listen %s", r->path_.c_str());
  r->stop_ = UniqueFd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!r->stop_) return Errno("eventfd");
  if (tcgetattr(STDIN_FILENO, &r->saved_) == 0) {
    termios raw = r->saved_;
    cfmakeraw(&raw);
    if (tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) r->raw_ = true;
  }
  r->thread_ = std::thread([p = r.get()] { p->Run(); });
  return r;
}

namespace {

// Receives the fd sent with SCM_RIGHTS (runtime/console.cc sends the master with its name).
int RecvFd(int sock) {
  char name[256];
  iovec iov = {name, sizeof(name)};
  alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
  msghdr m{};
  m.msg_iov = &iov;
  m.msg_iovlen = 1;
  m.msg_control = ctl;
  m.msg_controllen = sizeof(ctl);
  if (::recvmsg(sock, &m, MSG_CMSG_CLOEXEC) <= 0) return -1;
  cmsghdr* c = CMSG_FIRSTHDR(&m);
  if (!c || c->cmsg_type != SCM_RIGHTS) return -1;
  int fd;
  memcpy(&fd, CMSG_DATA(c), sizeof(fd));
  return fd;
}

bool WriteAll(int fd, const char* p, ssize_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return false;
    p += w;
    n -= w;
  }
  return true;
}

}  // namespace

void TerminalRelay::Run() {
  // The connection with the master, or Stop before any (the exec failed).
  pollfd a[2] = {{listener_.get(), POLLIN, 0}, {stop_.get(), POLLIN, 0}};
  while (::poll(a, 2, -1) < 0 && errno == EINTR) {
  }
  if (!(a[0].revents & POLLIN)) return;
  UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
  if (!conn) return;
  UniqueFd master(RecvFd(conn.get()));
  if (!master) return;
  winsize ws;
  if (ioctl(STDIN_FILENO, TIOCGWINSZ, &ws) == 0) (void)ioctl(master.get(), TIOCSWINSZ, &ws);
  char buf[16384];
  bool in_open = true, stopping = false;
  for (;;) {
    pollfd f[3] = {{master.get(), POLLIN, 0},
                   {in_open ? STDIN_FILENO : -1, POLLIN, 0},
                   {stop_.get(), POLLIN, 0}};
    // Stopping: whatever the master still holds, without waiting for more.
    int n = ::poll(f, 3, stopping ? 0 : -1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    if (f[2].revents & POLLIN) stopping = true;
    if (f[0].revents & (POLLIN | POLLHUP | POLLERR)) {
      ssize_t r = ::read(master.get(), buf, sizeof(buf));
      if (r <= 0) return;  // EIO: every slave fd is closed
      if (!WriteAll(STDOUT_FILENO, buf, r)) return;
    }
    if (f[1].revents & (POLLIN | POLLHUP)) {
      ssize_t r = ::read(STDIN_FILENO, buf, sizeof(buf));
      if (r <= 0)
        in_open = false;
      else if (!WriteAll(master.get(), buf, r))
        return;
    }
  }
}

void TerminalRelay::Stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!::write(stop_.get(), &one, sizeof(one));
    thread_.join();
  }
  if (raw_) {
    tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
    raw_ = false;
  }
  if (!path_.empty()) {
    ::unlink(path_.c_str());
    ::rmdir(dir_.c_str());
    path_.clear();
  }
}

TerminalRelay::~TerminalRelay() { Stop(); }

}  // namespace godwit::cli
