#include "migrate/wire.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <memory>

#include "common/args.h"
#include "common/log.h"
#include "common/unique_fd.h"

namespace godwit::migrate {

namespace {

constexpr uint32_t kMagic = 0x464d5747;  // "GWMF" little endian

struct FrameHeader {
  uint32_t magic;
  uint32_t header_len;
  uint64_t payload_len;
};
static_assert(sizeof(FrameHeader) == 16);

// A TLS record carries at most 16 KiB of data.
constexpr size_t kRecord = 16 << 10;
// Received bytes are buffered here, under OpenSSL: one recv() per many records. (OpenSSL's own
// read-ahead with a large buffer moves the unread rest of its buffer to the front for every
// record, ~8 extra copies per byte with 256 KiB; and without read-ahead it asks the socket
// twice per record, for the header and the body.)
constexpr size_t kReadBuffer = 256 << 10;

using Clock = std::chrono::steady_clock;

Clock::time_point Deadline(double s) {
  return Clock::now() + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(s));
}

// The socket under TLS: send() with MSG_NOSIGNAL (a peer that closed must give EPIPE, not kill
// the process; OpenSSL's own socket BIO uses write()) and MSG_MORE while the caller says more of
// the same frame follows (the kernel then builds full segments instead of one per 16 KiB record:
// on loopback each segment crosses the whole receive path).
struct SockBio {
  int fd = -1;
  bool more = false;
  std::unique_ptr<char[]> in;  // kReadBuffer bytes; [pos, end) not yet given to OpenSSL
  size_t pos = 0, end = 0;
};

int BioWrite(BIO* b, const char* data, int len) {
  auto* s = static_cast<SockBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  ssize_t n = send(s->fd, data, static_cast<size_t>(len), MSG_NOSIGNAL | (s->more ? MSG_MORE : 0));
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_write(b);
  return static_cast<int>(n);
}

// OpenSSL asks for a record's header, then its body. It is told to retry (and then waits in
// poll()) only when this buffer is empty and the socket has nothing: no data is left here
// unseen while it waits.
int BioRead(BIO* b, char* data, int len) {
  auto* s = static_cast<SockBio*>(BIO_get_data(b));
  BIO_clear_retry_flags(b);
  if (s->pos == s->end) {
    if (!s->in) s->in.reset(new char[kReadBuffer]);
    ssize_t n = recv(s->fd, s->in.get(), kReadBuffer, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) BIO_set_retry_read(b);
    if (n <= 0) return static_cast<int>(n);
    s->pos = 0;
    s->end = static_cast<size_t>(n);
  }
  size_t k = std::min(static_cast<size_t>(len), s->end - s->pos);
  memcpy(data, s->in.get() + s->pos, k);
  s->pos += k;
  return static_cast<int>(k);
}

long BioCtrl(BIO* b, int cmd, long, void*) {
  switch (cmd) {
    case BIO_CTRL_FLUSH:
    case BIO_CTRL_DUP:
      return 1;
    case BIO_CTRL_PENDING: {
      auto* s = static_cast<SockBio*>(BIO_get_data(b));
      return static_cast<long>(s->end - s->pos);
    }
    default:
      return 0;
  }
}

int BioCreate(BIO* b) {
  BIO_set_init(b, 1);
  return 1;
}

const BIO_METHOD* SockBioMethod() {
  static BIO_METHOD* m = [] {
    BIO_METHOD* bm = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "godwit socket");
    BIO_meth_set_write(bm, BioWrite);
    BIO_meth_set_read(bm, BioRead);
    BIO_meth_set_ctrl(bm, BioCtrl);
    BIO_meth_set_create(bm, BioCreate);
    return bm;
  }();
  return m;
}

// The first queued OpenSSL error as text ("" if none), and the queue emptied.
std::string SslErrors() {
  unsigned long e = ERR_get_error();
  char buf[256] = "";
  if (e) ERR_error_string_n(e, buf, sizeof(buf));
  ERR_clear_error();
  return buf;
}

}  // namespace

// One connected socket (non-blocking; calls wait in poll() until their deadline) and, unless
// insecure, the TLS session over it. OpenSSL runs directly on the socket (no BIO pair, no
// io_context): a record is encrypted into OpenSSL's buffer and sent from there, and received
// records are decrypted in OpenSSL's read buffer and copied once into the caller's.
struct Channel::Impl {
  UniqueFd fd;
  SSL_CTX* ctx = nullptr;
  SSL* ssl = nullptr;
  SockBio bio;
  bool broken = false;  // a timed-out or failed stream: every later call fails
  std::string peer;
  std::string out;  // a frame's header and message (and, under TLS, its payload's first bytes)

