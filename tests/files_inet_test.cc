// TCP and UDP round trips through FdDumper/FdRestorer. The peer of the TCP connection is a
// process outside the dumped tree that streams a known pattern both ways and fails on any error
// or wrong byte: the connection must survive dump, kill and restore with nothing lost.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>
#include <sys/socket.h>

#include <cstdlib>

#include "common/netns.h"
#include "files/netlock.h"
#include "tests/files_harness_test.h"
#include "tests/scratch_netns.h"

namespace godwit::files::testing {
namespace {

constexpr int kGoFd = 950;

char PatternA(size_t i) { return static_cast<char>('a' + (i * 7) % 26); }
char PatternB(size_t i) { return static_cast<char>('A' + (i * 11) % 26); }

bool ReadExactly(int fd, char* buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, buf + got, n - got);
    if (r <= 0) return false;
    got += r;
  }
  return true;
}

struct Addr {
  sockaddr_storage ss{};
  socklen_t len = 0;
};

// FilesTcp's third family: an IPv6 socket connected to ::ffff:127.0.0.1, whose packets travel as
// IPv4 (the lock and the restore's made-up segments must say IPv4).
constexpr int kV4Mapped = 1000;
int SocketFamily(int param) { return param == kV4Mapped ? AF_INET6 : param; }

Addr Loopback(int family) {
  Addr a;
  if (family == kV4Mapped) {
    auto* s = reinterpret_cast<sockaddr_in6*>(&a.ss);
    s->sin6_family = AF_INET6;
    inet_pton(AF_INET6, "::ffff:127.0.0.1", &s->sin6_addr);
    a.len = sizeof(*s);
  } else if (family == AF_INET) {
    auto* s = reinterpret_cast<sockaddr_in*>(&a.ss);
    s->sin_family = AF_INET;
    s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.len = sizeof(*s);
  } else {
    auto* s = reinterpret_cast<sockaddr_in6*>(&a.ss);
    s->sin6_family = AF_INET6;
    s->sin6_addr = in6addr_loopback;
    a.len = sizeof(*s);
  }
  return a;
}

bool TableLeft() {
  FILE* f = popen("nft list tables 2>/dev/null", "r");
  if (!f) return false;
  char line[256];
  bool found = false;
  std::string want = StrFormat("godwit_lock_%d_", getpid());
  while (fgets(line, sizeof(line), f))
    if (strstr(line, want.c_str())) found = true;
  pclose(f);
  return found;
}

// Removes this test process's lock tables, whatever happened.
void DropTables() {
  FILE* f = popen("nft list tables 2>/dev/null", "r");
  if (!f) return;
  char line[256];
  std::string want = StrFormat("godwit_lock_%d_", getpid());
  std::vector<std::string> tables;
  while (fgets(line, sizeof(line), f)) {
    char name[200];
    if (sscanf(line, "table inet %199s", name) == 1 && strstr(name, want.c_str())) tables.push_back(name);
  }
  pclose(f);
  for (const auto& t : tables) (void)!system(("nft delete table inet " + t).c_str());
}

class FilesTcp : public ::testing::TestWithParam<int> {
 protected:
  void SetUp() override { dir_ = TempDir("tcp"); }
  void TearDown() override {
    DropTables();
    (void)fs::RemoveAll(dir_);
  }
  std::string dir_;
};

