// The migration stream (migrate/wire.h, migrate/image_stream.h) over real sockets and real TLS:
// certificates from scripts/migration-certs, a second CA for the wrong-CA cases, frames with and
// without payloads, corrupt frames, a peer that says nothing, and files carried from a directory
// to a staging directory byte for byte.
#include <arpa/inet.h>
#include <fcntl.h>
#include <poll.h>
#include <linux/rtnetlink.h>
#include <linux/neighbour.h>
#include <sched.h>
#include <sys/wait.h>
#include <linux/if_packet.h>
#include <linux/if_ether.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <optional>
#include <random>
#include <set>
#include <thread>
#include <vector>

#include "common/fs.h"
#include "images/crc32c.h"
#include "images/image.h"
#include "common/priority.h"
#include "common/scope_exit.h"
#include "container_test_util.h"
#include "gtest/gtest.h"
#include "migrate/dest.h"
#include "migrate/image_stream.h"
#include "migrate/packet_hold.h"
#include "migrate/source.h"
#include "migrate/staging.h"
#include "migrate/wire.h"
#include "runtime/network.h"
#include "tests/scratch_netns.h"

namespace godwit::migrate {
namespace {

std::string Run(const std::string& cmd) {
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return "";
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int st = pclose(p);
  if (st != 0) ADD_FAILURE() << cmd << " exited " << st << ": " << out;
  return out;
}

class Certs {
 public:
  Certs() {
    char tmpl[] = "/tmp/godwit-certs-XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::string script = std::string(GODWIT_SOURCE_DIR) + "/scripts/migration-certs";
    Run(script + " " + dir_ + " hosta hostb");
    Run(script + " " + dir_ + "/other intruder");
  }
  ~Certs() { (void)fs::RemoveAll(dir_); }
  TlsConfig For(const std::string& host) const {
    return {dir_ + "/" + host + ".pem", dir_ + "/" + host + ".key", dir_ + "/ca.pem", false};
  }
  // A certificate from another CA, which trusts only its own CA.
  TlsConfig Intruder() const {
    return {dir_ + "/other/intruder.pem", dir_ + "/other/intruder.key", dir_ + "/other/ca.pem",
            false};
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

const Certs& TestCerts() {
  static Certs c;  // removed at exit
  return c;
}

// A listening socket on 127.0.0.1, any port.
struct Listener {
  int fd = -1;
  uint16_t port = 0;
  Listener() {
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    EXPECT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    EXPECT_EQ(listen(fd, 8), 0);
    socklen_t l = sizeof(a);
    getsockname(fd, reinterpret_cast<sockaddr*>(&a), &l);
    port = ntohs(a.sin_port);
  }
  ~Listener() { close(fd); }
  std::string addr() const { return "127.0.0.1:" + std::to_string(port); }
};

// Runs server(channel-or-error) on an accepted connection in a thread while the test is client.
struct Server {
  std::thread t;
  Server(Listener& l, TlsConfig tls,
         std::function<void(Result<std::unique_ptr<Channel>>)> body) {
    t = std::thread([&l, tls, body] {
      int c = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
      body(Channel::Accept(c, tls, 5));
    });
  }
  ~Server() { t.join(); }
};

TEST(MigrateWire, MutualTlsFramesAndPayloads) {
  Listener l;
  std::string big(3 << 20, '\0');
  std::mt19937 rng(7);
  for (auto& ch : big) ch = static_cast<char>(rng());
  {
    Server s(l, TestCerts().For("hostb"), [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok()) << ch.error().to_string();
      EXPECT_TRUE((*ch)->secure());
      EXPECT_EQ((*ch)->cipher().rfind("TLS_AES_", 0), 0u) << (*ch)->cipher();  // TLS 1.3, AES-GCM
      mig::Frame f;
      std::string p;
      ASSERT_TRUE((*ch)->Recv(&f, &p).ok());
      EXPECT_TRUE(f.has_hello());
      EXPECT_EQ(f.hello().container_id(), "c1");
      EXPECT_TRUE(p.empty());
      ASSERT_TRUE((*ch)->Recv(&f, &p).ok());
      ASSERT_TRUE(f.has_file());
      EXPECT_EQ(p, big);
      mig::Frame w;
      w.mutable_welcome()->set_accepted(true);
      ASSERT_TRUE((*ch)->Send(w).ok());
    });
    auto c = Channel::Connect(l.addr(), TestCerts().For("hosta"), 5);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    mig::Frame f;
    f.mutable_hello()->set_container_id("c1");
    ASSERT_TRUE((*c)->Send(f).ok());
    mig::Frame d;
    d.mutable_file()->set_name("pages-1.img");
    ASSERT_TRUE((*c)->Send(d, big.data(), big.size()).ok());
    std::string p;
    ASSERT_TRUE((*c)->Recv(&f, &p).ok());
    EXPECT_TRUE(f.has_welcome());
    EXPECT_TRUE(f.welcome().accepted());
    EXPECT_GT((*c)->bytes_sent(), big.size());
    EXPECT_EQ((*c)->cipher().rfind("TLS_AES_", 0), 0u) << (*c)->cipher();
  }
}

TEST(MigrateWire, WrongCaRefusedBothWays) {
  for (int dir = 0; dir < 2; ++dir) {
    Listener l;
    bool server_failed = false;
    {
      TlsConfig srv = dir == 0 ? TestCerts().For("hostb") : TestCerts().Intruder();
      TlsConfig cli = dir == 0 ? TestCerts().Intruder() : TestCerts().For("hosta");
      Server s(l, srv, [&](Result<std::unique_ptr<Channel>> ch) { server_failed = !ch.ok(); });
      auto c = Channel::Connect(l.addr(), cli, 5);
      // TLS 1.3: the client may finish its handshake before the server rejects its
      // certificate; then the first read fails.
      if (c.ok()) {
        mig::Frame f;
        std::string p;
        auto r = (*c)->Recv(&f, &p);
        EXPECT_FALSE(r.ok());
        if (!r.ok()) {
          EXPECT_EQ(r.error().kind(), ErrorKind::kPeer);
        }
      } else {
        EXPECT_EQ(c.error().kind(), ErrorKind::kPeer) << c.error().to_string();
      }
    }
    EXPECT_TRUE(server_failed) << "direction " << dir;
  }
}

TEST(MigrateWire, PlainClientAgainstTlsServerFails) {
  Listener l;
  bool server_failed = false;
  {
    Server s(l, TestCerts().For("hostb"),
             [&](Result<std::unique_ptr<Channel>> ch) { server_failed = !ch.ok(); });
    TlsConfig plain;
    plain.insecure = true;
    auto c = Channel::Connect(l.addr(), plain, 5);
    ASSERT_TRUE(c.ok());
    mig::Frame f;
    f.mutable_hello()->set_container_id("x");
    (void)(*c)->Send(f);
    std::string p;
    EXPECT_FALSE((*c)->Recv(&f, &p).ok());
  }
  EXPECT_TRUE(server_failed);
}

TEST(MigrateWire, CorruptFrameAndSilentPeer) {
  Listener l;
  {
    TlsConfig plain;
    plain.insecure = true;
    Server s(l, plain, [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok());
      mig::Frame f;
      std::string p;
      auto r = (*ch)->Recv(&f, &p);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.error().kind(), ErrorKind::kPeer);
      EXPECT_NE(r.error().message().find("corrupt frame"), std::string::npos)
          << r.error().to_string();
      // Every later call fails too.
      EXPECT_FALSE((*ch)->Recv(&f, &p).ok());
    });
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(l.port);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    const char junk[16] = "GET / HTTP/1.1\r";
    ASSERT_EQ(write(fd, junk, sizeof(junk)), 16);
    char c;
    (void)read(fd, &c, 1);  // until the server closes
    close(fd);
  }
  Listener l2;
  {
    TlsConfig plain;
    plain.insecure = true;
    int fd = -1;
    Server s(l2, plain, [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok());
      (*ch)->set_timeout(0.3);
      mig::Frame f;
      std::string p;
      auto r = (*ch)->Recv(&f, &p);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.error().sys_errno(), ETIMEDOUT) << r.error().to_string();
    });
    fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = htons(l2.port);
    ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    char c;
    (void)read(fd, &c, 1);  // the server gives up and closes
    close(fd);
  }
}

