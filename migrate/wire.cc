#include "migrate/wire.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/ssl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <asio.hpp>
#include <asio/ssl.hpp>
#include <chrono>
#include <cstring>

#include "common/args.h"
#include "common/log.h"

namespace godwit::migrate {

namespace {

constexpr uint32_t kMagic = 0x464d5747;  // "GWMF" little endian

struct FrameHeader {
  uint32_t magic;
  uint32_t header_len;
  uint64_t payload_len;
};
static_assert(sizeof(FrameHeader) == 16);

std::chrono::steady_clock::duration Dur(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(
      std::chrono::duration<double>(s));
}

}  // namespace

struct Channel::Impl {
  asio::io_context io;
  asio::ip::tcp::socket sock{io};
  std::unique_ptr<asio::ssl::context> ctx;
  std::unique_ptr<asio::ssl::stream<asio::ip::tcp::socket&>> tls;
  bool broken = false;  // a timed-out or failed stream: every later call fails

  // Runs one asynchronous operation to completion or until timeout_s passed (then the socket is
  // closed: a half-done TLS record cannot be resumed).
  template <class Start>
  asio::error_code Run(double timeout_s, Start start) {
    asio::error_code result = asio::error::would_block;
    bool done = false;
    start([&](const asio::error_code& ec, auto&&...) {
      result = ec;
      done = true;
    });
    io.restart();
    io.run_for(Dur(timeout_s));
    if (!done) {
      asio::error_code ignored;
      sock.cancel(ignored);
      sock.close(ignored);
      io.restart();
      io.run();
      broken = true;
      return asio::error::timed_out;
    }
    if (result) broken = true;
    return result;
  }