TEST_P(FilesTcp, EstablishedSurvivesWithQueuesBothWays) {
  const int param = GetParam(), family = SocketFamily(param);
  constexpr size_t kA = 20000;  // client -> server, unread by the server at dump
  int l = socket(family, SOCK_STREAM, 0);
  Addr la = Loopback(param);
  ASSERT_EQ(bind(l, (sockaddr*)&la.ss, la.len), 0);
  ASSERT_EQ(listen(l, 4), 0);
  getsockname(l, (sockaddr*)&la.ss, &la.len);
  int go[2];
  ASSERT_EQ(pipe(go), 0);
  // The peer, outside the tree.
  pid_t client = fork();
  if (client == 0) {
    close(go[1]);
    close(l);
    int c = socket(family, SOCK_STREAM, 0);
    if (connect(c, (sockaddr*)&la.ss, la.len) < 0) _exit(10);
    std::string a(kA, 0);
    for (size_t i = 0; i < kA; i++) a[i] = PatternA(i);
    if (write(c, a.data(), a.size()) != (ssize_t)a.size()) _exit(11);
    uint64_t count = 0;
    if (read(go[0], &count, 8) != 8) _exit(12);  // after restore: how much the server sent
    std::vector<char> b(count);
    if (!ReadExactly(c, b.data(), count)) _exit(13);
    for (size_t i = 0; i < count; i++)
      if (b[i] != PatternB(i)) _exit(14);
    char ping[4];
    if (!ReadExactly(c, ping, 4) || memcmp(ping, "PING", 4)) _exit(15);
    if (write(c, "PONG", 4) != 4) _exit(16);
    char eof;
    if (read(c, &eof, 1) != 0) _exit(17);  // the server shut down its side
    _exit(0);
  }
  close(go[0]);
  std::string count_file = dir_ + "/count";
  pid_t server = SpawnStopped(
      [&] {
        dup2(l, 3);
        int a = accept(3, nullptr, nullptr);
        if (a < 0) return 20;
        if (a != 4) {
          dup2(a, 4);
          close(a);
        }
        int one = 1;
        setsockopt(4, SOL_TCP, TCP_NODELAY, &one, sizeof(one));
        // Wait (without consuming) until the client's bytes are all queued here.
        // (a kernel-async condition: polled with a deadline)
        int inq = 0;
        for (int i = 0; i < 5000 && inq < (int)kA; i++) {
          ioctl(4, SIOCINQ, &inq);
          if (inq < (int)kA) poll(nullptr, 0, 1);
        }
        if (inq != (int)kA) return 21;
        // Fill the path: the client does not read, so the tail stays unsent in our queue.
        fcntl(4, F_SETFL, O_NONBLOCK);
        uint64_t sent = 0;
        std::vector<char> chunk(65536);
        for (;;) {
          for (size_t i = 0; i < chunk.size(); i++) chunk[i] = PatternB(sent + i);
          ssize_t n = write(4, chunk.data(), chunk.size());
          if (n <= 0) break;
          sent += n;
        }
        fcntl(4, F_SETFL, 0);
        return fs::WriteFile(count_file, std::to_string(sent)).ok() ? 0 : 22;
      },
      {l});
  close(l);
  ASSERT_GT(server, 0);
  uint64_t count = std::stoull(*fs::ReadFile(count_file));
  EXPECT_GT(count, 0u);
  DumpOptions d;
  d.tcp_established = true;
  std::vector<std::pair<std::string, int>> counts;
  auto r = DumpPids({server}, dir_ + "/img", d, &counts);
  KillAll({server});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  EXPECT_TRUE(TableLeft()) << "connections must stay locked between dump and restore";
  int gofd = fcntl(go[1], F_DUPFD, kGoFd);
  close(go[1]);
  std::string res = Restore(dir_ + "/img", {{server, [&]() -> std::string {
                                                std::vector<char> a(kA);
                                                CHECK_OR(ReadExactly(4, a.data(), kA), "read queue");
                                                for (size_t i = 0; i < kA; i++)
                                                  CHECK_OR(a[i] == PatternA(i), "byte %zu", i);
                                                CHECK_OR(write(gofd, &count, 8) == 8, "go");
                                                CHECK_OR(write(4, "PING", 4) == 4, "ping");
                                                char pong[4];
                                                CHECK_OR(ReadExactly(4, pong, 4) &&
                                                             !memcmp(pong, "PONG", 4), "pong");
                                                shutdown(4, SHUT_WR);
                                                int on = 0;
                                                socklen_t len = sizeof(on);
                                                getsockopt(4, SOL_TCP, TCP_NODELAY, &on, &len);
                                                CHECK_OR(on, "TCP_NODELAY lost");
                                                // The listener is still there.
                                                len = sizeof(on);
                                                getsockopt(3, SOL_SOCKET, SO_ACCEPTCONN, &on, &len);
                                                CHECK_OR(on, "listener lost");
                                                return "";
                                              }}});
  close(gofd);
  EXPECT_EQ(res, "");
  int st = 0;
  ASSERT_EQ(waitpid(client, &st, 0), client);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "client status " << st;
  EXPECT_FALSE(TableLeft()) << "network lock left behind";
}

