#include "runtime/console.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

namespace godwit::runtime {

Result<UniqueFd> ConnectConsoleSocket(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path))
    return MakeError(ErrorKind::kUsage, 0, "--console-socket %s: path too long", path.c_str());
  memcpy(addr.sun_path, path.data(), path.size());
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return Errno("socket");
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) < 0)
    return Errno("connect to the console socket %s", path.c_str());
  return fd;
}

int SetupConsole(int sock, uint16_t height, uint16_t width, uid_t uid, gid_t gid,
                 const char** what) {
  int master = ::open("/dev/ptmx", O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0) return *what = "open /dev/ptmx", -errno;
  int unlock = 0;
  if (::ioctl(master, TIOCSPTLCK, &unlock) < 0) return *what = "unlock the pty", -errno;
  unsigned int n = 0;
  if (::ioctl(master, TIOCGPTN, &n) < 0) return *what = "TIOCGPTN", -errno;
  char name[64];
  snprintf(name, sizeof(name), "/dev/pts/%u", n);
  int slave = ::open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (slave < 0) return *what = "open the pty slave", -errno;
  (void)!::fchown(slave, uid, gid);  // best effort, as runc: a devpts gid= option may forbid it
  if (height || width) {
    winsize ws{};
    ws.ws_row = height;
    ws.ws_col = width;
    if (::ioctl(master, TIOCSWINSZ, &ws) < 0) return *what = "TIOCSWINSZ", -errno;
  }
  // The master to the caller: one SCM_RIGHTS message whose data is the pty's name.
  iovec iov{name, strlen(name)};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(c), &master, sizeof(int));
  if (::sendmsg(sock, &msg, MSG_NOSIGNAL) < 0) return *what = "send the pty master", -errno;
  ::close(master);
  ::close(sock);
  if (::setsid() < 0) return *what = "setsid", -errno;
  if (::ioctl(slave, TIOCSCTTY, 0) < 0) return *what = "TIOCSCTTY", -errno;
  for (int i = 0; i < 3; ++i)
    if (::dup2(slave, i) < 0) return *what = "dup2 the pty slave", -errno;
  ::close(slave);
  return 0;
}

}  // namespace godwit::runtime
