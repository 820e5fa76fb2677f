// The migration stream: frames (proto/migrate.proto) over TCP, mutually authenticated TLS by
// default, plain TCP only when both sides say --insecure.
//
// A Channel is one connection, used by one thread, with synchronous calls that each end within
// the channel's timeout (a non-blocking socket; calls wait in poll() until their deadline; a
// timed-out channel is marked failed and every later call fails). Frame layout: a 16-byte header,
// the Frame message, the raw payload. TCP_NODELAY is set and a frame's last bytes are sent
// without MSG_MORE: a stream never waits on a corked tail (CRIU's page-server stalls ~210 ms
// there); the bytes before them carry MSG_MORE, so a large payload leaves in full segments.
//
// TLS: OpenSSL directly on the socket through a small BIO of ours (send() with MSG_NOSIGNAL and
// MSG_MORE; received bytes buffered 256 KiB at a time: one recv() per many records), with no
// BIO pair and no event loop in between (asio::ssl's cost a copy each way and a wakeup per
// record; docs/migration.md has the numbers). Kernel TLS is not used: the kernels here are built
// without CONFIG_TLS.
// TLS 1.3 only; both sides present a certificate signed by the CA given with --tls-ca and
// verify the peer's against it (verify_peer | fail_if_no_peer_cert). Host names are not checked:
// membership in the operator's CA is the authorization (docs/migration.md says how to make the
// CA and host certificates). A peer that fails the handshake is refused before any migration
// state exists.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "common/result.h"
#include "proto/migrate.pb.h"

namespace godwit::migrate {

struct TlsConfig {
  std::string cert;  // PEM certificate chain of this host
  std::string key;   // PEM private key
  std::string ca;    // PEM CA that signed the peers' certificates
  bool insecure = false;  // plain TCP (both sides must agree)
};

// Limits: a frame header above this is corrupt, as is a payload above kMaxPayload.
inline constexpr uint32_t kMaxHeader = 1 << 20;
inline constexpr uint64_t kMaxPayload = 64ull << 20;

class Channel {
 public:
  ~Channel();
  // Connects to "HOST:PORT" ("[v6]:PORT" too) and runs the client handshake.
  static Result<std::unique_ptr<Channel>> Connect(const std::string& host_port,
                                                  const TlsConfig& tls, double timeout_s);
  // Takes an accepted socket (the fd is owned from now on) and runs the server handshake.
  static Result<std::unique_ptr<Channel>> Accept(int fd, const TlsConfig& tls, double timeout_s);

  // One frame, with an optional raw payload.
  Result<void> Send(const mig::Frame& frame, const void* payload = nullptr, size_t len = 0);
  // Raw bytes on the stream, outside any frame (fault injection: a corrupt frame).
  Result<void> SendRaw(const void* data, size_t len);
  // The next frame; *payload receives its raw bytes (cleared when none). Errors: kPeer for a
  // closed connection, a timeout or a corrupt frame (naming what and the stream offset).
  Result<void> Recv(mig::Frame* frame, std::string* payload);
  void set_timeout(double seconds) { timeout_s_ = seconds; }
  double timeout() const { return timeout_s_; }
  const std::string& peer() const { return peer_; }
  bool secure() const;
  // The TLS suite agreed on (OpenSSL's default: "TLS_AES_256_GCM_SHA384"); empty without TLS.
  std::string cipher() const;
  uint64_t bytes_sent() const { return sent_; }
  uint64_t bytes_received() const { return received_; }
  // Shuts the stream down (TLS close_notify when it can); idempotent.
  void Close();
  // From another thread: cuts the connection (shutdown, no close_notify): the call in progress
  // and every later one fail at once. The fd stays open until Close.
  void Interrupt();

  struct Impl;

 private:
  explicit Channel(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  double timeout_s_ = 30;
  std::string peer_;
  uint64_t sent_ = 0;
  uint64_t received_ = 0;
};

// Splits "HOST:PORT" / "[V6]:PORT".
Result<std::pair<std::string, uint16_t>> SplitHostPort(const std::string& s);

// Short description of a frame's kind ("hello", "file", ...), for errors and logs.
const char* FrameKind(const mig::Frame& f);

}  // namespace godwit::migrate