  ~Impl() {
    if (ssl) SSL_free(ssl);
    if (ctx) SSL_CTX_free(ctx);
  }

  // err: an errno (its text is added by Error::to_string), 0 for a closed connection, -1 for
  // neither (detail says what).
  Error Fail(int err, const char* what, const std::string& detail) {
    broken = true;
    if (err == ETIMEDOUT)
      return MakeError(ErrorKind::kPeer, ETIMEDOUT, "peer %s: %s: timed out", peer.c_str(), what);
    if (err == EPIPE || err == ECONNRESET || err == 0)
      return MakeError(ErrorKind::kPeer, 0, "peer %s: %s: connection closed by the peer%s%s",
                       peer.c_str(), what, detail.empty() ? "" : ": ", detail.c_str());
    return MakeError(ErrorKind::kPeer, err < 0 ? 0 : err, "peer %s: %s%s%s", peer.c_str(), what,
                     detail.empty() ? "" : ": ", detail.c_str());
  }

  // Waits for `events` on the socket until the deadline.
  Result<void> Wait(short events, Clock::time_point dl, const char* what) {
    for (;;) {
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(dl - Clock::now()).count();
      if (left <= 0) return Fail(ETIMEDOUT, what, "");
      pollfd p{fd.get(), events, 0};
      int r = poll(&p, 1, static_cast<int>(std::min<long long>(left + 1, 1 << 30)));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) return Fail(errno, what, "poll");
      if (r > 0) return Ok();  // ready, or an error/hangup that the next call reports
    }
  }

  // After an SSL call returned r <= 0: waits when OpenSSL wants the socket, else the error.
  Result<void> SslRetry(int r, Clock::time_point dl, const char* what) {
    int sys = errno;
    int e = SSL_get_error(ssl, r);
    switch (e) {
      case SSL_ERROR_WANT_READ: return Wait(POLLIN, dl, what);
      case SSL_ERROR_WANT_WRITE: return Wait(POLLOUT, dl, what);
      case SSL_ERROR_ZERO_RETURN: return Fail(0, what, "");
      case SSL_ERROR_SYSCALL: {
        std::string d = SslErrors();
        return Fail(sys == EPIPE || sys == ECONNRESET ? 0 : sys, what, d);
      }
      default: {
        unsigned long code = ERR_peek_error();
        std::string d = SslErrors();
        // OpenSSL 3 reports a closed TCP stream without close_notify as an SSL error.
        if (ERR_GET_REASON(code) == SSL_R_UNEXPECTED_EOF_WHILE_READING) return Fail(0, what, "");
        return Fail(-1, what, d.empty() ? "TLS error" : d);
      }
    }
  }

  Result<void> Handshake(double timeout_s) {
    auto dl = Deadline(timeout_s);
    ERR_clear_error();
    for (;;) {
      int r = SSL_do_handshake(ssl);
      if (r == 1) return Ok();
      TRY(SslRetry(r, dl, "TLS handshake"));
    }
  }

  // Writes all of [p, p + n); more: the frame goes on after it (MSG_MORE).
  Result<void> WriteAll(const char* p, size_t n, bool more, Clock::time_point dl,
                        const char* what) {
    bio.more = more;
    while (n > 0) {
      if (ssl) {
        size_t w = 0;
        int r = SSL_write_ex(ssl, p, n, &w);
        if (r <= 0) {
          TRY(SslRetry(r, dl, what));
          continue;
        }
        p += w;
        n -= w;
      } else {
        ssize_t w = send(fd.get(), p, n, MSG_NOSIGNAL | (more ? MSG_MORE : 0));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0 && errno == EAGAIN) {
          TRY(Wait(POLLOUT, dl, what));
          continue;
        }
        if (w < 0) return Fail(errno, what, "");
        p += w;
        n -= static_cast<size_t>(w);
      }
    }
    return Ok();
  }

  // Reads exactly n bytes into p.
  Result<void> ReadAll(char* p, size_t n, Clock::time_point dl, const char* what) {
    while (n > 0) {
      if (ssl) {
        size_t got = 0;
        int r = SSL_read_ex(ssl, p, n, &got);
        if (r <= 0) {
          TRY(SslRetry(r, dl, what));
          continue;
        }
        p += got;
        n -= got;
      } else {
        ssize_t got = recv(fd.get(), p, n, 0);
        if (got < 0 && errno == EINTR) continue;
        if (got < 0 && errno == EAGAIN) {
          TRY(Wait(POLLIN, dl, what));
          continue;
        }
        if (got == 0) return Fail(0, what, "");
        if (got < 0) return Fail(errno, what, "");
        p += got;
        n -= static_cast<size_t>(got);
      }
    }
    return Ok();
  }
};