TEST_P(FilesTcp, WithoutTcpEstablishedDumpFailsAndUnlocks) {
  const int param = GetParam(), family = SocketFamily(param);
  int l = socket(family, SOCK_STREAM, 0);
  Addr la = Loopback(param);
  ASSERT_EQ(bind(l, (sockaddr*)&la.ss, la.len), 0);
  listen(l, 1);
  getsockname(l, (sockaddr*)&la.ss, &la.len);
  int c = socket(family, SOCK_STREAM, 0);
  ASSERT_EQ(connect(c, (sockaddr*)&la.ss, la.len), 0);
  int a = accept(l, nullptr, nullptr);
  pid_t pid = SpawnStopped([&] { return dup2(a, 5) == 5 ? 0 : 1; }, {a});
  close(a);
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir_ + "/img");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().kind(), ErrorKind::kUnsupported);
  EXPECT_NE(r.error().to_string().find("--tcp-established"), std::string::npos);
  // A dump that fails after locking gives everything back: the connection still works.
  DumpOptions d;
  d.tcp_established = true;
  auto sink = images::OpenDirSink(dir_ + "/img2", true);
  ASSERT_TRUE(sink.ok());
  auto dumper = FdDumper::Create(**sink, d);
  ASSERT_TRUE((*dumper)->DumpProcess(pid).ok());
  EXPECT_TRUE(TableLeft());
  (*dumper)->Resume();
  (*sink)->Abort();
  EXPECT_FALSE(TableLeft());
  kill(pid, SIGCONT);
  // The process is stopped again by nothing: write through our copy-free path, the peer reads.
  int dup_in_test = socket(family, SOCK_STREAM, 0);
  close(dup_in_test);
  EXPECT_EQ(write(c, "x", 1), 1);
  KillAll({pid});
  close(c);
  close(l);
}