TEST(MigrateWire, FilesCrossIntactAndBadNamesRefused) {
  char t1[] = "/tmp/godwit-wire-src-XXXXXX";
  char t2[] = "/tmp/godwit-wire-dst-XXXXXX";
  std::string src = mkdtemp(t1), dst = mkdtemp(t2);
  // One compressible, one random, one empty, one over a chunk.
  std::string zeros(5 << 20, 'a'), rnd(9 << 20, '\0');
  std::mt19937 rng(3);
  for (auto& ch : rnd) ch = static_cast<char>(rng());
  ASSERT_TRUE(fs::WriteFile(src + "/a.img", zeros).ok());
  ASSERT_TRUE(fs::WriteFile(src + "/b.img", rnd).ok());
  ASSERT_TRUE(fs::WriteFile(src + "/empty.img", "").ok());
  // Adaptive: random chunks then compressible ones in one file (4 MiB chunks).
  std::string mixed = rnd.substr(0, 8 << 20) + std::string(8 << 20, 'b');
  ASSERT_TRUE(fs::WriteFile(src + "/c.img", mixed).ok());
  Listener l;
  {
    TlsConfig plain;
    plain.insecure = true;
    Server s(l, plain, [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok());
      FileReceiver rx(dst);
      mig::Frame f;
      std::string p;
      int bad = 0;
      for (;;) {
        ASSERT_TRUE((*ch)->Recv(&f, &p).ok());
        if (f.has_done()) break;
        ASSERT_TRUE(f.has_file());
        auto r = rx.Apply(f.file(), p);
        if (f.file().name() == "../evil" || f.file().name() == "crc.img") {
          EXPECT_FALSE(r.ok());
          bad++;
        } else {
          EXPECT_TRUE(r.ok()) << r.error().to_string();
        }
      }
      EXPECT_EQ(bad, 2);
      EXPECT_EQ(rx.open_files(), 0u);
    });
    auto c = Channel::Connect(l.addr(), plain, 5);
    ASSERT_TRUE(c.ok());
    FileSender tx(c->get(), mig::DIR_TREE, src, /*zstd=*/true);
    ASSERT_TRUE(tx.Send("a.img").ok());
    ASSERT_TRUE(tx.Send("b.img").ok());
    ASSERT_TRUE(tx.Send("empty.img").ok());
    EXPECT_LT(tx.wire_bytes(), zeros.size() / 10 + rnd.size() + 4096);  // 'a's compressed
    // Adaptive: the random chunks go raw (a 64 KiB sample said so), the 'b's compressed.
    FileSender tx2(c->get(), mig::DIR_TREE, src, /*zstd=*/true, /*adaptive=*/true);
    ASSERT_TRUE(tx2.Send("c.img").ok());
    EXPECT_GE(tx2.wire_bytes(), 8u << 20);
    EXPECT_LT(tx2.wire_bytes(), (8u << 20) + (8u << 20) / 10);
    mig::Frame f;
    f.mutable_file()->set_dir(mig::DIR_TREE);
    f.mutable_file()->set_name("../evil");
    f.mutable_file()->set_length(1);
    f.mutable_file()->set_last(true);
    f.mutable_file()->set_crc32c(0);
    ASSERT_TRUE((*c)->Send(f, "x", 1).ok());
    f.mutable_file()->set_name("crc.img");
    f.mutable_file()->set_crc32c(12345);  // wrong
    ASSERT_TRUE((*c)->Send(f, "x", 1).ok());
    mig::Frame d;
    d.mutable_done();
    ASSERT_TRUE((*c)->Send(d).ok());
  }
  EXPECT_EQ(*fs::ReadFile(dst + "/tree/a.img"), zeros);
  EXPECT_EQ(*fs::ReadFile(dst + "/tree/b.img"), rnd);
  EXPECT_EQ(*fs::ReadFile(dst + "/tree/empty.img"), "");
  EXPECT_EQ(*fs::ReadFile(dst + "/tree/c.img"), mixed);
  EXPECT_FALSE(fs::Exists(dst + "/evil"));
  EXPECT_FALSE(fs::Exists(dst + "/tree/crc.img.part"));
  (void)fs::RemoveAll(src);
  (void)fs::RemoveAll(dst);
}

// Under TLS: a payload far above the socket buffers (the sender waits for room, the receiver for
// records), a corrupt frame sent through the TLS layer, and a peer closing inside a frame.
TEST(MigrateWire, TlsLargePayloadCorruptFrameAndTruncation) {
  Listener l;
  std::string big(40 << 20, '\0');
  std::mt19937_64 rng(11);
  for (size_t i = 0; i + 8 <= big.size(); i += 8) {
    uint64_t v = rng();
    memcpy(&big[i], &v, 8);
  }
  {
    Server s(l, TestCerts().For("hostb"), [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok()) << ch.error().to_string();
      mig::Frame f;
      std::string p;
      ASSERT_TRUE((*ch)->Recv(&f, &p).ok());
      ASSERT_TRUE(f.has_file());
      EXPECT_EQ(f.file().name(), "big.img");
      EXPECT_TRUE(p == big);
      auto r = (*ch)->Recv(&f, &p);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.error().kind(), ErrorKind::kPeer);
      EXPECT_NE(r.error().message().find("corrupt frame"), std::string::npos)
          << r.error().to_string();
      EXPECT_FALSE((*ch)->Recv(&f, &p).ok());
    });
    auto c = Channel::Connect(l.addr(), TestCerts().For("hosta"), 5);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    EXPECT_TRUE((*c)->secure());
    mig::Frame f;
    f.mutable_file()->set_name("big.img");
    ASSERT_TRUE((*c)->Send(f, big.data(), big.size()).ok());
    const char junk[16] = "GET / HTTP/1.1\r";
    ASSERT_TRUE((*c)->SendRaw(junk, sizeof(junk)).ok());
  }
  Listener l2;
  {
    Server s(l2, TestCerts().For("hostb"), [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok()) << ch.error().to_string();
      mig::Frame f;
      std::string p;
      auto r = (*ch)->Recv(&f, &p);
      ASSERT_FALSE(r.ok());
      EXPECT_EQ(r.error().kind(), ErrorKind::kPeer);
      EXPECT_NE(r.error().message().find("closed by the peer"), std::string::npos)
          << r.error().to_string();
    });
    auto c = Channel::Connect(l2.addr(), TestCerts().For("hosta"), 5);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    // A header announcing 1 MiB of payload, 100 bytes of it, then the end of the stream.
    struct {
      uint32_t magic, header_len;
      uint64_t payload_len;
    } h{0x464d5747, 0, 1 << 20};
    ASSERT_TRUE((*c)->SendRaw(&h, sizeof(h)).ok());
    std::string some(100, 'x');
    ASSERT_TRUE((*c)->SendRaw(some.data(), some.size()).ok());
    (*c)->Close();
  }
}

