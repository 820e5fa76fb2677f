// Socket-level options that applications set, shared by unix and inet sockets.
#include <linux/filter.h>
#include <net/if.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <algorithm>
#include <cstring>
#include <unistd.h>

#include "files/kind.h"

namespace godwit::files {

namespace {
int GetInt(int fd, int level, int opt) {
  int v = 0;
  socklen_t len = sizeof(v);
  if (getsockopt(fd, level, opt, &v, &len) < 0) return 0;
  return v;
}
int64_t GetTimeo(int fd, int opt) {
  struct timeval tv {};
  socklen_t len = sizeof(tv);
  if (getsockopt(fd, SOL_SOCKET, opt, &tv, &len) < 0) return 0;
  return tv.tv_sec * 1000000ll + tv.tv_usec;
}
Result<void> SetInt(int fd, int level, int opt, int v, const char* name) {
  if (setsockopt(fd, level, opt, &v, sizeof(v)) < 0) return Errno("setsockopt %s=%d", name, v);
  return Ok();
}
}  // namespace

void DumpSockOpts(int fd, img::SockOpts* o) {
  o->set_reuseaddr(GetInt(fd, SOL_SOCKET, SO_REUSEADDR));
  o->set_reuseport(GetInt(fd, SOL_SOCKET, SO_REUSEPORT));
  o->set_keepalive(GetInt(fd, SOL_SOCKET, SO_KEEPALIVE));
  o->set_sndbuf(GetInt(fd, SOL_SOCKET, SO_SNDBUF));
  o->set_rcvbuf(GetInt(fd, SOL_SOCKET, SO_RCVBUF));
  o->set_broadcast(GetInt(fd, SOL_SOCKET, SO_BROADCAST));
  o->set_priority(GetInt(fd, SOL_SOCKET, SO_PRIORITY));
  o->set_passcred(GetInt(fd, SOL_SOCKET, SO_PASSCRED));
  o->set_oobinline(GetInt(fd, SOL_SOCKET, SO_OOBINLINE));
  o->set_mark(GetInt(fd, SOL_SOCKET, SO_MARK));
  o->set_rcvlowat(GetInt(fd, SOL_SOCKET, SO_RCVLOWAT));
  o->set_passsec(GetInt(fd, SOL_SOCKET, SO_PASSSEC));
  o->set_dontroute(GetInt(fd, SOL_SOCKET, SO_DONTROUTE));
  o->set_no_check(GetInt(fd, SOL_SOCKET, SO_NO_CHECK));
  int peek = -1;
  socklen_t plen = sizeof(peek);
  if (getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &peek, &plen) == 0 && peek >= 0)
    o->set_peek_off_plus1(peek + 1);
  struct linger lg {};
  socklen_t len = sizeof(lg);
  if (getsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, &len) == 0) {
    o->set_linger_onoff(lg.l_onoff);
    o->set_linger_sec(lg.l_linger);
  }
  o->set_rcvtimeo_us(GetTimeo(fd, SO_RCVTIMEO));
  o->set_sndtimeo_us(GetTimeo(fd, SO_SNDTIMEO));
  char dev[IFNAMSIZ] = {};
  len = sizeof(dev);
  if (getsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, dev, &len) == 0 && len > 0 && dev[0])
    o->set_bindtodevice(dev);
  // SO_GET_FILTER counts in struct sock_filter units: asked with 0 it says how many. An eBPF
  // program (SO_ATTACH_BPF) has no classic form: EACCES, and it is not kept.
  socklen_t n = 0;
  if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, nullptr, &n) == 0 && n > 0) {
    std::string insns(n * sizeof(sock_filter), '\0');
    if (getsockopt(fd, SOL_SOCKET, SO_GET_FILTER, insns.data(), &n) == 0)
      o->set_filter(insns.substr(0, n * sizeof(sock_filter)));
  }
  o->set_lock_filter(GetInt(fd, SOL_SOCKET, SO_LOCK_FILTER) != 0);
  int lock = 0;
  socklen_t ll = sizeof(lock);
  if (getsockopt(fd, SOL_SOCKET, SO_BUF_LOCK, &lock, &ll) == 0) o->set_buf_lock_plus1(lock + 1);
}

Result<void> RestoreBufLock(int fd, const img::SockOpts& o) {
  if (!o.buf_lock_plus1()) return Ok();
  return SetInt(fd, SOL_SOCKET, SO_BUF_LOCK, o.buf_lock_plus1() - 1, "SO_BUF_LOCK");
}

