// Stream throughput on loopback, for scripts/bench.d/60-migrate.sh: the limits a migration's
// pre-copy stream is measured against, and the stream itself.
//
//   migrate_bench tcp MIB                 plain TCP, 4 MiB writes, one reader (the raw limit)
//   migrate_bench tls MIB CERTDIR         TLS 1.3 (asio::ssl, the same OpenSSL setup as godwit),
//                                         4 MiB writes of raw bytes: loopback TLS
//   migrate_bench chan MIB CERTDIR        godwit's TLS Channel alone: 4 MiB frames of raw bytes
//                                         from memory into memory (no files, no checksums)
//   migrate_bench stream MIB CERTDIR      godwit's stream: a page file of MIB random MiB,
//                                         staged as a migration stages it (migrate/staging.h),
//                                         sent with FileSender over a TLS Channel and written by
//                                         a FileReceiver into another staging directory
// Prints {"mode":..., "bytes":..., "seconds":..., "bytes_per_s":...}.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <asio.hpp>
#include <asio/ssl.hpp>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <thread>

#include "common/fs.h"
#include "migrate/image_stream.h"
#include "migrate/staging.h"
#include "migrate/wire.h"

using namespace godwit;
using Clock = std::chrono::steady_clock;

namespace {

int Listen(uint16_t* port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 || listen(fd, 4) < 0) return -1;
  socklen_t l = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
  *port = ntohs(a.sin_port);
  return fd;
}

// CPU seconds of the whole process (both ends), user and system: on a shared machine the
// wall-clock rate follows the load of other processes; this does not.
double CpuSeconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + (u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
}
double cpu0 = 0;      // CpuSeconds() when the timed part started
double cpu_end = -1;  // and when it ended, if not at Print

void Print(const char* mode, uint64_t bytes, double s) {
  double cpu = (cpu_end >= 0 ? cpu_end : CpuSeconds()) - cpu0;
  printf("{\"mode\":\"%s\",\"bytes\":%llu,\"seconds\":%.4f,\"bytes_per_s\":%.0f,"
         "\"cpu_seconds\":%.4f,\"bytes_per_cpu_s\":%.0f}\n",
         mode, static_cast<unsigned long long>(bytes), s, bytes / s, cpu, bytes / cpu);
}