// A TLS handshake with a peer that says nothing ends at the timeout.
TEST(MigrateWire, TlsHandshakeTimesOut) {
  Listener l;
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = htons(l.port);
  ASSERT_EQ(connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  int c = accept4(l.fd, nullptr, nullptr, SOCK_CLOEXEC);
  ASSERT_GE(c, 0);
  auto t0 = std::chrono::steady_clock::now();
  auto ch = Channel::Accept(c, TestCerts().For("hostb"), 0.3);
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_FALSE(ch.ok());
  EXPECT_EQ(ch.error().kind(), ErrorKind::kPeer);
  EXPECT_EQ(ch.error().sys_errno(), ETIMEDOUT) << ch.error().to_string();
  EXPECT_NE(ch.error().message().find("TLS handshake"), std::string::npos);
  EXPECT_GE(s, 0.29);
  EXPECT_LT(s, 3.0);
  close(fd);
}

// The receiver's writer thread with recycled buffers (ApplyAsync(f, std::string*)), over TLS:
// files of sizes around the 256 KiB chunk and the 64 KiB mapping threshold cross intact, the
// buffers come back, and a piece with a wrong checksum fails the receiver with a clear error.
// The receiving end of the file tests: every file frame written (on the writer thread) until a
// RoundEnd; whether a received piece's buffer came back for reuse (ApplyAsync's recycling).
void ReceiveFilesUntilRoundEnd(Channel& ch, FileReceiver& rx, bool* recycled = nullptr) {
  mig::Frame f;
  std::string p;
  for (;;) {
    ASSERT_TRUE(ch.Recv(&f, &p).ok());
    if (f.has_round_end()) break;
    ASSERT_TRUE(f.has_file());
    ASSERT_TRUE(rx.ApplyAsync(f.file(), &p).ok());
    if (recycled && p.capacity() >= (256u << 10)) *recycled = true;
  }
  ASSERT_TRUE(rx.Drain().ok());
  EXPECT_EQ(rx.open_files(), 0u);
}

TEST(MigrateWire, FilesCrossAsyncWithRecycledBuffers) {
  char t1[] = "/tmp/godwit-wire-src-XXXXXX";
  char t2[] = "/tmp/godwit-wire-dst-XXXXXX";
  std::string src = mkdtemp(t1), dst = mkdtemp(t2);
  std::mt19937 rng(5);
  std::vector<std::pair<std::string, std::string>> files;
  for (size_t n : {size_t{0}, size_t{1}, size_t{(64 << 10) - 1}, size_t{256 << 10},
                   size_t{(256 << 10) + 1}, size_t{(9 << 20) + 4097}}) {
    std::string d(n, '\0');
    for (auto& ch : d) ch = static_cast<char>(rng());
    files.emplace_back("f" + std::to_string(n) + ".img", d);
    ASSERT_TRUE(fs::WriteFile(src + "/" + files.back().first, d).ok());
  }
  Listener l;
  bool recycled = false;
  std::string bad_error;
  {
    Server s(l, TestCerts().For("hostb"), [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok()) << ch.error().to_string();
      FileReceiver rx(dst);
      ReceiveFilesUntilRoundEnd(**ch, rx, &recycled);
      if (::testing::Test::HasFatalFailure()) return;
      mig::Frame f;
      std::string p;
      // Then a piece whose checksum is wrong: refused by the writer, reported by Drain.
      ASSERT_TRUE((*ch)->Recv(&f, &p).ok());
      ASSERT_TRUE(f.has_file());
      auto a = rx.ApplyAsync(f.file(), &p);
      auto d = a.ok() ? rx.Drain() : a;
      ASSERT_FALSE(d.ok());
      EXPECT_EQ(d.error().kind(), ErrorKind::kPeer);
      bad_error = d.error().message();
    });
    auto c = Channel::Connect(l.addr(), TestCerts().For("hosta"), 5);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    FileSender tx(c->get(), mig::DIR_TREE, src, /*zstd=*/false);
    for (auto& [name, data] : files) ASSERT_TRUE(tx.Send(name).ok()) << name;
    EXPECT_EQ(tx.files(), static_cast<int>(files.size()));
    mig::Frame e;
    e.mutable_round_end()->set_round(0);
    ASSERT_TRUE((*c)->Send(e).ok());
    mig::Frame f;
    f.mutable_file()->set_dir(mig::DIR_TREE);
    f.mutable_file()->set_name("crc.img");
    f.mutable_file()->set_length(5);
    f.mutable_file()->set_last(true);
    f.mutable_file()->set_crc32c(12345);  // wrong
    ASSERT_TRUE((*c)->Send(f, "hello", 5).ok());
  }
  EXPECT_TRUE(recycled);
  EXPECT_NE(bad_error.find("crc.img at offset 0: payload checksum mismatch"), std::string::npos)
      << bad_error;
  for (auto& [name, data] : files) {
    auto got = fs::ReadFile(dst + "/tree/" + name);
    ASSERT_TRUE(got.ok()) << name;
    EXPECT_TRUE(*got == data) << name;
  }
  (void)fs::RemoveAll(src);
  (void)fs::RemoveAll(dst);
}