Result<void> RestoreSockOpts(int fd, const img::SockOpts& o) {
  if (o.reuseaddr()) TRY(SetInt(fd, SOL_SOCKET, SO_REUSEADDR, 1, "SO_REUSEADDR"));
  if (o.reuseport()) TRY(SetInt(fd, SOL_SOCKET, SO_REUSEPORT, 1, "SO_REUSEPORT"));
  if (o.keepalive()) TRY(SetInt(fd, SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE"));
  if (o.broadcast()) TRY(SetInt(fd, SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST"));
  if (o.passcred()) TRY(SetInt(fd, SOL_SOCKET, SO_PASSCRED, 1, "SO_PASSCRED"));
  if (o.oobinline()) TRY(SetInt(fd, SOL_SOCKET, SO_OOBINLINE, 1, "SO_OOBINLINE"));
  if (o.priority()) TRY(SetInt(fd, SOL_SOCKET, SO_PRIORITY, o.priority(), "SO_PRIORITY"));
  if (o.mark()) TRY(SetInt(fd, SOL_SOCKET, SO_MARK, o.mark(), "SO_MARK"));
  if (o.rcvlowat() > 1) TRY(SetInt(fd, SOL_SOCKET, SO_RCVLOWAT, o.rcvlowat(), "SO_RCVLOWAT"));
  if (o.passsec()) TRY(SetInt(fd, SOL_SOCKET, SO_PASSSEC, 1, "SO_PASSSEC"));
  if (o.dontroute()) TRY(SetInt(fd, SOL_SOCKET, SO_DONTROUTE, 1, "SO_DONTROUTE"));
  if (o.no_check()) TRY(SetInt(fd, SOL_SOCKET, SO_NO_CHECK, 1, "SO_NO_CHECK"));
  if (o.peek_off_plus1())
    TRY(SetInt(fd, SOL_SOCKET, SO_PEEK_OFF, o.peek_off_plus1() - 1, "SO_PEEK_OFF"));
  // getsockopt returns the doubled value the kernel keeps; *BUFFORCE takes half of it, and is not
  // bound by rmem_max/wmem_max (we have CAP_NET_ADMIN).
  if (o.sndbuf()) TRY(SetInt(fd, SOL_SOCKET, SO_SNDBUFFORCE, o.sndbuf() / 2, "SO_SNDBUFFORCE"));
  if (o.rcvbuf()) TRY(SetInt(fd, SOL_SOCKET, SO_RCVBUFFORCE, o.rcvbuf() / 2, "SO_RCVBUFFORCE"));
  if (o.linger_onoff()) {
    struct linger lg {static_cast<int>(o.linger_onoff()), static_cast<int>(o.linger_sec())};
    if (setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)) < 0) return Errno("SO_LINGER");
  }
  for (auto [opt, us] : {std::pair{SO_RCVTIMEO, o.rcvtimeo_us()}, std::pair{SO_SNDTIMEO, o.sndtimeo_us()}}) {
    if (!us) continue;
    struct timeval tv {static_cast<time_t>(us / 1000000), static_cast<suseconds_t>(us % 1000000)};
    if (setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv)) < 0) return Errno("SO_*TIMEO");
  }
  if (!o.bindtodevice().empty() &&
      setsockopt(fd, SOL_SOCKET, SO_BINDTODEVICE, o.bindtodevice().data(), o.bindtodevice().size()) < 0)
    return Errno("SO_BINDTODEVICE %s", o.bindtodevice().c_str());
  if (!o.filter().empty()) {
    sock_fprog prog{static_cast<unsigned short>(o.filter().size() / sizeof(sock_filter)),
                    reinterpret_cast<sock_filter*>(const_cast<char*>(o.filter().data()))};
    if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0)
      return Errno("SO_ATTACH_FILTER (%u insns)", prog.len);
  }
  // Last: a locked filter cannot be changed, and nothing after this needs to.
  if (o.lock_filter()) TRY(SetInt(fd, SOL_SOCKET, SO_LOCK_FILTER, 1, "SO_LOCK_FILTER"));
  return RestoreBufLock(fd, o);
}

}  // namespace godwit::files