// Half-closed: fd 4 sent its FIN (FIN_WAIT2) and still receives; fd 6 got the peer's FIN with
// data before it (CLOSE_WAIT) and still sends. The peers (fds 5 and 7 of the test) are outside.
TEST_P(FilesTcp, HalfClosedBothDirections) {
  const int param = GetParam(), family = SocketFamily(param);
  int l = socket(family, SOCK_STREAM, 0);
  Addr la = Loopback(param);
  ASSERT_EQ(bind(l, (sockaddr*)&la.ss, la.len), 0);
  listen(l, 4);
  getsockname(l, (sockaddr*)&la.ss, &la.len);
  int c1 = socket(family, SOCK_STREAM, 0), c2 = socket(family, SOCK_STREAM, 0);
  ASSERT_EQ(connect(c1, (sockaddr*)&la.ss, la.len), 0);
  int a1 = accept(l, nullptr, nullptr);
  ASSERT_EQ(connect(c2, (sockaddr*)&la.ss, la.len), 0);
  int a2 = accept(l, nullptr, nullptr);
  close(l);
  ASSERT_EQ(shutdown(a1, SHUT_WR), 0);      // a1: FIN_WAIT2 once acked
  ASSERT_EQ(write(c2, "last-words", 10), 10);
  ASSERT_EQ(shutdown(c2, SHUT_WR), 0);      // a2: CLOSE_WAIT with 10 bytes queued
  char eof;
  ASSERT_EQ(read(c1, &eof, 1), 0);          // c1 saw a1's FIN
  // Kernel-async: wait until both states settled (bounded).
  auto state = [](int fd) {
    struct tcp_info ti {};
    socklen_t len = sizeof(ti);
    getsockopt(fd, SOL_TCP, TCP_INFO, &ti, &len);
    return ti.tcpi_state;
  };
  for (int i = 0; i < 2000 && (state(a1) != TCP_FIN_WAIT2 || state(a2) != TCP_CLOSE_WAIT); i++)
    poll(nullptr, 0, 1);
  ASSERT_EQ(state(a1), TCP_FIN_WAIT2);
  ASSERT_EQ(state(a2), TCP_CLOSE_WAIT);
  pid_t pid = SpawnStopped(
      [&] {
        int t1 = fcntl(a1, F_DUPFD, 100), t2 = fcntl(a2, F_DUPFD, 100);
        close(a1);
        close(a2);
        dup2(t1, 4);
        dup2(t2, 6);
        close(t1);
        close(t2);
        return 0;
      },
      {a1, a2});
  close(a1);
  close(a2);
  ASSERT_GT(pid, 0);
  DumpOptions d;
  d.tcp_established = true;
  auto r = DumpPids({pid}, dir_ + "/img", d);
  KillAll({pid});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  // Sent while the connection is locked: dropped now, retransmitted to the restored socket.
  ASSERT_EQ(write(c1, "abc", 3), 3);
  struct timeval tv {10, 0};  // a failed restore must fail the test, not hang it
  setsockopt(c2, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  std::string res = Restore(dir_ + "/img", {{pid, []() -> std::string {
    char b[16];
    CHECK_OR(ReadExactly(6, b, 10) && !memcmp(b, "last-words", 10), "CLOSE_WAIT queue");
    CHECK_OR(read(6, b, 1) == 0, "no EOF after the peer's FIN");
    CHECK_OR(write(6, "reply", 5) == 5, "CLOSE_WAIT side cannot send");
    CHECK_OR(ReadExactly(4, b, 3) && !memcmp(b, "abc", 3), "FIN_WAIT2 side cannot receive");
    return "";
  }}});
  EXPECT_EQ(res, "");
  char b[8];
  EXPECT_TRUE(ReadExactly(c2, b, 5) && !memcmp(b, "reply", 5));
  close(c1);
  close(c2);
}

INSTANTIATE_TEST_SUITE_P(Families, FilesTcp, ::testing::Values(AF_INET, AF_INET6, kV4Mapped),
                         [](const auto& info) {
                           return info.param == AF_INET ? "v4" : info.param == AF_INET6 ? "v6" : "v4mapped";
                         });

TEST(NetLock, V4MappedConnectionsTravelAsIpv4) {
  TcpConn c;
  auto* l = reinterpret_cast<sockaddr_in6*>(&c.local);
  auto* r = reinterpret_cast<sockaddr_in6*>(&c.peer);
  l->sin6_family = r->sin6_family = AF_INET6;
  l->sin6_port = htons(80);
  r->sin6_port = htons(40000);
  ASSERT_EQ(inet_pton(AF_INET6, "::ffff:198.18.1.10", &l->sin6_addr), 1);
  ASSERT_EQ(inet_pton(AF_INET6, "::ffff:198.18.0.100", &r->sin6_addr), 1);
  TcpConn t = AsTravels(c);
  ASSERT_EQ(t.local.ss_family, AF_INET);
  ASSERT_EQ(t.peer.ss_family, AF_INET);
  auto* l4 = reinterpret_cast<sockaddr_in*>(&t.local);
  auto* r4 = reinterpret_cast<sockaddr_in*>(&t.peer);
  EXPECT_EQ(ntohl(l4->sin_addr.s_addr), 0xc612010aU);  // 198.18.1.10
  EXPECT_EQ(ntohl(r4->sin_addr.s_addr), 0xc6120064U);  // 198.18.0.100
  EXPECT_EQ(ntohs(l4->sin_port), 80);
  EXPECT_EQ(ntohs(r4->sin_port), 40000);
  // One end mapped, the other a real IPv6 address: stays IPv6 as it is.
  ASSERT_EQ(inet_pton(AF_INET6, "fd00::1", &r->sin6_addr), 1);
  t = AsTravels(c);
  EXPECT_EQ(t.local.ss_family, AF_INET6);
  EXPECT_EQ(t.peer.ss_family, AF_INET6);
  EXPECT_EQ(memcmp(&t.local, &c.local, sizeof(c.local)), 0);
  // Not mapped: unchanged, and said so.
  sockaddr_storage ss = c.peer;
  EXPECT_FALSE(UnmapV4(&ss));
  EXPECT_EQ(memcmp(&ss, &c.peer, sizeof(ss)), 0);
}

TEST(FilesInet, UdpBoundConnectedWithQueueAndOptions) {
  for (int family : {AF_INET, AF_INET6}) {
    SCOPED_TRACE(family);
    std::string res = RoundTrip(
        [family] {
          Addr a = Loopback(family);
          int r = socket(family, SOCK_DGRAM, 0);
          int one = 1;
          setsockopt(r, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
          int buf = 300000;
          setsockopt(r, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf));
          if (bind(r, (sockaddr*)&a.ss, a.len) < 0) return 10;
          dup2(r, 3);
          Addr ra;
          ra.len = sizeof(ra.ss);
          getsockname(3, (sockaddr*)&ra.ss, &ra.len);
          int s = socket(family, SOCK_DGRAM, 0);
          if (connect(s, (sockaddr*)&ra.ss, ra.len) < 0) return 11;
          dup2(s, 4);
          int tos = 0x10;
          if (family == AF_INET) setsockopt(4, SOL_IP, IP_TOS, &tos, sizeof(tos));
          send(4, "u1", 2, 0);
          send(4, "udp-2", 5, 0);
          return 0;
        },
        [family]() -> std::string {
          char b[16];
          CHECK_OR(recv(3, b, 16, MSG_DONTWAIT) == 2 && recv(3, b, 16, MSG_DONTWAIT) == 5 &&
                       !memcmp(b, "udp-2", 5),
                   "queued datagrams");
          int v = 0;
          socklen_t len = sizeof(v);
          getsockopt(3, SOL_SOCKET, SO_REUSEADDR, &v, &len);
          CHECK_OR(v, "SO_REUSEADDR");
          len = sizeof(v);
          getsockopt(3, SOL_SOCKET, SO_RCVBUF, &v, &len);
          CHECK_OR(v == 600000, "SO_RCVBUF %d", v);
          if (family == AF_INET) {
            len = sizeof(v);
            getsockopt(4, SOL_IP, IP_TOS, &v, &len);
            CHECK_OR(v == 0x10, "IP_TOS %d", v);
          }
          CHECK_OR(send(4, "z", 1, 0) == 1 && recv(3, b, 16, 0) == 1, "connected sender");
          return "";
        });
    EXPECT_EQ(res, "");
  }
}

TEST(FilesInet, TcpPortTakenAtRestoreIsExists) {
  std::string dir = TempDir("taken");
  int probe = socket(AF_INET, SOCK_STREAM, 0);
  Addr a = Loopback(AF_INET);
  bind(probe, (sockaddr*)&a.ss, a.len);
  getsockname(probe, (sockaddr*)&a.ss, &a.len);
  pid_t pid = SpawnStopped([&] {
    if (dup2(probe, 3) != 3) return 1;
    return listen(3, 1);
  }, {probe});
  close(probe);
  ASSERT_GT(pid, 0);
  auto r = DumpPids({pid}, dir);
  KillAll({pid});
  ASSERT_TRUE(r.ok()) << r.error().to_string();
  int squat = socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_EQ(bind(squat, (sockaddr*)&a.ss, a.len), 0);
  auto set = images::ImageSet::Open(dir);
  ASSERT_TRUE(set.ok());
  auto rest = FdRestorer::Load(*set, {});
  ASSERT_TRUE(rest.ok());
  auto pr = (*rest)->Prepare(64);
  ASSERT_FALSE(pr.ok());
  EXPECT_EQ(pr.error().kind(), ErrorKind::kExists) << pr.error().to_string();
  close(squat);
  (void)fs::RemoveAll(dir);
}

}  // namespace