// A round's page blob goes in pieces while it is written (ForwardingSink's on_piece, FileSender's
// SendRange): every kStreamPiece written through, each piece freed here once sent, the rest at
// Close; after an external write (Output::ExtendExternal) no more pieces until Close. Files the
// predicate does not name go whole at Close. The peer's copies are byte for byte the same.
TEST(MigrateWire, RoundBlobsCrossInPiecesWhileWritten) {
  char t1[] = "/tmp/godwit-wire-src-XXXXXX";
  char t2[] = "/tmp/godwit-wire-dst-XXXXXX";
  std::string src = mkdtemp(t1), dst = mkdtemp(t2);
  ScopeExit rm([&] {
    (void)fs::RemoveAll(src);
    (void)fs::RemoveAll(dst);
  });
  std::mt19937 rng(7);
  auto random = [&](size_t n) {
    std::string d(n, '\0');
    for (auto& ch : d) ch = static_cast<char>(rng());
    return d;
  };
  const std::string blob = random(40 << 20);        // written in 1 MiB pieces
  const std::string ext_head = random(20 << 20);    // then an external write, then more
  const std::string ext = random(1 << 20);
  const std::string ext_tail = random(10 << 20);
  const std::string small = random(3000);
  Listener l;
  {
    Server s(l, TestCerts().For("hostb"), [&](Result<std::unique_ptr<Channel>> ch) {
      ASSERT_TRUE(ch.ok()) << ch.error().to_string();
      FileReceiver rx(dst);
      ReceiveFilesUntilRoundEnd(**ch, rx);
    });
    auto c = Channel::Connect(l.addr(), TestCerts().For("hosta"), 5);
    ASSERT_TRUE(c.ok()) << c.error().to_string();
    FileSender tx(c->get(), mig::DIR_TREE, src, /*zstd=*/false);
    struct Piece {
      std::string name;
      uint64_t from, to;
      bool last;
      uint64_t allocated_after;  // the file's blocks once the piece was sent and freed
    };
    std::vector<Piece> pieces;
    std::vector<std::string> whole;
    auto inner = images::OpenDirSink(src, true);
    ASSERT_TRUE(inner.ok());
    auto sink = ForwardingSink(
        std::move(*inner),
        [&](const std::string& n) -> Result<void> {
          whole.push_back(n);
          return tx.Send(n);
        },
        [&](const std::string& n, uint64_t from, uint64_t to, bool last) -> Result<void> {
          TRY(tx.SendRange(n, from, to, last, true));
          struct stat st;
          if (stat((src + "/" + n).c_str(), &st) < 0) return Errno("stat %s", n.c_str());
          pieces.push_back({n, from, to, last, static_cast<uint64_t>(st.st_blocks) * 512});
          return Ok();
        },
        [](const std::string& n) { return n.rfind("pages-", 0) == 0; });
    {
      auto out = sink->Create("pages-1-pre0.img");
      ASSERT_TRUE(out.ok());
      for (size_t off = 0; off < blob.size(); off += 1 << 20)
        ASSERT_TRUE((*out)->Write(blob.data() + off, 1 << 20).ok());
      ASSERT_TRUE((*out)->Close().ok());
    }
    {
      auto out = sink->Create("pages-2-pre0.img");
      ASSERT_TRUE(out.ok());
      for (size_t off = 0; off < ext_head.size(); off += 1 << 20)
        ASSERT_TRUE((*out)->Write(ext_head.data() + off, 1 << 20).ok());
      auto at = (*out)->ExtendExternal(ext.size());
      ASSERT_TRUE(at.ok());
      EXPECT_EQ(*at, static_cast<int64_t>(ext_head.size()));
      ASSERT_EQ(pwrite((*out)->fd(), ext.data(), ext.size(), *at), ssize_t(ext.size()));
      (*out)->AddChecksum(images::Crc32c(0, ext.data(), ext.size()), ext.size());
      for (size_t off = 0; off < ext_tail.size(); off += 1 << 20)
        ASSERT_TRUE((*out)->Write(ext_tail.data() + off, 1 << 20).ok());
      ASSERT_TRUE((*out)->Close().ok());
    }
    {
      auto out = sink->Create("pagemap-1-pre0.img");
      ASSERT_TRUE(out.ok());
      ASSERT_TRUE((*out)->Write(small.data(), small.size()).ok());
      ASSERT_TRUE((*out)->Close().ok());
    }
    mig::Frame e;
    e.mutable_round_end()->set_round(0);
    ASSERT_TRUE((*c)->Send(e).ok());
    // The first blob: pieces of at least kStreamPiece, back to back from 0, each freed once
    // sent (what is allocated is what was written since), the rest at Close.
    uint64_t next = 0;
    int before_close = 0;
    for (const auto& pc : pieces) {
      if (pc.name != "pages-1-pre0.img") continue;
      EXPECT_EQ(pc.from, next);
      if (!pc.last) {
        before_close++;
        EXPECT_GE(pc.to - pc.from, kStreamPiece);
        EXPECT_EQ(pc.to % (4 << 20), 0u) << "pieces end on the sender's 4 MiB zstd regions";
        EXPECT_LT(pc.allocated_after, 2 * kStreamPiece) << "piece at " << pc.from;
        next = pc.to;
      } else {
        EXPECT_LT(pc.allocated_after, 1u << 20) << "the file was not freed as it went";
        next = blob.size();
      }
    }
    EXPECT_GE(before_close, 4) << "40 MiB written: pieces while it was written";
    EXPECT_EQ(next, blob.size());
    // The second: pieces only before the external write.
    for (const auto& pc : pieces)
      if (pc.name == "pages-2-pre0.img" && !pc.last) EXPECT_LE(pc.to, ext_head.size());
    ASSERT_FALSE(pieces.empty());
    EXPECT_TRUE(pieces.back().last);
    EXPECT_EQ(pieces.back().name, "pages-2-pre0.img");
    EXPECT_EQ(std::count(whole.begin(), whole.end(), "pagemap-1-pre0.img"), 1);
    EXPECT_EQ(std::count(whole.begin(), whole.end(), "pages-1-pre0.img"), 0);
    EXPECT_EQ(tx.files(), 3);
  }
  auto got = fs::ReadFile(dst + "/tree/pages-1-pre0.img");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(*got == blob);
  got = fs::ReadFile(dst + "/tree/pages-2-pre0.img");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(*got == ext_head + ext + ext_tail);
  got = fs::ReadFile(dst + "/tree/pagemap-1-pre0.img");
  ASSERT_TRUE(got.ok());
  EXPECT_TRUE(*got == small);
}

TEST(MigrateWire, HelloChecks) {
  DestOptions o;
  char t[] = "/tmp/godwit-hello-XXXXXX";
  o.root = mkdtemp(t);
  mig::Hello h;
  h.set_protocol_version(mig::VERSION_CURRENT);
  h.set_image_format_version(1);
  h.set_container_id("c1");
  h.set_rootfs("/");
  h.set_memory_bytes(1 << 20);
  EXPECT_EQ(CheckHello(h, o), "");
  mig::Hello v = h;
  v.set_protocol_version(99);
  EXPECT_NE(CheckHello(v, o).find("protocol version 99"), std::string::npos);
  v = h;
  v.set_image_format_version(42);
  EXPECT_NE(CheckHello(v, o).find("image format version 42"), std::string::npos);
  v = h;
  v.add_cpu_features("no-such-cpu-feature");
  EXPECT_NE(CheckHello(v, o).find("no-such-cpu-feature"), std::string::npos);
  v = h;
  v.add_kernel_features("no_such_kernel_feature");
  EXPECT_NE(CheckHello(v, o).find("no_such_kernel_feature"), std::string::npos);
  v = h;
  v.set_rootfs("/no/such/rootfs");
  EXPECT_NE(CheckHello(v, o).find("/no/such/rootfs"), std::string::npos);
  v = h;
  v.set_memory_bytes(1ull << 50);
  EXPECT_NE(CheckHello(v, o).find("no room"), std::string::npos);
  v = h;
  v.set_container_id("../x");
  EXPECT_NE(CheckHello(v, o).find("bad container id"), std::string::npos);
  ASSERT_TRUE(fs::MkdirAll(o.root + "/c1").ok());
  EXPECT_NE(CheckHello(h, o).find("already exists"), std::string::npos);
  (void)fs::RemoveAll(o.root);
}