migrate::TlsConfig Tls(const std::string& dir, const char* host) {
  return {dir + "/" + host + ".pem", dir + "/" + host + ".key", dir + "/ca.pem", false};
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) return 2;
  std::string mode = argv[1];
  uint64_t total = strtoull(argv[2], nullptr, 10) << 20;
  std::string certs = argc > 3 ? argv[3] : "";
  uint16_t port = 0;
  int lfd = Listen(&port);
  if (lfd < 0) return 1;
  std::string buf(4 << 20, '\0');
  std::mt19937_64 rng(1);
  for (size_t i = 0; i + 8 <= buf.size(); i += 8) {
    uint64_t x = rng();
    memcpy(&buf[i], &x, 8);
  }
  if (mode == "tcp") {
    std::thread rx([&] {
      int c = accept(lfd, nullptr, nullptr);
      std::string r(4 << 20, '\0');
      while (read(c, r.data(), r.size()) > 0) {
      }
      close(c);
    });
    int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(port);
    if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return 1;
    cpu0 = CpuSeconds();
    auto t0 = Clock::now();
    for (uint64_t sent = 0; sent < total;) {
      ssize_t n = write(s, buf.data(), buf.size());
      if (n <= 0) return 1;
      sent += n;
    }
    shutdown(s, SHUT_WR);
    rx.join();
    Print("tcp", total, std::chrono::duration<double>(Clock::now() - t0).count());
    close(s);
    return 0;
  }
  if (mode == "tls") {
    asio::io_context io;
    std::thread rx([&] {
      asio::ssl::context ctx(asio::ssl::context::tls_server);
      SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_3_VERSION);
      auto t = Tls(certs, "host-b");
      ctx.use_certificate_chain_file(t.cert);
      ctx.use_private_key_file(t.key, asio::ssl::context::pem);
      ctx.load_verify_file(t.ca);
      ctx.set_verify_mode(asio::ssl::verify_peer | asio::ssl::verify_fail_if_no_peer_cert);
      asio::io_context sio;
      asio::ip::tcp::socket sock(sio);
      sock.assign(asio::ip::tcp::v4(), accept(lfd, nullptr, nullptr));
      asio::ssl::stream<asio::ip::tcp::socket&> s(sock, ctx);
      asio::error_code ec;
      s.handshake(asio::ssl::stream_base::server, ec);
      std::string r(4 << 20, '\0');
      uint64_t got = 0;
      while (got < total) {
        size_t n = s.read_some(asio::buffer(r), ec);
        if (ec) break;
        got += n;
      }
    });
    asio::ssl::context ctx(asio::ssl::context::tls_client);
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_3_VERSION);
    auto t = Tls(certs, "host-a");
    ctx.use_certificate_chain_file(t.cert);
    ctx.use_private_key_file(t.key, asio::ssl::context::pem);
    ctx.load_verify_file(t.ca);
    ctx.set_verify_mode(asio::ssl::verify_peer);
    asio::ip::tcp::socket sock(io);
    asio::error_code ec;
    sock.connect({asio::ip::make_address("127.0.0.1"), port}, ec);
    asio::ssl::stream<asio::ip::tcp::socket&> s(sock, ctx);
    s.handshake(asio::ssl::stream_base::client, ec);
    if (ec) return 1;
    cpu0 = CpuSeconds();
    auto t0 = Clock::now();
    for (uint64_t sent = 0; sent < total; sent += buf.size()) asio::write(s, asio::buffer(buf), ec);
    rx.join();
    Print("tls", total, std::chrono::duration<double>(Clock::now() - t0).count());
    return 0;
  }
  if (mode == "chan") {
    std::thread rx([&] {
      auto ch = migrate::Channel::Accept(accept(lfd, nullptr, nullptr), Tls(certs, "host-b"), 30);
      if (!ch.ok()) return;
      mig::Frame f;
      std::string p;
      uint64_t got = 0;
      while (got < total && (*ch)->Recv(&f, &p).ok()) got += p.size();
    });
    auto ch = migrate::Channel::Connect("127.0.0.1:" + std::to_string(port), Tls(certs, "host-a"), 30);
    if (!ch.ok()) return 1;
    mig::Frame f;
    f.mutable_file()->set_name("pages.img");
    cpu0 = CpuSeconds();
    auto t0 = Clock::now();
    bool ok = true;
    for (uint64_t sent = 0; ok && sent < total; sent += buf.size())
      ok = (*ch)->Send(f, buf.data(), buf.size()).ok();
    rx.join();
    if (!ok) return 1;
    Print("chan", total, std::chrono::duration<double>(Clock::now() - t0).count());
    return 0;
  }
  if (mode == "stream") {
    // Staged as a migration stages its files (migrate/staging.h): in the huge-page tmpfs when
    // there is one, else in /dev/shm.
    std::string base = migrate::PrivateTmpfs().empty() ? "/dev/shm" : migrate::PrivateTmpfs();
    std::string src = base + "/godwit-mbench-src." + std::to_string(getpid());
    std::string dst = base + "/godwit-mbench-dst." + std::to_string(getpid());
    (void)fs::MkdirAll(src, 0700);
    {
      FILE* f = fopen((src + "/pages.img").c_str(), "w");
      for (uint64_t w = 0; w < total; w += buf.size()) fwrite(buf.data(), 1, buf.size(), f);
      fclose(f);
    }
    double secs = 0;
    std::thread rx([&] {
      auto ch = migrate::Channel::Accept(accept(lfd, nullptr, nullptr), Tls(certs, "host-b"), 30);
      if (!ch.ok()) return;
      migrate::FileReceiver r(dst);
      mig::Frame f;
      std::string p;
      while ((*ch)->Recv(&f, &p).ok() && f.has_file()) {
        bool last = f.file().last();
        if (!r.ApplyAsync(f.file(), &p).ok()) break;
        if (last) break;
      }
      (void)r.Drain();  // as the destination does at a round's end
    });
    auto ch = migrate::Channel::Connect("127.0.0.1:" + std::to_string(port), Tls(certs, "host-a"), 30);
    if (!ch.ok()) return 1;
    migrate::FileSender tx(ch->get(), mig::DIR_TREE, src, /*zstd=*/false);
    cpu0 = CpuSeconds();
    auto t0 = Clock::now();
    auto r = tx.Send("pages.img");
    rx.join();
    secs = std::chrono::duration<double>(Clock::now() - t0).count();
    cpu_end = CpuSeconds();
    (void)fs::RemoveAll(src);
    (void)fs::RemoveAll(dst);
    if (!r.ok()) return 1;
    Print("stream", total, secs);
    return 0;
  }
  return 2;
}