namespace {

Result<SSL_CTX*> MakeTlsContext(const TlsConfig& c, bool server) {
  if (c.cert.empty() || c.key.empty() || c.ca.empty())
    return MakeError(ErrorKind::kUsage, 0,
                     "TLS needs --tls-cert, --tls-key and --tls-ca (or --insecure on both sides)");
  ERR_clear_error();
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (!ctx) return MakeError(ErrorKind::kGeneric, 0, "TLS context: %s", SslErrors().c_str());
  auto fail = [&](const char* what, const std::string& file) {
    SSL_CTX_free(ctx);
    return MakeError(ErrorKind::kUsage, 0, "TLS %s %s: %s", what, file.c_str(),
                     SslErrors().c_str());
  };
  SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
  if (SSL_CTX_use_certificate_chain_file(ctx, c.cert.c_str()) != 1)
    return fail("certificate", c.cert);
  if (SSL_CTX_use_PrivateKey_file(ctx, c.key.c_str(), SSL_FILETYPE_PEM) != 1)
    return fail("key", c.key);
  if (SSL_CTX_load_verify_locations(ctx, c.ca.c_str(), nullptr) != 1) return fail("CA", c.ca);
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // No session resumption: one connection per migration.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  if (server) SSL_CTX_set_num_tickets(ctx, 0);
  return ctx;
}

void TuneSocket(int fd) {
  int one = 1;
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  // Large buffers: a pre-copy round is a bulk stream.
  int sz = 4 << 20;
  (void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
  (void)setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz));
}

std::string Describe(const sockaddr_storage& ss) {
  char host[NI_MAXHOST] = "?", port[NI_MAXSERV] = "?";
  (void)getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof(ss), host, sizeof(host), port,
                    sizeof(port), NI_NUMERICHOST | NI_NUMERICSERV);
  std::string a = host;
  if (ss.ss_family == AF_INET6) a = "[" + a + "]";
  return a + ":" + port;
}

std::string PeerOf(int fd) {
  sockaddr_storage ss{};
  socklen_t sl = sizeof(ss);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &sl) < 0) return "?";
  return Describe(ss);
}

// The TLS session over impl's connected socket, and its handshake.
Result<void> StartTls(Channel::Impl& impl, const TlsConfig& tls, bool server, double timeout_s) {
  ASSIGN_OR_RETURN(impl.ctx, MakeTlsContext(tls, server));
  impl.ssl = SSL_new(impl.ctx);
  BIO* b = impl.ssl ? BIO_new(SockBioMethod()) : nullptr;
  if (!b) return MakeError(ErrorKind::kGeneric, 0, "TLS session: %s", SslErrors().c_str());
  impl.bio.fd = impl.fd.get();
  BIO_set_data(b, &impl.bio);
  SSL_set_bio(impl.ssl, b, b);
  if (server)
    SSL_set_accept_state(impl.ssl);
  else
    SSL_set_connect_state(impl.ssl);
  return impl.Handshake(timeout_s);
}

}  // namespace

Result<std::pair<std::string, uint16_t>> SplitHostPort(const std::string& s) {
  ASSIGN_OR_RETURN(auto hp, godwit::SplitHostPort(s));
  char* end = nullptr;
  unsigned long p = strtoul(hp.second.c_str(), &end, 10);
  if (*end != '\0' || p > 65535) return MakeError(ErrorKind::kUsage, 0, "bad port in %s", s.c_str());
  return std::make_pair(hp.first, static_cast<uint16_t>(p));
}