  template <class Buffers>
  asio::error_code Write(double timeout_s, const Buffers& b) {
    return Run(timeout_s, [&](auto handler) {
      if (tls)
        asio::async_write(*tls, b, handler);
      else
        asio::async_write(sock, b, handler);
    });
  }
  template <class Buffers>
  asio::error_code Read(double timeout_s, const Buffers& b) {
    return Run(timeout_s, [&](auto handler) {
      if (tls)
        asio::async_read(*tls, b, handler);
      else
        asio::async_read(sock, b, handler);
    });
  }
};

namespace {

Result<std::unique_ptr<asio::ssl::context>> MakeTlsContext(const TlsConfig& c, bool server) {
  if (c.cert.empty() || c.key.empty() || c.ca.empty())
    return MakeError(ErrorKind::kUsage, 0,
                     "TLS needs --tls-cert, --tls-key and --tls-ca (or --insecure on both sides)");
  auto ctx = std::make_unique<asio::ssl::context>(server ? asio::ssl::context::tls_server
                                                         : asio::ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(ctx->native_handle(), TLS1_3_VERSION);
  asio::error_code ec;
  ctx->use_certificate_chain_file(c.cert, ec);
  if (ec) return MakeError(ErrorKind::kUsage, 0, "TLS certificate %s: %s", c.cert.c_str(),
                           ec.message().c_str());
  ctx->use_private_key_file(c.key, asio::ssl::context::pem, ec);
  if (ec) return MakeError(ErrorKind::kUsage, 0, "TLS key %s: %s", c.key.c_str(),
                           ec.message().c_str());
  ctx->load_verify_file(c.ca, ec);
  if (ec) return MakeError(ErrorKind::kUsage, 0, "TLS CA %s: %s", c.ca.c_str(),
                           ec.message().c_str());
  ctx->set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert, ec);
  if (ec) return MakeError(ErrorKind::kGeneric, 0, "TLS verify mode: %s", ec.message().c_str());
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

std::string Describe(const asio::ip::tcp::endpoint& ep) {
  std::string a = ep.address().to_string();
  if (ep.address().is_v6()) a = "[" + a + "]";
  return a + ":" + std::to_string(ep.port());
}

Error StreamError(const asio::error_code& ec, const std::string& peer, const char* what) {
  if (ec == asio::error::timed_out)
    return MakeError(ErrorKind::kPeer, ETIMEDOUT, "peer %s: %s: timed out", peer.c_str(), what);
  if (ec == asio::error::eof || ec == asio::ssl::error::stream_truncated)
    return MakeError(ErrorKind::kPeer, 0, "peer %s: %s: connection closed by the peer",
                     peer.c_str(), what);
  return MakeError(ErrorKind::kPeer, 0, "peer %s: %s: %s", peer.c_str(), what,
                   ec.message().c_str());
}

// The TLS layer over impl's connected socket, and its handshake.
Result<void> Handshake(Channel::Impl& impl, const TlsConfig& tls, bool server,
                       const std::string& peer, double timeout_s) {
  ASSIGN_OR_RETURN(impl.ctx, MakeTlsContext(tls, server));
  impl.tls = std::make_unique<asio::ssl::stream<asio::ip::tcp::socket&>>(impl.sock, *impl.ctx);
  auto ec = impl.Run(timeout_s, [&](auto handler) {
    impl.tls->async_handshake(server ? asio::ssl::stream_base::server
                                     : asio::ssl::stream_base::client,
                              handler);
  });
  if (ec) return StreamError(ec, peer, "TLS handshake");
  return Ok();
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
    case mig::Frame::MSG_NOT_SET: break;
  }
  return "empty";
}

Channel::Channel(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Channel::~Channel() { Close(); }

bool Channel::secure() const { return impl_->tls != nullptr; }

Result<std::unique_ptr<Channel>> Channel::Connect(const std::string& host_port,
                                                  const TlsConfig& tls, double timeout_s) {
  ASSIGN_OR_RETURN(auto hp, SplitHostPort(host_port));
  auto impl = std::make_unique<Impl>();
  asio::error_code ec;
  asio::ip::tcp::resolver resolver(impl->io);
  auto eps = resolver.resolve(hp.first, std::to_string(hp.second), ec);
  if (ec) return MakeError(ErrorKind::kPeer, 0, "resolve %s: %s", hp.first.c_str(),
                           ec.message().c_str());
  ec = impl->Run(timeout_s, [&](auto handler) {
    asio::async_connect(impl->sock, eps, [handler](const asio::error_code& e,
                                                   const asio::ip::tcp::endpoint&) mutable {
      handler(e);
    });
  });
  if (ec) return StreamError(ec, host_port, "connect");
  TuneSocket(impl->sock.native_handle());
  std::string peer = Describe(impl->sock.remote_endpoint(ec));
  if (!tls.insecure) TRY(Handshake(*impl, tls, /*server=*/false, peer, timeout_s));
  std::unique_ptr<Channel> ch(new Channel(std::move(impl)));
  ch->peer_ = peer;
  ch->timeout_s_ = timeout_s;
  return ch;
}

Result<std::unique_ptr<Channel>> Channel::Accept(int fd, const TlsConfig& tls, double timeout_s) {
  auto impl = std::make_unique<Impl>();
  sockaddr_storage ss{};
  socklen_t sl = sizeof(ss);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) < 0) {
    int e = errno;
    ::close(fd);
    return MakeError(ErrorKind::kGeneric, e, "getsockname of accepted fd %d", fd);
  }
  asio::error_code ec;
  impl->sock.assign(ss.ss_family == AF_INET6 ? asio::ip::tcp::v6() : asio::ip::tcp::v4(), fd, ec);
  if (ec) {
    ::close(fd);
    return MakeError(ErrorKind::kGeneric, 0, "accepted fd %d: %s", fd, ec.message().c_str());
  }
  TuneSocket(fd);
  std::string peer = Describe(impl->sock.remote_endpoint(ec));
  if (!tls.insecure) TRY(Handshake(*impl, tls, /*server=*/true, peer, timeout_s));
  std::unique_ptr<Channel> ch(new Channel(std::move(impl)));
  ch->peer_ = peer;
  ch->timeout_s_ = timeout_s;
  return ch;
}

Result<void> Channel::Send(const mig::Frame& frame, const void* payload, size_t len) {
  if (impl_->broken || !impl_->sock.is_open())
    return MakeError(ErrorKind::kPeer, 0, "peer %s: connection already failed", peer_.c_str());
  std::string body;
  if (!frame.SerializeToString(&body))
    return MakeError(ErrorKind::kGeneric, 0, "serialize %s frame", FrameKind(frame));
  if (len > kMaxPayload)
    return MakeError(ErrorKind::kGeneric, 0, "%s frame payload %zu > %llu", FrameKind(frame), len,
                     static_cast<unsigned long long>(kMaxPayload));
  FrameHeader h{kMagic, static_cast<uint32_t>(body.size()), len};
  std::array<asio::const_buffer, 3> bufs{asio::buffer(&h, sizeof(h)), asio::buffer(body),
                                         asio::buffer(payload, len)};
  auto ec = impl_->Write(timeout_s_, bufs);
  if (ec) return StreamError(ec, peer_, StrFormat("send %s", FrameKind(frame)).c_str());
  sent_ += sizeof(h) + body.size() + len;
  return Ok();
}

Result<void> Channel::SendRaw(const void* data, size_t len) {
  if (impl_->broken || !impl_->sock.is_open())
    return MakeError(ErrorKind::kPeer, 0, "peer %s: connection already failed", peer_.c_str());
  auto ec = impl_->Write(timeout_s_, asio::buffer(data, len));
  if (ec) return StreamError(ec, peer_, "send");
  sent_ += len;
  return Ok();
}

Result<void> Channel::Recv(mig::Frame* frame, std::string* payload) {
  if (impl_->broken || !impl_->sock.is_open())
    return MakeError(ErrorKind::kPeer, 0, "peer %s: connection already failed", peer_.c_str());
  FrameHeader h{};
  auto ec = impl_->Read(timeout_s_, asio::buffer(&h, sizeof(h)));
  if (ec) return StreamError(ec, peer_, "receive");
  if (h.magic != kMagic || h.header_len > kMaxHeader || h.payload_len > kMaxPayload) {
    impl_->broken = true;
    return MakeError(ErrorKind::kPeer, 0,
                     "peer %s: corrupt frame at stream offset %llu (magic %#x, header %u bytes, "
                     "payload %llu bytes)",
                     peer_.c_str(), static_cast<unsigned long long>(received_), h.magic,
                     h.header_len, static_cast<unsigned long long>(h.payload_len));
  }
  std::string body(h.header_len, '\0');
  if (h.header_len) {
    ec = impl_->Read(timeout_s_, asio::buffer(body));
    if (ec) return StreamError(ec, peer_, "receive frame");
  }
  if (!frame->ParseFromString(body)) {
    impl_->broken = true;
    return MakeError(ErrorKind::kPeer, 0, "peer %s: undecodable frame at stream offset %llu",
                     peer_.c_str(), static_cast<unsigned long long>(received_));
  }
  payload->resize(h.payload_len);
  if (h.payload_len) {
    ec = impl_->Read(timeout_s_, asio::buffer(payload->data(), payload->size()));
    if (ec) return StreamError(ec, peer_, "receive payload");
  }
  received_ += sizeof(h) + h.header_len + h.payload_len;
  return Ok();
}

void Channel::Close() {
  if (!impl_ || !impl_->sock.is_open()) return;
  asio::error_code ec;
  if (impl_->tls && !impl_->broken) {
    // close_notify, bounded: a peer that is gone must not hold us.
    (void)impl_->Run(1.0, [&](auto handler) { impl_->tls->async_shutdown(handler); });
  }
  impl_->sock.shutdown(asio::ip::tcp::socket::shutdown_both, ec);
  impl_->sock.close(ec);
}

}  // namespace godwit::migrate
