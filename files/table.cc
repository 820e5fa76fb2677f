// The one table of fd kinds and the dispatcher that picks a kind for an fd.
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/sysmacros.h>

#include <cstring>

#include "files/kind.h"

namespace godwit::files {

const std::vector<KindOps>& KindTable() {
  static const std::vector<KindOps> table = {
      {img::FILE_KIND_REG, "reg", DumpReg, OpenReg, InstallReg, nullptr, true, InstallRegLate},
      {img::FILE_KIND_CHR, "chr", DumpChr, OpenChr},
      {img::FILE_KIND_PIPE, "pipe", DumpPipe, OpenPipe},
      {img::FILE_KIND_FIFO, "fifo", DumpFifo, OpenFifo},
      {img::FILE_KIND_UNIX, "unix", DumpUnix, OpenUnix},
      {img::FILE_KIND_INET, "inet", DumpInet, OpenInet, nullptr, FinalizeInet},
      {img::FILE_KIND_EVENTFD, "eventfd", DumpEventfd, OpenEventfd},
      {img::FILE_KIND_EPOLL, "epoll", DumpEpoll, OpenEpoll, InstallEpoll},
      {img::FILE_KIND_SIGNALFD, "signalfd", DumpSignalfd, OpenSignalfd},
      {img::FILE_KIND_TIMERFD, "timerfd", DumpTimerfd, OpenTimerfd},
      {img::FILE_KIND_INOTIFY, "inotify", DumpInotify, OpenInotify},
      {img::FILE_KIND_MEMFD, "memfd", DumpMemfd, OpenMemfd},
      {img::FILE_KIND_TTY, "tty", DumpTty, OpenTty},
      {img::FILE_KIND_EXTERNAL, "external", DumpExternal, OpenExternal},
      {img::FILE_KIND_NETLINK, "netlink", DumpNetlink, OpenNetlink},
      {img::FILE_KIND_OPATH, "opath", DumpOpath, OpenOpath},
      {img::FILE_KIND_NSFS, "nsfs", DumpNsfs, OpenNsfs},
      {img::FILE_KIND_PIDFD, "pidfd", DumpPidfd, OpenPidfd, InstallPidfd, nullptr, true},
      {img::FILE_KIND_PACKET, "packet", DumpPacket, OpenPacket},
      {img::FILE_KIND_FANOTIFY, "fanotify", DumpFanotify, OpenFanotify},
      {img::FILE_KIND_BPFMAP, "bpfmap", DumpBpfMap, OpenBpfMap},
  };
  return table;
}

const KindOps* FindKind(img::FileKind kind) {
  for (const auto& k : KindTable())
    if (k.kind == kind) return &k;
  return nullptr;
}

static bool StartsWith(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

// "net:[4026531840]": a lower-case type, ":[", digits, "]".
static bool IsNsfsLink(const std::string& l) {
  size_t c = l.find(":[");
  if (c == std::string::npos || c == 0 || l.back() != ']' || c + 3 > l.size() - 1) return false;
  for (size_t i = 0; i < c; i++)
    if (!(l[i] >= 'a' && l[i] <= 'z') && l[i] != '_') return false;
  for (size_t i = c + 2; i + 1 < l.size(); i++)
    if (l[i] < '0' || l[i] > '9') return false;
  return l.rfind("pipe:", 0) != 0 && l.rfind("socket:", 0) != 0;
}

Result<img::FileKind> Classify(const Probe& p) {
  auto unsupported = [&](const std::string& what) -> Error {
    return MakeError(ErrorKind::kUnsupported, 0, "pid %d fd %d: unsupported fd kind: %s", p.pid,
                     p.fd, what.c_str());
  };
  const std::string& l = p.link;
  mode_t m = p.st.st_mode;
  // A namespace file reads "TYPE:[INODE]" and lives on nsfs, plain or O_PATH.
  if (S_ISREG(m) && IsNsfsLink(l)) return img::FILE_KIND_NSFS;
  if (p.info.flags & O_PATH) {
    // No I/O through it: its path and type are its state. Regular files and directories stay
    // "reg" (opened again with the flags, O_PATH included; deleted ones as ghosts).
    if (StartsWith(l, "/memfd:")) return unsupported("O_PATH fd on a memfd: " + l);
    if ((S_ISREG(m) || S_ISDIR(m)) && StartsWith(l, "/")) return img::FILE_KIND_REG;
    if (StartsWith(l, "/")) return img::FILE_KIND_OPATH;
    return unsupported("O_PATH fd on " + l);
  }
  if (S_ISFIFO(m)) return StartsWith(l, "pipe:[") ? img::FILE_KIND_PIPE : img::FILE_KIND_FIFO;
  if (S_ISSOCK(m)) {
    int dom = 0, proto = 0, type = 0;
    socklen_t len = sizeof(int);
    if (getsockopt(p.local, SOL_SOCKET, SO_DOMAIN, &dom, &len) < 0)
      return Errno("pid %d fd %d: getsockopt SO_DOMAIN", p.pid, p.fd);
    len = sizeof(int);
    getsockopt(p.local, SOL_SOCKET, SO_PROTOCOL, &proto, &len);
    len = sizeof(int);
    getsockopt(p.local, SOL_SOCKET, SO_TYPE, &type, &len);
    if (dom == AF_UNIX) return img::FILE_KIND_UNIX;
    if (dom == AF_NETLINK) return img::FILE_KIND_NETLINK;
    if (dom == AF_PACKET) return img::FILE_KIND_PACKET;
    // TCP, UDP, UDP-Lite, ping (ICMP datagram) and raw sockets: kind_inet.cc.
    bool dgram = type == SOCK_DGRAM && (proto == IPPROTO_UDP || proto == IPPROTO_UDPLITE ||
                                         proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6);
    if ((dom == AF_INET || dom == AF_INET6) &&
        ((type == SOCK_STREAM && proto == IPPROTO_TCP) || dgram || type == SOCK_RAW))
      return img::FILE_KIND_INET;
    const char* fam = dom == AF_PACKET ? "AF_PACKET" : dom == AF_INET ? "AF_INET"
                      : dom == AF_INET6 ? "AF_INET6" : dom == AF_VSOCK ? "AF_VSOCK"
                      : dom == AF_ALG ? "AF_ALG" : dom == AF_KEY ? "AF_KEY" : "";
    const char* ty = type == SOCK_RAW ? " SOCK_RAW" : type == SOCK_SEQPACKET ? " SOCK_SEQPACKET" : "";
    return unsupported(StrFormat("socket family %d %s type %d%s protocol %d (%s)", dom, fam, type,
                                 ty, proto, l.c_str()));
  }
  if (StartsWith(l, "anon_inode:")) {
    if (l == "anon_inode:[eventfd]") return img::FILE_KIND_EVENTFD;
    if (l == "anon_inode:[eventpoll]") return img::FILE_KIND_EPOLL;
    if (l == "anon_inode:[signalfd]") return img::FILE_KIND_SIGNALFD;
    if (l == "anon_inode:[timerfd]") return img::FILE_KIND_TIMERFD;
    if (l == "anon_inode:inotify") return img::FILE_KIND_INOTIFY;
    if (l == "anon_inode:[pidfd]") return img::FILE_KIND_PIDFD;
    if (l == "anon_inode:[fanotify]") return img::FILE_KIND_FANOTIFY;
    if (l == "anon_inode:bpf-map") return img::FILE_KIND_BPFMAP;
    if (StartsWith(l, "anon_inode:bpf"))
      return unsupported(l.substr(strlen("anon_inode:")) + " (BPF objects are not dumped)");
    return unsupported(l.substr(strlen("anon_inode:")));
  }
  if (StartsWith(l, "pidfd:")) return img::FILE_KIND_PIDFD;  // pidfs may name it so
  if (StartsWith(l, "/memfd:")) return img::FILE_KIND_MEMFD;
  if (S_ISCHR(m)) {
    unsigned maj = major(p.st.st_rdev), min = minor(p.st.st_rdev);
    if ((maj >= 136 && maj <= 143) || (maj == 5 && min == 2)) return img::FILE_KIND_TTY;
    if (StartsWith(l, "/dev/ptmx") || StartsWith(l, "/dev/pts/ptmx")) return img::FILE_KIND_TTY;
    return img::FILE_KIND_CHR;
  }
  if (S_ISREG(m) || S_ISDIR(m)) {
    if (!StartsWith(l, "/")) return unsupported(l);
    return img::FILE_KIND_REG;
  }
  return unsupported(StrFormat("%s (mode %o)", l.c_str(), m));
}

}  // namespace godwit::files