const char* FrameKind(const mig::Frame& f) {
  switch (f.msg_case()) {
    case mig::Frame::kHello: return "hello";
    case mig::Frame::kWelcome: return "welcome";
    case mig::Frame::kFile: return "file";
    case mig::Frame::kRoundEnd: return "round-end";
    case mig::Frame::kRoundAck: return "round-ack";
    case mig::Frame::kFinal: return "final";
    case mig::Frame::kRestored: return "restored";
    case mig::Frame::kFailed: return "failed";
    case mig::Frame::kCommit: return "commit";
    case mig::Frame::kDone: return "done";
    case mig::Frame::kAbort: return "abort";
    case mig::Frame::kHeld: return "held-packets";
    case mig::Frame::kSwitchover: return "switchover";
    case mig::Frame::kEnvReady: return "env-ready";
    case mig::Frame::MSG_NOT_SET: break;
  }
  return "empty";
}

Channel::Channel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Channel::~Channel() { Close(); }

bool Channel::secure() const { return impl_->ssl != nullptr; }

std::string Channel::cipher() const {
  if (!impl_->ssl) return "";
  const char* n = SSL_get_cipher_name(impl_->ssl);
  return n ? n : "";
}

Result<std::unique_ptr<Channel>> Channel::Connect(const std::string& host_port,
                                                  const TlsConfig& tls, double timeout_s) {
  ASSIGN_OR_RETURN(auto hp, SplitHostPort(host_port));
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICSERV;
  addrinfo* res = nullptr;
  int gai = getaddrinfo(hp.first.c_str(), std::to_string(hp.second).c_str(), &hints, &res);
  if (gai != 0)
    return MakeError(ErrorKind::kPeer, 0, "resolve %s: %s", hp.first.c_str(), gai_strerror(gai));
  auto impl = std::make_unique<Impl>();
  impl->peer = host_port;
  auto dl = Deadline(timeout_s);
  Result<void> last = MakeError(ErrorKind::kPeer, 0, "peer %s: connect: no address",
                                host_port.c_str());
  for (addrinfo* ai = res; ai; ai = ai->ai_next) {
    impl->broken = false;
    impl->fd.reset(socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
    if (!impl->fd) {
      last = Errno("socket for %s", host_port.c_str());
      continue;
    }
    int r = connect(impl->fd.get(), ai->ai_addr, ai->ai_addrlen);
    if (r < 0 && errno == EINPROGRESS) {
      last = impl->Wait(POLLOUT, dl, "connect");
      if (!last.ok()) continue;
      int err = 0;
      socklen_t l = sizeof(err);
      (void)getsockopt(impl->fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
      errno = err;
      r = err ? -1 : 0;
    }
    if (r < 0) {
      last = impl->Fail(errno, "connect", "");
      continue;
    }
    last = Ok();
    break;
  }
  freeaddrinfo(res);
  if (!last.ok()) return std::move(last).error();
  impl->broken = false;
  TuneSocket(impl->fd.get());
  impl->peer = PeerOf(impl->fd.get());
  if (!tls.insecure) TRY(StartTls(*impl, tls, /*server=*/false, timeout_s));
  std::unique_ptr<Channel> ch(new Channel(std::move(impl)));
  ch->peer_ = ch->impl_->peer;
  ch->timeout_s_ = timeout_s;
  return ch;
}

Result<std::unique_ptr<Channel>> Channel::Accept(int fd, const TlsConfig& tls, double timeout_s) {
  auto impl = std::make_unique<Impl>();
  impl->fd.reset(fd);
  if (fd < 0) return MakeError(ErrorKind::kGeneric, EBADF, "accepted fd %d", fd);
  int fl = fcntl(fd, F_GETFL);
  if (fl < 0 || fcntl(fd, F_SETFL, fl | O_NONBLOCK) < 0)
    return Errno("accepted fd %d: non-blocking", fd);
  TuneSocket(fd);
  impl->peer = PeerOf(fd);
  if (!tls.insecure) TRY(StartTls(*impl, tls, /*server=*/true, timeout_s));
  std::unique_ptr<Channel> ch(new Channel(std::move(impl)));
  ch->peer_ = ch->impl_->peer;
  ch->timeout_s_ = timeout_s;
  return ch;
}

Result<void> Channel::Send(const mig::Frame& frame, const void* payload, size_t len) {
  if (impl_->broken || !impl_->fd)
    return MakeError(ErrorKind::kPeer, 0, "peer %s: connection already failed", peer_.c_str());
  if (len > kMaxPayload)
    return MakeError(ErrorKind::kGeneric, 0, "%s frame payload %zu > %llu", FrameKind(frame), len,
                     static_cast<unsigned long long>(kMaxPayload));
  const size_t body = frame.ByteSizeLong();
  FrameHeader h{kMagic, static_cast<uint32_t>(body), len};
  // Header, message and (under TLS) the payload's first bytes in one buffer: a frame's start
  // fills one record exactly instead of leaving a small record of its own.
  const size_t room = impl_->ssl && sizeof(h) + body < kRecord ? kRecord - sizeof(h) - body : 0;
  const size_t head = std::min(len, room);
  std::string& out = impl_->out;
  out.resize(sizeof(h) + body + head);
  memcpy(out.data(), &h, sizeof(h));
  if (!frame.SerializeToArray(out.data() + sizeof(h), static_cast<int>(body)))
    return MakeError(ErrorKind::kGeneric, 0, "serialize %s frame", FrameKind(frame));
  const char* p = static_cast<const char*>(payload);
  if (head) memcpy(out.data() + sizeof(h) + body, p, head);
  ERR_clear_error();
  auto dl = Deadline(timeout_s_);
  std::string what = StrFormat("send %s", FrameKind(frame));
  TRY(impl_->WriteAll(out.data(), out.size(), len > head, dl, what.c_str()));
  if (len > head) {
    // All but the last record with MSG_MORE; the last one pushes the frame out.
    const size_t rest = len - head, tail = std::min(rest, kRecord);
    if (rest > tail) TRY(impl_->WriteAll(p + head, rest - tail, true, dl, what.c_str()));
    TRY(impl_->WriteAll(p + len - tail, tail, false, dl, what.c_str()));
  }
  sent_ += sizeof(h) + body + len;
  return Ok();
}

Result<void> Channel::SendRaw(const void* data, size_t len) {
  if (impl_->broken || !impl_->fd)
    return MakeError(ErrorKind::kPeer, 0, "peer %s: connection already failed", peer_.c_str());
  ERR_clear_error();
  TRY(impl_->WriteAll(static_cast<const char*>(data), len, false, Deadline(timeout_s_), "send"));
  sent_ += len;
  return Ok();
}

Result<void> Channel::Recv(mig::Frame* frame, std::string* payload) {
  if (impl_->broken || !impl_->fd)
    return MakeError(ErrorKind::kPeer, 0, "peer %s: connection already failed", peer_.c_str());
  ERR_clear_error();
  auto dl = Deadline(timeout_s_);
  FrameHeader h{};
  TRY(impl_->ReadAll(reinterpret_cast<char*>(&h), sizeof(h), dl, "receive"));
  if (h.magic != kMagic || h.header_len > kMaxHeader || h.payload_len > kMaxPayload) {
    impl_->broken = true;
    return MakeError(ErrorKind::kPeer, 0,
                     "peer %s: corrupt frame at stream offset %llu (magic %#x, header %u bytes, "
                     "payload %llu bytes)",
                     peer_.c_str(), static_cast<unsigned long long>(received_), h.magic,
                     h.header_len, static_cast<unsigned long long>(h.payload_len));
  }
  std::string& body = impl_->out;
  body.resize(h.header_len);
  if (h.header_len) TRY(impl_->ReadAll(body.data(), body.size(), dl, "receive frame"));
  if (!frame->ParseFromArray(body.data(), static_cast<int>(body.size()))) {
    impl_->broken = true;
    return MakeError(ErrorKind::kPeer, 0, "peer %s: undecodable frame at stream offset %llu",
                     peer_.c_str(), static_cast<unsigned long long>(received_));
  }
  payload->resize(h.payload_len);
  if (h.payload_len) TRY(impl_->ReadAll(payload->data(), payload->size(), dl, "receive payload"));
  received_ += sizeof(h) + h.header_len + h.payload_len;
  return Ok();
}

void Channel::Interrupt() {
  if (impl_ && impl_->fd) (void)::shutdown(impl_->fd.get(), SHUT_RDWR);
}

void Channel::Close() {
  if (!impl_ || !impl_->fd) return;
  if (impl_->ssl && !impl_->broken) {
    // close_notify, bounded: a peer that is gone must not hold us. Its close_notify is not
    // waited for (nothing more is read from a closed channel).
    ERR_clear_error();
    impl_->bio.more = false;
    auto dl = Deadline(1.0);
    for (;;) {
      int r = SSL_shutdown(impl_->ssl);
      if (r >= 0) break;
      if (!impl_->SslRetry(r, dl, "close").ok()) break;
    }
    ERR_clear_error();
  }
  (void)shutdown(impl_->fd.get(), SHUT_RDWR);
  impl_->fd.reset();
}

}  // namespace godwit::migrate