// The switch's frame hold, end to end on a real veth: a datagram the host sends into a
// "container" namespace is held on the host end (as the source holds its clients' frames), then
// sent again through a FrameInjector and must be delivered again. The host's veth offloads the
// UDP checksum, so the held frame carries a partial one: unless completed, the receiver drops
// the replay (every held frame of a migration was lost that way).
TEST(PacketHold, HeldFramesAreDeliveredAgain) {
  const std::string h = StrFormat("gwh%d-h", getpid()), c = StrFormat("gwh%d-c", getpid());
  godwit::testing::ScratchNetns cleanup({h, c});
  ASSERT_EQ(std::system(("ip netns add " + h + " && ip netns add " + c + " && ip -n " + h +
                         " link add ph type veth peer name pc netns " + c + " && ip -n " + h +
                         " addr add 198.18.251.1/30 dev ph && ip -n " + c +
                         " addr add 198.18.251.2/30 dev pc && ip -n " + h +
                         " link set ph up && ip -n " + c + " link set pc up")
                            .c_str()),
            0);
  // Sockets and the hold are made in the namespaces (a socket stays where it was made); they
  // are used from here.
  using godwit::testing::InNetns;
  UniqueFd rx, tx;
  std::optional<PacketHold> hold;
  std::optional<FrameInjector> inj;
  InNetns(c, [&] { rx.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0)); });
  InNetns(h, [&] {
    tx.reset(::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0));
    auto ho = PacketHold::Start("ph");
    if (ho.ok()) hold.emplace(std::move(*ho));
    auto in = FrameInjector::Open("ph");
    if (in.ok()) inj.emplace(std::move(*in));
  });
  ASSERT_TRUE(rx.valid() && tx.valid() && hold && inj);
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(7000);
  ::inet_pton(AF_INET, "198.18.251.2", &to.sin_addr);
  ASSERT_EQ(::bind(rx.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0) << strerror(errno);
  auto receive = [&](std::string* got) {
    pollfd p{rx.get(), POLLIN, 0};
    if (::poll(&p, 1, 5000) != 1) return false;
    char buf[64];
    ssize_t n = ::recv(rx.get(), buf, sizeof(buf), 0);
    if (n <= 0) return false;
    got->assign(buf, static_cast<size_t>(n));
    return true;
  };
  const std::string msg = "held across the switch";
  ASSERT_EQ(::sendto(tx.get(), msg.data(), msg.size(), 0, reinterpret_cast<sockaddr*>(&to),
                     sizeof(to)),
            static_cast<ssize_t>(msg.size()));
  std::string got;
  ASSERT_TRUE(receive(&got));
  EXPECT_EQ(got, msg);
  std::string frames;
  auto n = hold->Drain(&frames);
  ASSERT_TRUE(n.ok()) << n.error().to_string();
  ASSERT_GE(*n, 1);  // the datagram (and the ARP request before it)
  auto sent = inj->Send(frames);
  ASSERT_TRUE(sent.ok()) << sent.error().to_string();
  EXPECT_EQ(*sent, *n);
  got.clear();
  ASSERT_TRUE(receive(&got)) << "the replayed datagram was not delivered";
  EXPECT_EQ(got, msg);
}

