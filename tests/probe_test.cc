// `godwit probe` (issue 10, researchers' tooling): the client-side downtime probe.
//   - Against echo servers in this test (loopback): a clean run reports every message echoed
//     with sane gaps and round trips; a server that alters one byte is caught (exit 1, the byte
//     named); a server that closes is a broken connection (exit 1); SIGTERM and the until-file
//     end a run cleanly with its report; a refused connection fails without a report; bad
//     arguments are usage errors.
//   - Against a bridged busybox container on the hosts of scripts/netns-hosts, from the client's
//     namespace: TCP (busybox nc) and UDP (tests/helpers/udp_echo) echoes, a JSON report that
//     parses and adds up.
//   - ICMP echo (--icmp) from the client's namespace: two probes pinging one host at once each
//     count their own replies only; an address nobody answers loses every request.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "runtime/runtime.h"
#include "tests/container_test_util.h"
#include "tests/netns_hosts.h"
#include "tests/probe_client.h"

namespace godwit {
namespace {

using container::testing::CliRun;
using container::testing::Godwit;
using container::testing::TempDir;
using testing::NetnsHosts;
using testing::ProbeClient;

// A TCP echo server on 127.0.0.1 for one connection, in a thread: echoes every byte, or alters
// the byte at offset `at` (kCorrupt), or closes the connection once `at` bytes were echoed
// (kClose), or keeps reading but echoes nothing past `at` bytes (kStall).
class EchoServer {
 public:
  enum Mode { kEcho, kCorrupt, kClose, kStall };
  ~EchoServer() {
    if (thread_.joinable()) {
      char b = 0;
      (void)!::write(stop_[1], &b, 1);
      thread_.join();
    }
    for (int fd : stop_)
      if (fd >= 0) ::close(fd);
  }
  Result<int> Start(Mode mode, uint64_t at = 0) {
    if (::pipe2(stop_, O_CLOEXEC) < 0) return Errno("pipe");
    listen_.reset(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    if (::bind(listen_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0 ||
        ::listen(listen_.get(), 4) < 0 ||
        ::getsockname(listen_.get(), reinterpret_cast<sockaddr*>(&a), &l) < 0)
      return Errno("listen");
    thread_ = std::thread([this, mode, at] { Loop(mode, at); });
    return static_cast<int>(ntohs(a.sin_port));
  }
  uint64_t echoed() const { return echoed_; }

 private:
  bool Wait(int fd) {
    pollfd p[2] = {{fd, POLLIN, 0}, {stop_[0], POLLIN, 0}};
    while (::poll(p, 2, -1) < 0 && errno == EINTR) {
    }
    return !(p[1].revents & POLLIN);
  }
  void Loop(Mode mode, uint64_t at) {
    if (!Wait(listen_.get())) return;
    UniqueFd c(::accept4(listen_.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!c) return;
    char buf[4096];
    while (Wait(c.get())) {
      ssize_t n = ::read(c.get(), buf, sizeof(buf));
      if (n <= 0) return;
      for (ssize_t i = 0; i < n; ++i)
        if (mode == kCorrupt && echoed_ + i == at) buf[i] ^= 0x5a;
      if (mode == kClose && echoed_ + n >= at) return;  // closes c: EOF for the client
      if (mode == kStall && echoed_ + n > at) continue;
      // Counted before the send: the client may have read the echo and ended before this
      // thread runs again (CleanRunOverLoopback compares the count once the probe exits).
      echoed_ += n;
      if (::send(c.get(), buf, n, MSG_NOSIGNAL) != n) return;
    }
  }
  UniqueFd listen_;
  int stop_[2] = {-1, -1};
  std::thread thread_;
  std::atomic<uint64_t> echoed_{0};
};

std::string Local(int port) { return StrFormat("127.0.0.1:%d", port); }

TEST(Probe, CleanRunOverLoopback) {
  EchoServer srv;
  auto port = srv.Start(EchoServer::kEcho);
  ASSERT_TRUE(port.ok());
  ProbeClient p;
  ASSERT_OK(p.RunToEnd({"--tcp", Local(*port), "--interval", "1ms", "--duration", "300ms"}));
  ASSERT_EQ(p.code(), 0) << p.out() << p.err();
  const auto& r = p.report();
  ASSERT_FALSE(r.is_discarded()) << p.out();
  EXPECT_TRUE(r["ok"].get<bool>());
  EXPECT_EQ(r["stopped_by"], "duration");
  EXPECT_NEAR(r["duration_s"].get<double>(), 0.3, 0.25);
  const auto& t = r["tcp"];
  uint64_t sent = t["sent"].get<uint64_t>();
  EXPECT_GT(sent, 50u);  // one per ms; a loaded machine wakes late, never early
  EXPECT_LE(sent, 320u);
  EXPECT_EQ(t["echoed"].get<uint64_t>(), sent);
  EXPECT_EQ(t["lost"].get<uint64_t>(), 0u);
  EXPECT_EQ(srv.echoed(), sent * 16);  // the default 16-byte messages
  // Gaps follow the interval; round trips on loopback are far below it.
  const auto& g = t["gap_ms"];
  EXPECT_EQ(g["count"].get<uint64_t>(), sent - 1);
  EXPECT_GT(g["p50"].get<double>(), 0.3);
  EXPECT_LT(g["p50"].get<double>(), 20.0);
  EXPECT_LE(g["p50"].get<double>(), g["p99"].get<double>());
  EXPECT_LE(g["p99"].get<double>(), g["p999"].get<double>());
  EXPECT_LE(g["p999"].get<double>(), g["max"].get<double>());
  EXPECT_EQ(t["max_gap_ms"], g["max"]);
  // The longest gaps, longest first, each with its start (to line up with a migration's log).
  const auto& lg = t["longest_gaps"];
  ASSERT_EQ(lg.size(), std::min<uint64_t>(16, sent - 1)) << lg;
  EXPECT_EQ(lg[0]["ms"], g["max"]);
  EXPECT_DOUBLE_EQ(lg[0]["start_unix_ms"].get<double>(), t["max_gap_start_unix_ms"].get<double>());
  for (size_t i = 1; i < lg.size(); ++i) EXPECT_LE(lg[i]["ms"], lg[i - 1]["ms"]) << lg;
  EXPECT_GT(t["rtt_ms"]["p50"].get<double>(), 0.0);
  EXPECT_EQ(t["tcp_info"]["total_retrans"].get<int>(), 0);
  EXPECT_FALSE(t["corrupt"].get<bool>());
  EXPECT_FALSE(t["broken"].get<bool>());
  EXPECT_FALSE(r.contains("udp"));
}

TEST(Probe, HumanReport) {
  EchoServer srv;
  auto port = srv.Start(EchoServer::kEcho);
  ASSERT_TRUE(port.ok());
  CliRun r = Godwit({"probe", "--tcp", Local(*port), "--duration", "100ms", "--size", "64"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_NE(r.out.find("64-byte message"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("gap between echoes"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("client TCP:"), std::string::npos) << r.out;
  EXPECT_EQ(srv.echoed() % 64, 0u);
}

TEST(Probe, CorruptEchoIsCaught) {
  EchoServer srv;
  auto port = srv.Start(EchoServer::kCorrupt, 1000);
  ASSERT_TRUE(port.ok());
  ProbeClient p;
  ASSERT_OK(p.RunToEnd({"--tcp", Local(*port), "--interval", "1ms", "--duration", "10s"}));
  EXPECT_EQ(p.code(), 1) << p.out() << p.err();
  const auto& r = p.report();
  ASSERT_FALSE(r.is_discarded()) << p.out();
  EXPECT_FALSE(r["ok"].get<bool>());
  EXPECT_EQ(r["stopped_by"], "error");
  EXPECT_TRUE(r["tcp"]["corrupt"].get<bool>());
  EXPECT_NE(r["tcp"]["error"].get<std::string>().find("byte 1000 "), std::string::npos)
      << r["tcp"]["error"];
  EXPECT_EQ(r["tcp"]["echoed"].get<uint64_t>(), 1000u / 16);  // the messages before it
  EXPECT_NE(p.err().find("byte 1000"), std::string::npos) << p.err();
}

TEST(Probe, ClosedConnectionIsBroken) {
  EchoServer srv;
  auto port = srv.Start(EchoServer::kClose, 480);
  ASSERT_TRUE(port.ok());
  ProbeClient p;
  ASSERT_OK(p.RunToEnd({"--tcp", Local(*port), "--interval", "1ms", "--duration", "10s"}));
  EXPECT_EQ(p.code(), 1) << p.out() << p.err();
  const auto& r = p.report();
  ASSERT_FALSE(r.is_discarded()) << p.out();
  EXPECT_TRUE(r["tcp"]["broken"].get<bool>());
  EXPECT_FALSE(r["tcp"]["corrupt"].get<bool>());
  EXPECT_NE(r["tcp"]["error"].get<std::string>().find("EOF"), std::string::npos) << r["tcp"];
}

// Echoes stop with the connection open: the messages never echoed fail the run, and the stall
// still going on at the end is the longest gap.
TEST(Probe, StallAtTheEndIsAGap) {
  EchoServer srv;
  auto port = srv.Start(EchoServer::kStall, 160);
  ASSERT_TRUE(port.ok());
  ProbeClient p;
  const double before_unix_ms =
      std::chrono::duration<double, std::milli>(std::chrono::system_clock::now().time_since_epoch())
          .count();
  ASSERT_OK(p.RunToEnd(
      {"--tcp", Local(*port), "--interval", "1ms", "--duration", "300ms", "--drain", "200ms"}));
  EXPECT_EQ(p.code(), 1) << p.out() << p.err();
  const auto& r = p.report();
  ASSERT_FALSE(r.is_discarded()) << p.out();
  EXPECT_FALSE(r["ok"].get<bool>());
  EXPECT_FALSE(r["tcp"]["broken"].get<bool>());
  EXPECT_EQ(r["tcp"]["echoed"].get<uint64_t>(), 10u);
  EXPECT_GT(r["tcp"]["lost"].get<uint64_t>(), 0u);
  // From the 10th echo (~10 ms in) to the end (300 ms + 200 ms of drain).
  EXPECT_GT(r["tcp"]["max_gap_ms"].get<double>(), 400.0) << r["tcp"]["gap_ms"];
  // That stall is the longest gap; it started at the 10th echo, well before the run's end.
  const auto& lg = r["tcp"]["longest_gaps"];
  ASSERT_EQ(lg.size(), 10u) << lg;  // 9 gaps between the echoes, then the stall
  EXPECT_EQ(lg[0]["ms"], r["tcp"]["max_gap_ms"]);
  EXPECT_GT(lg[0]["start_unix_ms"].get<double>(), before_unix_ms) << lg;
  EXPECT_LT(lg[0]["start_unix_ms"].get<double>(), before_unix_ms + 250) << lg;
  EXPECT_NE(p.err().find("never echoed"), std::string::npos) << p.err();
}

// Waits (bounded) until the server echoed n bytes: the probe is streaming.
bool WaitEchoed(const EchoServer& srv, uint64_t n) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (srv.echoed() < n) {
    if (std::chrono::steady_clock::now() > end) return false;
    ::usleep(2000);
  }
  return true;
}

TEST(Probe, SigtermAndUntilFileEndWithTheReport) {
  for (int sig : {SIGTERM, SIGINT, 0}) {
    EchoServer srv;
    auto port = srv.Start(EchoServer::kEcho);
    ASSERT_TRUE(port.ok());
    ProbeClient p;
    ASSERT_OK(p.Start({"--tcp", Local(*port), "--interval", "1ms"}));
    ASSERT_TRUE(WaitEchoed(srv, 10 * 16));
    ASSERT_OK(p.Stop(sig));
    EXPECT_EQ(p.code(), 0) << p.out() << p.err();
    const auto& r = p.report();
    EXPECT_EQ(r["stopped_by"], sig == SIGTERM  ? "SIGTERM"
                               : sig == SIGINT ? "SIGINT"
                                               : "until-file");
    EXPECT_GE(r["tcp"]["sent"].get<uint64_t>(), 10u);
    EXPECT_EQ(r["tcp"]["echoed"], r["tcp"]["sent"]);
    EXPECT_TRUE(r["ok"].get<bool>());
  }
}

TEST(Probe, RefusedConnectionFailsWithoutAReport) {
  // A port nobody listens on: bound, then closed.
  int port = 0;
  {
    UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t l = sizeof(a);
    ASSERT_EQ(::bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
    ASSERT_EQ(::getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &l), 0);
    port = ntohs(a.sin_port);
  }
  ProbeClient p;
  ASSERT_OK(p.RunToEnd({"--tcp", Local(port), "--connect-timeout", "200ms"}));
  EXPECT_EQ(p.code(), 1) << p.out() << p.err();
  EXPECT_TRUE(p.report().is_discarded()) << p.out();
  EXPECT_NE(p.err().find("connect"), std::string::npos) << p.err();
}

TEST(Probe, UsageErrors) {
  for (std::vector<std::string> args : {std::vector<std::string>{"probe"},
                                        {"probe", "--tcp", "127.0.0.1:1", "--interval", "0"},
                                        {"probe", "--tcp", "127.0.0.1:1", "--interval", "1parsec"},
                                        {"probe", "--tcp", "127.0.0.1:1", "--size", "8"},
                                        {"probe", "--tcp", "no-port"},
                                        {"probe", "--tcp", "127.0.0.1:1", "extra"},
                                        {"probe", "--icmp", "no.such.host.invalid"}}) {
    CliRun r = Godwit(args);
    EXPECT_EQ(r.code, 2) << args.back() << ": " << r;
  }
}

// The client on the segment, the echo servers in a bridged container on host a.
TEST(ProbeHosts, TcpAndUdpAgainstAContainer) {
  TempDir tmp("probe");
  std::string rootfs = tmp.path() + "/rootfs";
  ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs));
  auto helper = fs::ReadFile(GODWIT_HELPERS "/udp_echo");
  ASSERT_TRUE(helper.ok());
  ASSERT_OK(fs::WriteFile(rootfs + "/udp_echo", *helper));
  ASSERT_EQ(::chmod((rootfs + "/udp_echo").c_str(), 0755), 0);
  NetnsHosts hosts(StrFormat("gwpr%d", getpid()));
  ASSERT_OK(hosts.Up());
  std::string id = StrFormat("gwprobe%d", getpid());
  std::string root = tmp.path() + "/root";
  std::string ip = NetnsHosts::ContainerIp(20);
  auto gw = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {"--root", root, "--cgroup-parent", "godwit-probe-test"});
    return Godwit(args, true, hosts.Fd("a"));
  };
  CliRun r =
      gw({"run", "--rootfs", rootfs, "--name", id, "--detach", "--ip", ip + "/15", "--bridge",
          "br0", "--", "sh", "-c", "nc -ll -p 7000 -e cat & /udp_echo 7001 & wait"});
  ASSERT_EQ(r.code, 0) << r;
  struct Cleanup {
    std::function<void()> f;
    ~Cleanup() { f(); }
  } cleanup{[&] {
    (void)gw({"delete", "-f", id});
    while (::waitpid(-1, nullptr, WNOHANG) > 0) {
    }
  }};

  ProbeClient p;
  // --udp first in the list is fine; the TCP connect retries until nc listens.
  ASSERT_OK(p.RunToEnd(
      {"--udp", ip + ":7001", "--tcp", ip + ":7000", "--interval", "1ms", "--duration", "1s"},
      hosts.Fd("c")));
  ASSERT_EQ(p.code(), 0) << p.out() << p.err();
  const auto& rep = p.report();
  ASSERT_FALSE(rep.is_discarded()) << p.out();
  EXPECT_TRUE(rep["ok"].get<bool>());
  for (const char* proto : {"tcp", "udp"}) {
    const auto& s = rep[proto];
    uint64_t sent = s["sent"].get<uint64_t>(), echoed = s["echoed"].get<uint64_t>();
    EXPECT_GT(sent, 200u) << proto;
    EXPECT_GT(echoed, 0u) << proto;
    EXPECT_LE(echoed, sent) << proto;
    EXPECT_EQ(s["lost"].get<uint64_t>(), sent - echoed) << proto;
    EXPECT_FALSE(s["corrupt"].get<bool>()) << proto;
    EXPECT_NE(s["local"].get<std::string>().find(NetnsHosts::kClient), std::string::npos);
    EXPECT_GT(s["gap_ms"]["p50"].get<double>(), 0.0) << proto;
    EXPECT_LT(s["gap_ms"]["p50"].get<double>(), 50.0) << proto;
    EXPECT_LE(s["gap_ms"]["max"].get<double>(), 1000.0) << proto;
  }
  EXPECT_EQ(rep["tcp"]["echoed"], rep["tcp"]["sent"]);
  printf("probe over the bridge: tcp gap p50 %.3f max %.3f ms, rtt p50 %.3f ms; udp %llu/%llu\n",
         rep["tcp"]["gap_ms"]["p50"].get<double>(), rep["tcp"]["gap_ms"]["max"].get<double>(),
         rep["tcp"]["rtt_ms"]["p50"].get<double>(), rep["udp"]["echoed"].get<unsigned long long>(),
         rep["udp"]["sent"].get<unsigned long long>());
}

// Pings from the client's namespace to host a, two probes at once with different sizes: a raw
// socket sees every echo reply of the namespace, and each probe counts only its own (by the
// identifier), each exactly once, intact. Then an address on the segment that nobody has: every
// request lost, nothing corrupt, the run still ok.
TEST(ProbeHosts, IcmpEchoes) {
  NetnsHosts hosts(StrFormat("gwpi%d", getpid()));
  ASSERT_OK(hosts.Up());
  ProbeClient one, two;
  Result<void> r1 = Ok(), r2 = Ok();
  std::thread t([&] {
    r1 = one.RunToEnd({"--icmp", NetnsHosts::kHostA, "--interval", "1ms", "--duration", "400ms"},
                      hosts.Fd("c"));
  });
  r2 = two.RunToEnd({"--icmp", NetnsHosts::kHostA, "--interval", "1ms", "--duration", "400ms",
                     "--size", "100"},
                    hosts.Fd("c"));
  t.join();
  ASSERT_OK(r1);
  ASSERT_OK(r2);
  for (ProbeClient* p : {&one, &two}) {
    ASSERT_EQ(p->code(), 0) << p->out() << p->err();
    const auto& r = p->report();
    EXPECT_TRUE(r["ok"].get<bool>());
    EXPECT_FALSE(r.contains("tcp"));
    const auto& s = r["icmp"];
    uint64_t sent = s["sent"].get<uint64_t>();
    EXPECT_GE(sent, 10u);  // one per wake-up: a loaded machine wakes a 1 ms timer late
    EXPECT_EQ(s["echoed"].get<uint64_t>(), sent) << s.dump();
    EXPECT_EQ(s["lost"].get<uint64_t>(), 0u);
    EXPECT_EQ(s["duplicates"].get<uint64_t>(), 0u) << "the other probe's replies counted";
    EXPECT_FALSE(s["corrupt"].get<bool>()) << s["error"];
    EXPECT_EQ(s["target"], NetnsHosts::kHostA);
    EXPECT_NE(s["local"].get<std::string>().find(NetnsHosts::kClient), std::string::npos);
    EXPECT_EQ(s["gap_ms"]["count"].get<uint64_t>(), sent - 1);
    EXPECT_GT(s["rtt_ms"]["p50"].get<double>(), 0.0);
    EXPECT_LT(s["rtt_ms"]["p50"].get<double>(), 50.0);
  }
  EXPECT_NE(one.report()["icmp"]["ident"], two.report()["icmp"]["ident"]);

  ProbeClient none;
  ASSERT_OK(none.RunToEnd(
      {"--icmp", "198.18.0.99", "--interval", "5ms", "--duration", "100ms", "--drain", "100ms"},
      hosts.Fd("c")));
  ASSERT_EQ(none.code(), 0) << none.out() << none.err();
  const auto& s = none.report()["icmp"];
  EXPECT_GT(s["sent"].get<uint64_t>(), 0u);
  EXPECT_EQ(s["echoed"].get<uint64_t>(), 0u);
  EXPECT_EQ(s["lost"], s["sent"]);
  EXPECT_EQ(s["max_gap_ms"].get<double>(), 0.0);
  EXPECT_FALSE(s["corrupt"].get<bool>());

  CliRun human = Godwit({"probe", "--icmp", NetnsHosts::kHostA, "--duration", "50ms"}, true,
                        hosts.Fd("c"));
  ASSERT_EQ(human.code, 0) << human;
  EXPECT_NE(human.out.find("icmp 198.18.0.100"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("duplicates 0"), std::string::npos) << human.out;
}

}  // namespace
}  // namespace godwit