// A socket made in the named netns (/run/netns/NAME).
UniqueFd SocketIn(const std::string& ns, int type) {
  int fd = -1;
  godwit::testing::InNetns(ns, [&] { fd = ::socket(AF_INET, type | SOCK_CLOEXEC, 0); });
  return UniqueFd(fd);
}

// NetLock::Quiet (a migration's destination before its commit): nothing leaves the namespace,
// not even the ARP request a first datagram needs; Open lets everything out; Unlock removes the
// lock's tables (inet and arp) there.
TEST(NetLock, QuietSilencesANamespaceUntilOpen) {
  const std::string a = StrFormat("gwq%d-a", getpid()), b = StrFormat("gwq%d-b", getpid());
  auto sh = [](const std::string& c) { return std::system(c.c_str()); };
  godwit::testing::ScratchNetns cleanup({a, b});
  ASSERT_EQ(sh("ip netns add " + a + " && ip netns add " + b + " && ip -n " + a +
               " link add q0 type veth peer name q1 netns " + b + " && ip -n " + a +
               " addr add 198.18.250.1/30 dev q0 && ip -n " + b +
               " addr add 198.18.250.2/30 dev q1 && ip -n " + b + " link set q1 up"),
            0);
  UniqueFd ns(::open(("/run/netns/" + a).c_str(), O_RDONLY | O_CLOEXEC));
  ASSERT_TRUE(ns.valid());
  std::unique_ptr<NetLock> lock = NewDropLock();
  ASSERT_TRUE(lock->Quiet(ns.get()).ok());
  ASSERT_EQ(sh("ip -n " + a + " link set q0 up"), 0);  // its IPv6 chatter is dropped too

  UniqueFd rx = SocketIn(b, SOCK_DGRAM), tx = SocketIn(a, SOCK_DGRAM);
  ASSERT_TRUE(rx.valid() && tx.valid());
  sockaddr_in to{};
  to.sin_family = AF_INET;
  to.sin_port = htons(7777);
  ::inet_pton(AF_INET, "198.18.250.2", &to.sin_addr);
  ASSERT_EQ(::bind(rx.get(), reinterpret_cast<sockaddr*>(&to), sizeof(to)), 0) << strerror(errno);
  auto send_one = [&] {
    return ::sendto(tx.get(), "x", 1, 0, reinterpret_cast<sockaddr*>(&to), sizeof(to));
  };
  auto received = [&](int ms) {
    pollfd p{rx.get(), POLLIN, 0};
    return ::poll(&p, 1, ms) == 1;
  };
  // Dropped on the way out (a local sender is told: EPERM); nothing arrives.
  EXPECT_EQ(send_one(), -1);
  EXPECT_EQ(errno, EPERM);
  EXPECT_FALSE(received(100));
  auto tables = netns::NftRunIn(ns.get(), "list tables\n");
  ASSERT_TRUE(tables.ok());
  EXPECT_NE(tables->find("table arp " + lock->name()), std::string::npos) << *tables;
  // Loopback, which leaves nothing, still works: a restore requeues a UDP socket's queued
  // datagrams by sending them to it, while the namespace is quiet.
  {
    ASSERT_EQ(sh("ip -n " + a + " link set lo up"), 0);
    UniqueFd lo_rx = SocketIn(a, SOCK_DGRAM);
    sockaddr_in lo{};
    lo.sin_family = AF_INET;
    lo.sin_port = htons(7778);
    lo.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::bind(lo_rx.get(), reinterpret_cast<sockaddr*>(&lo), sizeof(lo)), 0);
    EXPECT_EQ(::sendto(tx.get(), "y", 1, 0, reinterpret_cast<sockaddr*>(&lo), sizeof(lo)), 1)
        << strerror(errno);
    pollfd p{lo_rx.get(), POLLIN, 0};
    EXPECT_EQ(::poll(&p, 1, 5000), 1) << "loopback blocked while quiet";
  }

  ASSERT_TRUE(lock->Open().ok());
  bool got = false;
  for (int i = 0; i < 50 && !got; ++i) {  // the first send may wait for its neighbour
    EXPECT_EQ(send_one(), 1) << strerror(errno);
    got = received(100);
  }
  EXPECT_TRUE(got) << "nothing got out after Open";
  ASSERT_TRUE(lock->Unlock().ok());
  tables = netns::NftRunIn(ns.get(), "list tables\n");
  ASSERT_TRUE(tables.ok());
  EXPECT_EQ(tables->find(lock->name()), std::string::npos) << *tables;
}

}  // namespace godwit::files::testing