// The announcement a migration's destination sends at the commit (runtime::Announcement): a
// gratuitous ARP per IPv4 address, then an unsolicited neighbour advertisement per IPv6 address
// (global and link-local) of the interface. Seen on the segment, and taken by a neighbour: a peer
// that still has the address at another MAC (where the container ran before) moves its entry.
TEST(Announce, GratuitousArpAndUnsolicitedNaForEveryAddress) {
  const std::string h = StrFormat("gwa%d-h", getpid()), c = StrFormat("gwa%d-c", getpid());
  godwit::testing::ScratchNetns cleanup({h, c});
  // Every address made by hand and usable at once: no duplicate address detection, no link-local
  // of the kernel's (it, and the multicast route, come only once the link watcher saw the
  // carrier, asynchronously), so nothing here waits for a timer.
  const std::string nodad =
      " sysctl -qw net.ipv6.conf.default.accept_dad=0 net.ipv6.conf.all.accept_dad=0";
  ASSERT_EQ(std::system(("ip netns add " + h + " && ip netns add " + c + " && ip netns exec " + h +
                         nodad + " && ip netns exec " + c + nodad + " && ip -n " + h +
                         " link add ph address 02:00:00:00:00:05 type veth peer name pc netns " +
                         c + " && ip -n " + h + " link set ph addrgenmode none && ip -n " + c +
                         " link set pc addrgenmode none && ip -n " + h +
                         " addr add 198.18.252.5/24 dev ph && ip -n " + h +
                         " addr add 2001:db8:252::5/64 dev ph && ip -n " + h +
                         " addr add fe80::ff:fe00:5/64 dev ph && ip -n " + c +
                         " addr add 2001:db8:252::6/64 dev pc && ip -n " + h +
                         " link set ph up && ip -n " + c + " link set pc up && ip -n " + c +
                         " -6 route replace multicast ff00::/8 dev pc table local")
                            .c_str()),
            0);
  // A neighbour that knows the addresses at the MAC the container had before.
  for (const char* a : {"2001:db8:252::5", "fe80::ff:fe00:5"})
    ASSERT_EQ(std::system(StrFormat("ip -n %s -6 neigh replace %s lladdr 02:00:00:00:00:99 dev pc "
                                    "nud stale",
                                    c.c_str(), a)
                              .c_str()),
              0);
  // A process of the "container" (its network namespace is what the announcement joins): it says
  // when it is in there, and stays until the test closes `hold` (or dies).
  int ready[2], hold[2];
  ASSERT_EQ(pipe2(ready, O_CLOEXEC), 0);
  ASSERT_EQ(pipe2(hold, O_CLOEXEC), 0);
  pid_t in_h = fork();
  ASSERT_GE(in_h, 0);
  if (in_h == 0) {
    int ns = ::open(("/run/netns/" + h).c_str(), O_RDONLY | O_CLOEXEC);
    if (ns < 0 || ::setns(ns, CLONE_NEWNET) != 0) _exit(1);
    char b;
    (void)!::write(ready[1], "r", 1);
    ::close(hold[1]);
    (void)!::read(hold[0], &b, 1);
    _exit(0);
  }
  ::close(ready[1]);
  ::close(hold[0]);
  ScopeExit reap([&] {
    ::close(hold[1]);
    ::close(ready[0]);
    ::kill(in_h, SIGKILL);
    ::waitpid(in_h, nullptr, 0);
  });
  char b;
  ASSERT_EQ(::read(ready[0], &b, 1), 1);
  using godwit::testing::InNetns;
  UniqueFd cap, neigh;
  InNetns(c, [&] {
    cap.reset(::socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL)));
    neigh.reset(::socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE));
  });
  ASSERT_TRUE(cap.valid() && neigh.valid()) << strerror(errno);
  sockaddr_nl groups{};
  groups.nl_family = AF_NETLINK;
  groups.nl_groups = RTMGRP_NEIGH;
  ASSERT_EQ(::bind(neigh.get(), reinterpret_cast<sockaddr*>(&groups), sizeof(groups)), 0)
      << strerror(errno);

  auto an = runtime::Announcement::Prepare(in_h, "ph");
  ASSERT_TRUE(an.ok()) << an.error().to_string();
  EXPECT_EQ(an->addresses(), (std::vector<std::string>{"198.18.252.5", "2001:db8:252::5",
                                                       "fe80::ff:fe00:5"}));
  ASSERT_TRUE(an->Send(1).ok());

  // On the wire: the ARP, then one advertisement per IPv6 address, from the interface's MAC.
  const std::string mac("\x02\x00\x00\x00\x00\x05", 6);
  // Reads fd until done() or 5 s without anything, each datagram to on().
  auto receive = [](int fd, const std::function<bool()>& done,
                    const std::function<void(const std::string&)>& on) {
    char buf[8192];
    for (;;) {
      pollfd p{fd, POLLIN, 0};
      if (done() || ::poll(&p, 1, 5000) != 1) return;
      ssize_t n = ::recv(fd, buf, sizeof(buf), 0);
      if (n <= 0) return;
      on(std::string(buf, static_cast<size_t>(n)));
    }
  };
  std::vector<std::string> seen;
  receive(cap.get(), [&] { return seen.size() == 3; }, [&](const std::string& f) {
    if (f.size() < 14 || f.substr(6, 6) != mac) return;
    if (f.compare(12, 2, "\x08\x06", 2) == 0) {
      ASSERT_GE(f.size(), 42u);
      EXPECT_EQ(f.substr(0, 6), std::string(6, '\xff'));
      EXPECT_EQ(f.substr(22, 6), mac);                   // sender hardware address
      EXPECT_EQ(f.substr(28, 4), f.substr(38, 4));       // sender == target: gratuitous
      char ip[INET_ADDRSTRLEN];
      inet_ntop(AF_INET, f.data() + 28, ip, sizeof(ip));
      seen.push_back(ip);
    } else if (f.compare(12, 2, "\x86\xdd", 2) == 0 && f.size() >= 14 + 40 + 32 &&
               static_cast<uint8_t>(f[14 + 6]) == IPPROTO_ICMPV6 &&
               static_cast<uint8_t>(f[14 + 40]) == 136) {
      EXPECT_EQ(f.substr(0, 6), std::string("\x33\x33\x00\x00\x00\x01", 6));
      EXPECT_EQ(static_cast<uint8_t>(f[14 + 7]), 255);       // hop limit
      EXPECT_EQ(static_cast<uint8_t>(f[14 + 40 + 4]), 0x20);  // Override, not Solicited
      EXPECT_EQ(f.substr(14 + 40 + 26, 6), mac);               // target link-layer address
      char ip[INET6_ADDRSTRLEN];
      inet_ntop(AF_INET6, f.data() + 14 + 40 + 8, ip, sizeof(ip));
      seen.push_back(ip);
    }
  });
  EXPECT_EQ(seen, an->addresses());
  // The neighbour took them (a bad checksum or hop limit would have been dropped): its entries
  // point at the interface's MAC now. The kernel handles a frame after the capture saw it: its
  // neighbour notifications (subscribed before the send) say when.
  std::set<std::string> moved;
  receive(neigh.get(), [&] { return moved.size() == 2; }, [&](const std::string& msg) {
    int n = static_cast<int>(msg.size());
    for (auto* nh = reinterpret_cast<const nlmsghdr*>(msg.data());
         NLMSG_OK(nh, static_cast<unsigned>(n)); nh = NLMSG_NEXT(nh, n)) {
      if (nh->nlmsg_type != RTM_NEWNEIGH) continue;
      auto* nd = static_cast<ndmsg*>(NLMSG_DATA(nh));
      if (nd->ndm_family != AF_INET6) continue;
      std::string dst, ll;
      int len = static_cast<int>(RTM_PAYLOAD(nh));
      for (auto* a = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(nd) + NLMSG_ALIGN(sizeof(*nd)));
           RTA_OK(a, len); a = RTA_NEXT(a, len)) {
        if (a->rta_type == NDA_DST && RTA_PAYLOAD(a) == 16) {
          char ip[INET6_ADDRSTRLEN];
          inet_ntop(AF_INET6, RTA_DATA(a), ip, sizeof(ip));
          dst = ip;
        }
        if (a->rta_type == NDA_LLADDR) ll.assign(static_cast<char*>(RTA_DATA(a)), RTA_PAYLOAD(a));
      }
      if (ll == mac) moved.insert(dst);
    }
  });
  EXPECT_EQ(moved, (std::set<std::string>{"2001:db8:252::5", "fe80::ff:fe00:5"}));
}

// Staging (migrate/staging.h): a state root on a disk file system stages in /dev/shm, one of
// its own per root, gone with its last session; a tmpfs root stages in itself; no room in
// /dev/shm: the root.
TEST(Staging, MemoryBackedUnlessTheRootIsOrThereIsNoRoom) {
  struct statfs shm;
  ASSERT_EQ(statfs("/dev/shm", &shm), 0);
  if (static_cast<uint64_t>(shm.f_type) != TMPFS_MAGIC) GTEST_SKIP() << "/dev/shm is no tmpfs";
  const std::string disk = StrFormat("/var/tmp/godwit-staging-%d", getpid());
  ASSERT_OK(fs::MkdirAll(disk, 0700));
  struct statfs ds;
  ASSERT_EQ(statfs(disk.c_str(), &ds), 0);
  std::string got = ChooseStaging(disk, "incoming", 1 << 20);
  if (static_cast<uint64_t>(ds.f_type) == TMPFS_MAGIC) {
    EXPECT_EQ(got, disk + "/incoming");
  } else {
    EXPECT_EQ(got.rfind("/dev/shm/godwit-", 0), 0u) << got;
    EXPECT_EQ(got, StagingCandidates(disk, "incoming")[1]);
    // Two roots never share one; the same root finds its own again.
    EXPECT_NE(got, ChooseStaging(disk + "-other", "incoming", 1 << 20));
    EXPECT_EQ(got, ChooseStaging(disk + "/.", "incoming", 1 << 20));
    // More than /dev/shm holds: the root itself.
    EXPECT_EQ(ChooseStaging(disk, "incoming", 1ull << 62), disk + "/incoming");
    // A session's directory, then the base and its parent gone once empty (not before).
    ASSERT_OK(MakeStaging(got + "/c1.1"));
    ASSERT_OK(MakeStaging(got + "/c2.2"));
    ASSERT_OK(fs::RemoveAll(got + "/c1.1"));
    RemoveStagingIfEmpty(got);
    EXPECT_TRUE(fs::Exists(got + "/c2.2"));
    ASSERT_OK(fs::RemoveAll(got + "/c2.2"));
    RemoveStagingIfEmpty(got);
    EXPECT_FALSE(fs::Exists(got));
    EXPECT_FALSE(fs::Exists(got.substr(0, got.rfind('/'))));
  }
  ASSERT_OK(fs::RemoveAll(disk));
  // A tmpfs root: staged in itself.
  container::testing::TempDir t("staging");
  ASSERT_EQ(mount("tmpfs", t.path().c_str(), "tmpfs", 0, "size=16m"), 0) << strerror(errno);
  EXPECT_EQ(ChooseStaging(t.path(), "outgoing", 1 << 20), t.path() + "/outgoing");
}