namespace godwit::files {

Result<void> PeekQueue(FdDumpContext& ctx, int fd, bool stream,
                       google::protobuf::RepeatedPtrField<img::QueuedMsg>* out) {
  int orig = -1;
  socklen_t olen = sizeof(orig);
  if (getsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &orig, &olen) < 0) return Errno("SO_PEEK_OFF");
  // A unix datagram/seqpacket read of 0 bytes is a zero-length message or the end of file (the
  // peer gone, or reads shut). With SO_PASSCRED on, for the peek only, a message comes with
  // SCM_CREDENTIALS and the end of file with nothing. (A peeked zero-length message is skipped
  // by the next peek: the kernel marks it peeked.)
  int domain = 0, passcred = 0;
  olen = sizeof(domain);
  getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &olen);
  bool creds = domain == AF_UNIX && !stream;
  olen = sizeof(passcred);
  if (creds) getsockopt(fd, SOL_SOCKET, SO_PASSCRED, &passcred, &olen);
  int on = 1;
  if (creds && !passcred && setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof(on)) < 0)
    return Errno("SO_PASSCRED");
  std::vector<char> buf(256 << 10);
  std::string stream_data;
  int off = 0;
  Result<void> res;
  for (int i = 0; i < (1 << 20); i++) {
    if (setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &off, sizeof(off)) < 0) {
      res = Errno("setsockopt SO_PEEK_OFF %d", off);
      break;
    }
    struct sockaddr_storage from {};
    char cbuf[CMSG_SPACE(sizeof(int) * 64) + CMSG_SPACE(sizeof(struct ucred))];
    struct iovec iov {buf.data(), buf.size()};
    struct msghdr mh {};
    mh.msg_name = &from;
    mh.msg_namelen = sizeof(from);
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = cbuf;
    mh.msg_controllen = sizeof(cbuf);
    ssize_t n = recvmsg(fd, &mh, MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC | MSG_CMSG_CLOEXEC);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // A stream or seqpacket socket never connected (or listening) has no queue to read:
      // recvmsg says EINVAL (zdtm sk-unix-unconn).
      if ((errno == EINVAL || errno == ENOTCONN) && off == 0 && out->empty() &&
          stream_data.empty())
        break;
      res = Errno("recvmsg MSG_PEEK");
      break;
    }
    // Fds in flight: each becomes a description of the image (or is one already), by id.
    std::vector<uint64_t> ids;
    bool got_creds = false;
    for (struct cmsghdr* c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) got_creds = true;
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      int nfds = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (int k = 0; k < nfds; k++) {
        int got = reinterpret_cast<int*>(CMSG_DATA(c))[k];
        if (res.ok()) {
          if (!ctx.in_flight) {
            res = MakeError(ErrorKind::kUnsupported, 0, "socket queue holds fds in flight");
          } else {
            auto id = ctx.in_flight(got);
            if (id.ok()) ids.push_back(*id);
            else res = std::move(id.error().wrap("a file descriptor in flight (SCM_RIGHTS)"));
          }
        }
        close(got);
      }
    }
    if (!res.ok()) break;
    if (mh.msg_flags & MSG_CTRUNC) {
      res = MakeError(ErrorKind::kUnsupported, 0,
                      "socket queue holds more than 64 file descriptors on one message");
      break;
    }
    if (stream) {
      if (n == 0) break;
      size_t got = std::min<size_t>(n, buf.size());
      if (!ids.empty()) {
        // A read stops after the segment carrying fds: what came before is one message, this
        // segment another, sent again with its fds.
        if (!stream_data.empty()) {
          auto before = ctx.Blob(stream_data.data(), stream_data.size());
          if (!before.ok()) {
            res = std::move(before).error();
            break;
          }
          *out->Add()->mutable_data() = *before;
          stream_data.clear();
        }
        img::QueuedMsg* m = out->Add();
        auto ref = ctx.Blob(buf.data(), got);
        if (!ref.ok()) {
          res = std::move(ref).error();
          break;
        }
        *m->mutable_data() = *ref;
        for (uint64_t id : ids) m->add_fds(id);
      } else {
        stream_data.append(buf.data(), got);
      }
      off += got;
      continue;
    }
    if (n == 0 && creds && !got_creds) break;  // end of file, not a message
    if (static_cast<size_t>(n) > buf.size()) {  // datagram larger than the buffer: grow, again
      buf.resize(n);
      continue;
    }
    img::QueuedMsg* m = out->Add();
    auto ref = ctx.Blob(buf.data(), n);
    if (!ref.ok()) {
      res = std::move(ref).error();
      break;
    }
    *m->mutable_data() = *ref;
    for (uint64_t id : ids) m->add_fds(id);
    if (mh.msg_namelen > sizeof(sa_family_t))
      m->set_sender(std::string(reinterpret_cast<char*>(&from), mh.msg_namelen));
    off += n;
  }
  setsockopt(fd, SOL_SOCKET, SO_PEEK_OFF, &orig, sizeof(orig));
  if (creds && !passcred) setsockopt(fd, SOL_SOCKET, SO_PASSCRED, &passcred, sizeof(passcred));
  TRY(res);
  if (stream && !stream_data.empty()) {
    ASSIGN_OR_RETURN(*out->Add()->mutable_data(), ctx.Blob(stream_data.data(), stream_data.size()));
  }
  return Ok();
}

}  // namespace godwit::files