// The images' own tmpfs (migrate/staging.h): a tmpfs with large folios, in no mount namespace
// (nothing to unmount on any exit), reached through a close-on-exec descriptor of this process.
TEST(Staging, ImagesGoToAHugePageTmpfsOfTheProcessOwn) {
  const std::string& p = PrivateTmpfs();
  ASSERT_FALSE(p.empty()) << "fsopen/fsmount of a tmpfs refused (see the log)";
  const std::string prefix = StrFormat("/proc/%d/fd/", getpid());
  ASSERT_EQ(p.rfind(prefix, 0), 0u) << p;
  int fd = atoi(p.c_str() + prefix.size());
  EXPECT_EQ(fcntl(fd, F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
  EXPECT_EQ(&PrivateTmpfs(), &p);  // mounted once
  struct statfs sf;
  ASSERT_EQ(statfs(p.c_str(), &sf), 0);
  EXPECT_EQ(static_cast<uint64_t>(sf.f_type), TMPFS_MAGIC);
  // Attached nowhere: no mount of this namespace has its id.
  auto info = fs::ReadFile(StrFormat("/proc/self/fdinfo/%d", fd));
  ASSERT_OK(info);
  size_t at = info->find("mnt_id:");
  ASSERT_NE(at, std::string::npos);
  int mnt_id = atoi(info->c_str() + at + 7);
  auto mounts = fs::ReadFile("/proc/self/mountinfo");
  ASSERT_OK(mounts);
  for (const auto& l : fs::Split(*mounts, '\n')) EXPECT_NE(atoi(l.c_str()), mnt_id) << l;

  const std::string base = HugeStaging("outgoing", 8 << 20);
  ASSERT_EQ(base, p + "/outgoing");
  EXPECT_EQ(HugeStaging("outgoing", 1ull << 62), "");  // more than it holds: not there
  const std::string dir = base + "/c.1";
  ASSERT_OK(MakeStaging(dir));
  EXPECT_EQ(StagingKind(dir), "huge-tmpfs");
  EXPECT_EQ(StagingKind("/dev/shm"), "tmpfs");
  // A staged page file written as the stream writes one (pwrite in 256 KiB pieces) is held in
  // large folios: mapped, its first page is a compound head and the next ones its tails
  // (/proc/kpageflags), where /dev/shm would hold 4 KiB pages.
  constexpr size_t kSize = 8 << 20;
  auto f = fs::Open(dir + "/pages-1.img", O_RDWR | O_CREAT | O_TRUNC, 0600);
  ASSERT_OK(f);
  std::string chunk(256 << 10, 'x');
  for (size_t off = 0; off < kSize; off += chunk.size())
    ASSERT_EQ(pwrite(f->get(), chunk.data(), chunk.size(), off), ssize_t(chunk.size()));
  void* m = mmap(nullptr, kSize, PROT_READ, MAP_SHARED | MAP_POPULATE, f->get(), 0);
  ASSERT_NE(m, MAP_FAILED) << strerror(errno);
  ScopeExit unmap([&] { munmap(m, kSize); });
  auto pm = fs::Open("/proc/self/pagemap", O_RDONLY);
  auto kf = fs::Open("/proc/kpageflags", O_RDONLY);
  ASSERT_OK(pm);
  ASSERT_OK(kf);
  // khugepaged may collapse the file's folios into a 2 MiB one at any moment: it unmaps the old
  // ones (their entries read "not present" until touched again) and frees their frames. So a
  // page's entry is read before and after its frame's flags: only when the two differ (or the
  // page is not mapped) did a collapse come between, and the page is touched and read again. An
  // entry that held still decides: a 4 KiB page never shows the flag looked for.
  constexpr int kHead = 15, kTail = 16;  // KPF_COMPOUND_HEAD, KPF_COMPOUND_TAIL
  auto compound = [&](size_t page, int bit) {
    uintptr_t va = reinterpret_cast<uintptr_t>(m) + page * 4096;
    uint64_t e = 0, again = 0, fl = 0;
    for (int i = 0; i < 100; i++) {
      (void)*reinterpret_cast<volatile const char*>(va);
      e = again = fl = 0;
      EXPECT_EQ(pread(pm->get(), &e, 8, (va / 4096) * 8), 8);
      uint64_t pfn = e & ((1ull << 55) - 1);
      if (!(e >> 63) || pfn == 0) continue;
      EXPECT_EQ(pread(kf->get(), &fl, 8, pfn * 8), 8);
      EXPECT_EQ(pread(pm->get(), &again, 8, (va / 4096) * 8), 8);
      if (again != e) continue;
      EXPECT_TRUE(fl >> bit & 1) << "page " << page << ": kpageflags " << std::hex << fl
                                 << " without bit " << std::dec << bit;
      return (fl >> bit & 1) != 0;
    }
    EXPECT_TRUE(e >> 63) << "page " << page << " not present";
    EXPECT_NE(e & ((1ull << 55) - 1), 0u) << "no PFN (CAP_SYS_ADMIN?)";
    ADD_FAILURE() << "page " << page << ": its entry changed in each of 100 reads";
    return false;
  };
  EXPECT_TRUE(compound(0, kHead));
  EXPECT_TRUE(compound(1, kTail));
  EXPECT_TRUE(compound(15, kTail));
  unmap.dismiss();
  munmap(m, kSize);
  f->reset();
  ASSERT_OK(fs::RemoveAll(dir));
  RemoveStagingIfEmpty(base);
  EXPECT_FALSE(fs::Exists(base));
}

// The blackout's priority (common/priority.h): a thread raised to nice -20 and put back to the
// nice it had; threads it starts meanwhile inherit the raised one.
TEST(Priority, BoostRaisesAThreadAndPutsItBack) {
  std::thread t([] {
    ASSERT_EQ(setpriority(PRIO_PROCESS, 0, 3), 0);
    {
      PriorityBoost b;
      b.Add(0);
      b.Add(0);  // twice (a repeated Switchover frame): still put back to 3 below
      ASSERT_FALSE(b.empty()) << "no CAP_SYS_NICE?";
      EXPECT_EQ(getpriority(PRIO_PROCESS, 0), kBlackoutNice);
      int child = 0;
      std::thread([&] { child = getpriority(PRIO_PROCESS, 0); }).join();
      EXPECT_EQ(child, kBlackoutNice);
    }
    EXPECT_EQ(getpriority(PRIO_PROCESS, 0), 3);
  });
  t.join();
}

// The decision after each pre-copy round (migrate/source.h DecideRound), on the round sizes of
// bench runs: one stall far above the target gets one more round (a 1 GiB migration had switched
// at 416 -> 161 -> 203 MiB, predicted 1157 ms, and froze 4.1 s); a second stall, a stall within
// 4x of the target, a minimal round or max rounds switch; --strict aborts instead; a fit switches.
TEST(Convergence, OneStallFarAboveTheTargetGetsOneMoreRound) {
  constexpr uint64_t kMiB = 1 << 20;
  RoundInput in;
  in.max_downtime_ms = 50;
  in.max_rounds = 8;
  in.round = 3;
  in.prev_bytes = 161 * kMiB;
  in.bytes = 203 * kMiB;
  in.predicted_ms = 1156.5;
  RoundVerdict v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kContinue) << v.decision;
  EXPECT_EQ(v.stalls, 1);
  EXPECT_NE(v.decision.find("did not shrink"), std::string::npos) << v.decision;
  // Stalled again: give up (switch), or abort with --strict.
  in.round = 4;
  in.prev_bytes = 203 * kMiB;
  in.bytes = 190 * kMiB;
  in.stalls_before = v.stalls;
  v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kSwitch) << v.decision;
  EXPECT_NE(v.decision.find("rounds stopped shrinking"), std::string::npos) << v.decision;
  in.strict = true;
  EXPECT_EQ(DecideRound(in).kind, RoundVerdict::kAbort);
  in.strict = false;
  // It shrank after the first stall: the count starts again.
  in.bytes = 60 * kMiB;
  v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kContinue) << v.decision;
  EXPECT_EQ(v.stalls, 0);
  // A stall within 4x of the target switches at once (11 -> 11 MiB, predicted 196 ms).
  in.stalls_before = 0;
  in.prev_bytes = 11 * kMiB;
  in.bytes = 11 * kMiB;
  in.predicted_ms = 195.8;
  EXPECT_EQ(DecideRound(in).kind, RoundVerdict::kSwitch);
  // Max rounds, a minimal round, a fit.
  in.predicted_ms = 1000;
  in.bytes = 5 * kMiB;
  in.round = 7;
  v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kSwitch);
  EXPECT_NE(v.decision.find("max rounds"), std::string::npos) << v.decision;
  in.round = 5;
  in.bytes = 100 << 10;
  EXPECT_NE(DecideRound(in).decision.find("minimal"), std::string::npos);
  in.bytes = 5 * kMiB;
  in.predicted_ms = 45;
  v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kSwitch);
  EXPECT_NE(v.decision.find("fits"), std::string::npos) << v.decision;
  // Round 0 never switches (nothing measured yet), whatever it predicts.
  in.round = 0;
  in.prev_bytes = 0;
  in.bytes = 1024 * kMiB;
  in.predicted_ms = 10;
  EXPECT_EQ(DecideRound(in).kind, RoundVerdict::kContinue);
}

// Auto-converge: a container writing faster than half the stream's rate is throttled one step
// more each round instead of switching over on a stall, until the last step; then the stall
// rules decide again. Without a throttle (none possible, or --no-auto-converge) nothing changes.
TEST(Convergence, AWriterOutpacingTheStreamIsThrottledStepByStep) {
  constexpr uint64_t kMiB = 1 << 20;
  RoundInput in;
  in.max_downtime_ms = 50;
  in.max_rounds = 8;
  in.round = 2;
  in.prev_bytes = 64 * kMiB;
  in.bytes = 64 * kMiB;  // stalled: everything written again
  in.predicted_ms = 150;  // within 4x: the old rules switch at once
  in.dirty_bytes_per_s = 600e6;
  in.throughput_bytes_per_s = 700e6;
  EXPECT_EQ(DecideRound(in).kind, RoundVerdict::kSwitch);
  EXPECT_EQ(DecideRound(in).throttle_pct, 0);
  in.can_throttle = true;
  std::vector<int> steps;
  for (int i = 0; i < 8; ++i) {
    RoundVerdict v = DecideRound(in);
    if (v.kind != RoundVerdict::kContinue) {
      EXPECT_EQ(v.kind, RoundVerdict::kSwitch);
      EXPECT_NE(v.decision.find("rounds stopped shrinking"), std::string::npos) << v.decision;
      EXPECT_EQ(v.throttle_pct, in.throttle_pct) << "the last step stays until the freeze";
      break;
    }
    EXPECT_NE(v.decision.find("throttled by"), std::string::npos) << v.decision;
    EXPECT_GT(v.throttle_pct, in.throttle_pct);
    steps.push_back(v.throttle_pct);
    in.throttle_pct = v.throttle_pct;
    in.stalls_before = v.stalls;
  }
  EXPECT_EQ(steps, std::vector<int>(std::begin(kThrottleSteps), std::end(kThrottleSteps)));
  // A round that shrank, written under half the stream's rate: no step.
  in.throttle_pct = 30;
  in.stalls_before = 0;
  in.dirty_bytes_per_s = 300e6;
  in.bytes = 20 * kMiB;
  RoundVerdict v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kContinue) << v.decision;
  EXPECT_EQ(v.decision.find("throttled"), std::string::npos) << v.decision;
  EXPECT_EQ(v.throttle_pct, 30);
  // A round that did not shrink is throttled whatever the rates say (a writer rewriting all of
  // its memory shows at most the stream's rate).
  in.bytes = 64 * kMiB;
  v = DecideRound(in);
  EXPECT_EQ(v.kind, RoundVerdict::kContinue) << v.decision;
  EXPECT_EQ(v.throttle_pct, 65);
  EXPECT_NE(v.decision.find("did not shrink"), std::string::npos) << v.decision;
  // A fit, the last round or round 0 never throttle.
  in.dirty_bytes_per_s = 600e6;
  in.throttle_pct = 0;
  in.predicted_ms = 40;
  EXPECT_EQ(DecideRound(in).throttle_pct, 0);
  in.predicted_ms = 150;
  in.round = 7;
  EXPECT_EQ(DecideRound(in).throttle_pct, 0);
  in.round = 0;
  in.prev_bytes = 0;
  EXPECT_EQ(DecideRound(in).throttle_pct, 0);
}

}  // namespace
}  // namespace godwit::migrate
