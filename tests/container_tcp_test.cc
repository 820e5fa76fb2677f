// TCP connections of a container across checkpoint/restore (issue 5): a busybox container runs a
// shell with `nc -ll` (a listener that forks one `tee` per connection, echoing and keeping every
// byte in its tmpfs on /tmp). The test process, in the host netns, is the client outside: it keeps
// one connection open and streams a known byte pattern while the container is checkpointed, and
// verifies every echoed byte. Then: the client never saw EOF or an error, the container's side
// kept every byte (its file), the connection is the same one (same 4-tuple in the container's
// /proc/net/tcp, same server process), the listener accepts new connections, /tmp's contents and
// the cgroup limits are back, a connection inside the container (over its loopback) carries on,
// and no network-lock table is left in the container's netns or rule on the host.
// Cases: checkpoint + delete + restore, --leave-running, --export/--import, a client in another
// netns forwarded through a (stand-in) host, --ip (connections come back closed), 20 cycles that
// leave nothing behind; a held checkpoint (EndMode::kHold) resumed or killed; and
// files::ResumeTcp (a checkpoint failing after the tree dump).
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstring>
#include <mutex>
#include <chrono>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/scope_exit.h"
#include "container/engine.h"
#include "files/files.h"
#include "proto/fd.pb.h"
#include "runtime/cgroup.h"
#include "runtime/network.h"
#include "runtime/runtime.h"
#include "tests/container_test_util.h"
#include "tests/files_harness_test.h"

namespace godwit::container {
namespace {

using testing::Sh;
using testing::CliRun;
using testing::Godwit;
using testing::Knob;
using testing::TempDir;
using Clock = std::chrono::steady_clock;

constexpr int kPort = 7000;
constexpr int kLoPort = 7001;  // a connection inside the container, over its loopback

struct ScopeExitKill {
  pid_t pid;
  ~ScopeExitKill() {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
  }
};

uint8_t Pattern(uint64_t i) {
  uint64_t x = i * 0x9E3779B97F4A7C15ull;
  return static_cast<uint8_t>((x >> 29) ^ (i >> 11));
}

// The client outside the container: one connection, a thread that writes the pattern up to a
// byte budget (paced, so the stream spans the checkpoint) and checks every echoed byte.
class Streamer {
 public:
  ~Streamer() { Stop(); }
  // netns_fd >= 0: the client's socket lives in that net namespace.
  Result<void> Connect(const std::string& ip, int port, int netns_fd = -1) {
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    // The server may still be starting: retry refused connects (bounded).
    auto end = Clock::now() + std::chrono::seconds(10);
    for (;;) {
      fd_.reset(Socket(netns_fd));
      if (::connect(fd_.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) == 0) break;
      if (Clock::now() > end) return Errno("connect %s:%d", ip.c_str(), port);
      ::usleep(20000);
    }
    ::fcntl(fd_.get(), F_SETFL, O_NONBLOCK);
    thread_ = std::thread([this] { Loop(); });
    return Ok();
  }
  // A TCP socket made in netns_fd (by a thread: setns of a net namespace is per thread).
  static int Socket(int netns_fd) {
    if (netns_fd < 0) return ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int fd = -1;
    std::thread t([&] {
      if (::setns(netns_fd, CLONE_NEWNET) == 0)
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    });
    t.join();
    return fd;
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  void AddBudget(uint64_t n) { budget_ += n; }
  void SetPace(size_t bytes_per_tick) { pace_ = bytes_per_tick; }
  uint64_t budget() const { return budget_; }
  uint64_t sent() const { return sent_; }
  uint64_t echoed() const { return echoed_; }
  std::string error() const {
    std::lock_guard<std::mutex> l(mu_);
    return error_;
  }
  double max_gap_ms() const { return max_gap_us_ / 1000.0; }
  void ResetGap() { max_gap_us_ = 0; }
  int fd() const { return fd_.get(); }
  // Waits until every byte sent came back (bounded: the peer's retransmission timer may have
  // backed off to seconds while the container was down).
  bool WaitEchoed(int seconds) {
    auto end = Clock::now() + std::chrono::seconds(seconds);
    while (Clock::now() < end) {
      if (!error().empty()) return false;
      if (echoed_ == budget_ && sent_ == budget_) return true;
      ::usleep(5000);
    }
    return false;
  }
  // "ip:port" of each end.
  std::string Local() const { return Name(false); }
  std::string Peer() const { return Name(true); }

 private:
  std::string Name(bool peer) const {
    sockaddr_in a{};
    socklen_t l = sizeof(a);
    int r = peer ? ::getpeername(fd_.get(), reinterpret_cast<sockaddr*>(&a), &l)
                 : ::getsockname(fd_.get(), reinterpret_cast<sockaddr*>(&a), &l);
    if (r < 0) return "?";
    char ip[INET_ADDRSTRLEN];
    ::inet_ntop(AF_INET, &a.sin_addr, ip, sizeof(ip));
    return StrFormat("%s:%d", ip, ntohs(a.sin_port));
  }
  void Fail(const std::string& e) {
    std::lock_guard<std::mutex> l(mu_);
    if (error_.empty()) error_ = e;
  }
  void Loop() {
    std::vector<uint8_t> buf(64 << 10);
    auto last = Clock::now();
    auto next_send = last;
    while (!stop_) {
      bool want_out = sent_ < budget_ && Clock::now() >= next_send;
      pollfd pf{fd_.get(), static_cast<short>(POLLIN | (want_out ? POLLOUT : 0)), 0};
      int n = ::poll(&pf, 1, 1);
      if (n < 0 && errno != EINTR) return Fail(StrFormat("poll: %s", strerror(errno)));
      if (pf.revents & (POLLERR | POLLHUP)) {
        int err = 0;
        socklen_t l = sizeof(err);
        ::getsockopt(fd_.get(), SOL_SOCKET, SO_ERROR, &err, &l);
        return Fail(StrFormat("connection broken: revents %#x, %s", pf.revents, strerror(err)));
      }
      if (pf.revents & POLLIN) {
        ssize_t r = ::read(fd_.get(), buf.data(), buf.size());
        if (r == 0) return Fail("EOF from the server");
        if (r < 0 && errno != EAGAIN) return Fail(StrFormat("read: %s", strerror(errno)));
        for (ssize_t k = 0; k < r; k++)
          if (buf[k] != Pattern(echoed_ + k))
            return Fail(StrFormat("echoed byte %llu is %#x, want %#x",
                                  static_cast<unsigned long long>(echoed_ + k), buf[k],
                                  Pattern(echoed_ + k)));
        if (r > 0) {
          auto now = Clock::now();
          auto gap = std::chrono::duration_cast<std::chrono::microseconds>(now - last).count();
          if (gap > max_gap_us_) max_gap_us_ = gap;
          last = now;
          echoed_ += r;
        }
      } else if (echoed_ == sent_) {
        last = Clock::now();  // nothing in flight: idle is no gap
      }
      // Paced: at most pace_ bytes per 5 ms tick, so the stream spans the checkpoint.
      if ((pf.revents & POLLOUT) && want_out) {
        size_t len = std::min<uint64_t>(pace_, budget_ - sent_);
        for (size_t k = 0; k < len; k++) buf[k] = Pattern(sent_ + k);
        ssize_t w = ::send(fd_.get(), buf.data(), len, MSG_NOSIGNAL);
        if (w < 0 && errno != EAGAIN) return Fail(StrFormat("send: %s", strerror(errno)));
        if (w > 0) sent_ += w;
        next_send = std::max(next_send + std::chrono::milliseconds(5),
                             Clock::now() - std::chrono::milliseconds(20));
      }
    }
  }

  UniqueFd fd_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> budget_{0}, sent_{0}, echoed_{0};
  std::atomic<size_t> pace_{4096};  // ~800 KB/s
  std::atomic<int64_t> max_gap_us_{0};
  mutable std::mutex mu_;
  std::string error_;
};

// A new connection to the listener echoes a line back.
Result<void> EchoOnce(const std::string& ip, int port) {
  UniqueFd s(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  ::inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
  timeval tv{10, 0};
  ::setsockopt(s.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  if (::connect(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0)
    return Errno("connect %s:%d", ip.c_str(), port);
  if (::send(s.get(), "ping\n", 5, MSG_NOSIGNAL) != 5) return Errno("send");
  char buf[8] = {};
  size_t got = 0;
  while (got < 5) {
    ssize_t n = ::read(s.get(), buf + got, 5 - got);
    if (n <= 0) return Errno("read echo (%zu bytes so far)", got);
    got += n;
  }
  if (std::string(buf, 5) != "ping\n") return Err("bad echo %s", buf);
  return Ok();
}

// The container's TCP entries (its /proc/PID/net/tcp): "local remote state" in hex as the
// kernel prints them.
std::string HexAddr(const std::string& ip_port) {
  auto c = ip_port.find(':');
  in_addr a{};
  ::inet_pton(AF_INET, ip_port.substr(0, c).c_str(), &a);
  return StrFormat("%08X:%04X", a.s_addr, atoi(ip_port.c_str() + c + 1));
}
// busybox nc listens on the IPv6 wildcard: its connections show in tcp6, v4-mapped.
bool HasEstablished(pid_t pid, const std::string& local, const std::string& remote) {
  auto t4 = fs::ReadFile(StrFormat("/proc/%d/net/tcp", pid));
  auto t6 = fs::ReadFile(StrFormat("/proc/%d/net/tcp6", pid));
  const std::string m = "0000000000000000FFFF0000";
  const std::string v4 = HexAddr(local) + " " + HexAddr(remote) + " 01 ";
  const std::string v6 = m + HexAddr(local) + " " + m + HexAddr(remote) + " 01 ";
  return (t4.ok() && t4->find(v4) != std::string::npos) ||
         (t6.ok() && t6->find(v6) != std::string::npos);
}

class ContainerTcp : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwtcp%d", getpid());
    ip_ = StrFormat("198.19.%d.60", 100 + getpid() % 100);
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
    // One tee per connection: echoes and keeps the bytes in the container's tmpfs.
    ASSERT_OK(fs::WriteFile(rootfs_ + "/srv.sh", "#!/bin/sh\nexec tee /tmp/rx.$$\n"));
    ASSERT_EQ(::chmod((rootfs_ + "/srv.sh").c_str(), 0755), 0);
  }
  void TearDown() override {
    client_.Stop();
    if (host_ns_.valid()) (void)Gw({"--root", root_, "delete", "-f", id_});
    (void)runtime::Delete(root_, id_, true);
    Reap();
  }
  void Reap() {
    if (pid_ > 0) ::waitpid(pid_, nullptr, 0);
    pid_ = 0;
  }
  // The godwit binary in the fixture's host (the test's netns, or a stand-in's).
  CliRun Gw(const std::vector<std::string>& args, bool keep_out = true) {
    return Godwit(args, keep_out, host_ns_.valid() ? host_ns_.get() : -1);
  }
  pid_t StatePid() {
    CliRun s = Gw({"--root", root_, "state", id_});
    auto j = nlohmann::json::parse(s.out, nullptr, false);
    if (s.code != 0 || j.is_discarded()) return 0;
    return j.value("pid", 0);
  }

  // The container, its server, and the client's connection (with `first` bytes echoed).
  void Start(uint64_t first = 64 << 10) {
    CliRun r = Gw({"--root", root_, "run", "--rootfs", rootfs_, "--name", id_, "--detach",
                       "--hostname", "tcp-" + id_, "--memory", "64M", "--pids", "64", "--cpus",
                       "0.5", "--cpu-shares", "512", "--ip", ip_ + "/24", "--", "sh", "-c",
                       StrFormat("mount -t tmpfs -o size=24m tmpfs /tmp || exit 1; "
                                 "echo kept-in-tmpfs > /tmp/keep; "
                                 "nc -ll -p %d -e /srv.sh & nc -ll -p %d -e cat & "
                                 "(i=0; while true; do i=$((i+1)); echo $i; usleep 20000; done) | "
                                 "(until nc 127.0.0.1 %d; do usleep 20000; done) > /tmp/lo & "
                                 "wait",
                                 kPort, kLoPort, kLoPort)},
                      false);
    ASSERT_EQ(r.code, 0) << r.out;
    pid_ = StatePid();
    ASSERT_GT(pid_, 0);
    ASSERT_OK(client_.Connect(ip_, kPort, client_ns_.valid() ? client_ns_.get() : -1));
    client_.AddBudget(first);
    ASSERT_TRUE(client_.WaitEchoed(20)) << client_.error();
    local_ = client_.Local();
    peer_ = client_.Peer();
    ASSERT_EQ(peer_, StrFormat("%s:%d", ip_.c_str(), kPort));
    ASSERT_TRUE(HasEstablished(pid_, peer_, local_))
        << peer_ << " " << local_ << "\n" << *fs::ReadFile(StrFormat("/proc/%d/net/tcp6", pid_));
    // The server's file for this connection: /tmp/rx.<tee's pid in the container>.
    auto l = fs::ListDir(StrFormat("/proc/%d/root/tmp", pid_));
    ASSERT_TRUE(l.ok());
    for (const auto& n : *l)
      if (n.rfind("rx.", 0) == 0) rx_ = n;
    ASSERT_FALSE(rx_.empty());
  }

  // Checkpoint with args while the client streams `during` more bytes (paced: the stream spans
  // the checkpoint); returns the frozen time.
  double Checkpoint(const std::vector<std::string>& extra, uint64_t during = 256 << 10) {
    client_.AddBudget(during);
    std::vector<std::string> a = {"--root", root_, "--json", "checkpoint", id_};
    a.insert(a.end(), extra.begin(), extra.end());
    CliRun c = Gw(a);
    EXPECT_EQ(c.code, 0) << c.out;
    auto j = nlohmann::json::parse(c.out, nullptr, false);
    if (j.is_discarded()) return -1;
    times_ = StrFormat("freeze %.1f, namespaces %.1f, tree %.1f, frozen %.1f, total %.1f ms",
                       j.value("freeze_ms", -1.0), j.value("namespaces_ms", -1.0),
                       j.value("tree_ms", -1.0), j.value("frozen_ms", -1.0),
                       j.value("total_ms", -1.0));
    return j.value("frozen_ms", -1.0);
  }

  void Restore(const std::vector<std::string>& extra) {
    pid_t before = pid_;
    Reap();
    ASSERT_NE(Gw({"--root", root_, "state", id_}).code, 0) << "deleted by the checkpoint";
    std::vector<std::string> a = {"--root", root_, "restore", id_, "--detach"};
    a.insert(a.end(), extra.begin(), extra.end());
    auto t0 = Clock::now();
    CliRun r = Gw(a);
    restore_ms_ = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
    ASSERT_EQ(r.code, 0) << r.out;
    pid_ = StatePid();
    ASSERT_EQ(pid_, before);
  }

  // The connection carried every byte both ways and is the same one.
  void CheckConnection() {
    ASSERT_TRUE(client_.WaitEchoed(60))
        << "error: " << client_.error() << "; sent " << client_.sent() << " echoed "
        << client_.echoed() << " of " << client_.budget();
    EXPECT_EQ(client_.Local(), local_);
    EXPECT_EQ(client_.Peer(), peer_);
    struct tcp_info ti {};
    socklen_t l = sizeof(ti);
    ASSERT_EQ(::getsockopt(client_.fd(), SOL_TCP, TCP_INFO, &ti, &l), 0);
    EXPECT_EQ(ti.tcpi_state, TCP_ESTABLISHED);
    EXPECT_TRUE(HasEstablished(pid_, peer_, local_)) << "the container has the same 4-tuple";
    // The server side kept every byte, in order.
    auto got = fs::ReadFile(StrFormat("/proc/%d/root/tmp/%s", pid_, rx_.c_str()));
    ASSERT_TRUE(got.ok());
    ASSERT_EQ(got->size(), client_.budget());
    for (size_t i = 0; i < got->size(); i++)
      if (static_cast<uint8_t>((*got)[i]) != Pattern(i)) {
        ADD_FAILURE() << "server byte " << i << " differs";
        break;
      }
    // Its tee is the same process (pid in the container from the file name).
    auto comm = fs::ReadFile(StrFormat("/proc/%d/root/proc/%s/comm", pid_, rx_.c_str() + 3));
    ASSERT_TRUE(comm.ok());
    EXPECT_EQ(*comm, "tee\n");
  }

  // No lock table in the container's netns, and no lock rule naming its address on the host
  // (other tests' locks may be there meanwhile).
  // The loopback connection inside the container: its echo of a counter is 1, 2, ... N with no
  // gap, and N grows (bounded wait). Returns N.
  int LoopbackCount() {
    auto t = fs::ReadFile(StrFormat("/proc/%d/root/tmp/lo", pid_));
    if (!t.ok()) return -1;
    int n = 0;
    for (const auto& line : fs::Split(*t, '\n')) {
      if (line.empty()) continue;
      if (atoi(line.c_str()) != n + 1) return -2 - n;  // a gap or a reconnect
      n++;
    }
    return n;
  }
  void CheckLoopback() {
    int n = LoopbackCount();
    ASSERT_GT(n, 0) << "loopback stream broken";
    auto end = Clock::now() + std::chrono::seconds(30);
    int m = n;
    while (m <= n + 2 && m > 0 && Clock::now() < end) {
      ::usleep(20000);
      m = LoopbackCount();
    }
    EXPECT_GT(m, n + 2) << "the loopback connection inside the container carries on";
  }

  void CheckNoLock() {
    auto t = Sh(StrFormat("nsenter -t %d -n nft list tables", pid_));
    ASSERT_OK(t);
    EXPECT_EQ(t->find("godwit_lock"), std::string::npos) << *t;
    auto host = Sh(host_sh_ + "nft list ruleset");
    ASSERT_OK(host);
    EXPECT_EQ(host->find(ip_ + " "), std::string::npos) << *host;
  }

  void CheckEnvironment() {
    EXPECT_EQ(*fs::ReadFile(StrFormat("/proc/%d/root/tmp/keep", pid_)), "kept-in-tmpfs\n");
    EXPECT_EQ(Knob(pid_, "memory", "memory.limit_in_bytes", "memory.max"),
              std::to_string(64 << 20));
    EXPECT_EQ(Knob(pid_, "pids", "pids.max", "pids.max"), "64");
    std::string quota = Knob(pid_, "cpu", "cpu.cfs_quota_us", "cpu.max");
    EXPECT_TRUE(quota == "50000" || quota == "50000 100000") << quota;
    std::string shares = Knob(pid_, "cpu", "cpu.shares", "cpu.weight");
    EXPECT_TRUE(shares == "512" || shares == "20") << shares;  // weight: runc's conversion
    EXPECT_OK(EchoOnce(ip_, kPort));
  }

  TempDir tmp_{"ctcp"};
  std::string id_, ip_, root_, rootfs_, local_, peer_, rx_, times_;
  double restore_ms_ = 0;  // the restore command, as the test sees it
  // A stand-in host (godwit runs in it, the container's veth ends there) and the client's netns.
  UniqueFd host_ns_, client_ns_;
  std::string host_sh_;  // "nsenter ... " for commands in the stand-in host
  pid_t pid_ = 0;
  Streamer client_;
};

TEST_F(ContainerTcp, CheckpointDeleteRestoreKeepsTheConnection) {
  Start();
  if (HasFatalFailure()) return;
  std::string img = tmp_.path() + "/ckpt";
  client_.ResetGap();
  double frozen = Checkpoint({"--image-path", img});
  // While the container is gone, the host holds its peers' packets (the lock's rules name it).
  auto held = Sh("nft list ruleset");
  ASSERT_OK(held);
  EXPECT_NE(held->find("daddr " + ip_ + " "), std::string::npos) << *held;
  Restore({"--image-path", img});
  if (HasFatalFailure()) return;
  CheckConnection();
  CheckNoLock();
  CheckEnvironment();
  CheckLoopback();
  // More data after the restore, both ways.
  client_.AddBudget(128 << 10);
  CheckConnection();
  printf("delete+restore: checkpoint %s; restore command %.1f ms; client's longest echo gap "
         "%.1f ms, %llu bytes\n",
         times_.c_str(), restore_ms_, client_.max_gap_ms(),
         static_cast<unsigned long long>(client_.budget()));
  RecordProperty("frozen_ms", StrFormat("%.1f", frozen));
  RecordProperty("client_gap_ms", StrFormat("%.1f", client_.max_gap_ms()));
}

TEST_F(ContainerTcp, LeaveRunningReleasesTheLock) {
  Start();
  if (HasFatalFailure()) return;
  pid_t pid = pid_;
  client_.ResetGap();
  double frozen = Checkpoint({"--image-path", tmp_.path() + "/ckpt", "--leave-running"});
  EXPECT_EQ(StatePid(), pid);
  CheckNoLock();
  CheckConnection();
  client_.AddBudget(128 << 10);
  CheckConnection();
  EXPECT_OK(EchoOnce(ip_, kPort));
  printf("leave-running: frozen %.1f ms, client's longest echo gap %.1f ms\n", frozen,
         client_.max_gap_ms());
}

// Restored with another address (--ip): its established connections come back closed (their
// address is not its own any more; the restore does not fail on them), its listener accepts on the
// new address, and no lock is left.
TEST_F(ContainerTcp, AnotherIpClosesTheConnections) {
  Start();
  if (HasFatalFailure()) return;
  std::string img = tmp_.path() + "/ckpt";
  Checkpoint({"--image-path", img});
  client_.Stop();
  std::string ip2 = StrFormat("198.19.%d.61", 100 + getpid() % 100);
  Restore({"--image-path", img, "--ip", ip2 + "/24"});
  if (HasFatalFailure()) return;
  EXPECT_FALSE(HasEstablished(pid_, peer_, local_));
  EXPECT_OK(EchoOnce(ip2, kPort));
  CheckNoLock();
  auto host = Sh("nft list ruleset");
  ASSERT_OK(host);
  EXPECT_EQ(host->find(ip2 + " "), std::string::npos) << *host;
}

// The client in its own netns, routed through the (stand-in) host: its packets are forwarded, so
// while the container is down the host lock's forward hook holds them.
TEST_F(ContainerTcp, ClientInAnotherNetnsThroughTheHostsForwarding) {
  testing::NsHolder host, client;
  ASSERT_OK(host.Start(CLONE_NEWNET, [] {
    return ::system("ip link set lo up && sysctl -qw net.ipv4.ip_forward=1") == 0 ? 0 : 1;
  }));
  ASSERT_OK(client.Start(CLONE_NEWNET, [] { return ::system("ip link set lo up") == 0 ? 0 : 1; }));
  std::string h = StrFormat("gwfh%d", getpid() % 100000);
  std::string c = StrFormat("gwfc%d", getpid() % 100000);
  ASSERT_OK(Sh(StrFormat("ip link add %s netns %d type veth peer name %s netns %d", h.c_str(),
                         host.pid(), c.c_str(), client.pid())));
  ASSERT_OK(Sh(StrFormat("nsenter -t %d -n sh -c 'ip addr add 198.18.77.1/30 dev %s && "
                         "ip link set %s up'", host.pid(), h.c_str(), h.c_str())));
  ASSERT_OK(Sh(StrFormat("nsenter -t %d -n sh -c 'ip addr add 198.18.77.2/30 dev %s && "
                         "ip link set %s up && ip route add default via 198.18.77.1'",
                         client.pid(), c.c_str(), c.c_str())));
  auto hns = host.Ns("net");
  auto cns = client.Ns("net");
  ASSERT_OK(hns);
  ASSERT_OK(cns);
  host_ns_ = std::move(*hns);
  client_ns_ = std::move(*cns);
  host_sh_ = StrFormat("nsenter -t %d -n ", host.pid());
  ScopeExit down([&] {
    client_.Stop();
    (void)Gw({"--root", root_, "delete", "-f", id_});
    Reap();
    host_ns_.reset();
  });
  Start();
  if (HasFatalFailure()) return;
  EXPECT_EQ(client_.Local(), "198.18.77.2:" + local_.substr(local_.find(':') + 1));
  std::string img = tmp_.path() + "/ckpt";
  double frozen = Checkpoint({"--image-path", img});
  Restore({"--image-path", img});
  if (HasFatalFailure()) return;
  CheckConnection();
  CheckNoLock();
  client_.AddBudget(64 << 10);
  CheckConnection();
  printf("forwarded client: frozen %.1f ms, client's longest echo gap %.1f ms\n", frozen,
         client_.max_gap_ms());
}

TEST_F(ContainerTcp, ExportImportKeepsTheConnection) {
  Start();
  if (HasFatalFailure()) return;
  std::string file = tmp_.path() + "/ckpt.godwit";
  Checkpoint({"--image-path", tmp_.path() + "/ckpt", "--export", file});
  ASSERT_OK(fs::RemoveAll(tmp_.path() + "/ckpt"));
  Restore({"--import", file});
  if (HasFatalFailure()) return;
  CheckConnection();
  CheckNoLock();
  CheckEnvironment();
  CheckLoopback();
}

TEST_F(ContainerTcp, TwentyCyclesWithALiveConnectionLeaveNothingBehind) {
  Start();
  if (HasFatalFailure()) return;
  std::string veth = runtime::HostVethName(root_, id_);
  std::string img = tmp_.path() + "/ckpt";
  std::string frozen, gaps;
  client_.SetPace(512);  // 64 KiB in ~640 ms: streaming while frozen and while down
  for (int i = 0; i < 20; i++) {
    (void)fs::RemoveAll(img);
    client_.ResetGap();
    double f = Checkpoint({"--image-path", img}, 64 << 10);
    Restore({"--image-path", img});
    if (HasFatalFailure()) return;
    ASSERT_TRUE(client_.WaitEchoed(60)) << "cycle " << i << ": " << client_.error();
    frozen += StrFormat("%.0f ", f);
    gaps += StrFormat("%.0f ", client_.max_gap_ms());
  }
  CheckConnection();
  CheckNoLock();
  CheckLoopback();
  pid_t pid = pid_;
  client_.Stop();
  ASSERT_EQ(Godwit({"--root", root_, "delete", "-f", id_}).code, 0);
  Reap();
  EXPECT_FALSE(fs::Exists(StrFormat("/proc/%d", pid)));
  EXPECT_FALSE(runtime::LinkExists(veth));
  auto cgs = Sh("find /sys/fs/cgroup -maxdepth 3 -name " + id_);
  ASSERT_OK(cgs);
  EXPECT_EQ(*cgs, "");
  auto mounts = fs::ReadFile("/proc/self/mountinfo");
  ASSERT_TRUE(mounts.ok());
  EXPECT_EQ(mounts->find(tmp_.path()), std::string::npos) << *mounts;
  EXPECT_EQ(mounts->find(id_), std::string::npos) << *mounts;
  auto host = Sh("nft list ruleset");
  ASSERT_OK(host);
  EXPECT_EQ(host->find(ip_ + " "), std::string::npos) << *host;
  printf("20 cycles: frozen ms %s\n  client's longest echo gap ms %s\n", frozen.c_str(),
         gaps.c_str());
  RecordProperty("frozen_ms", frozen);
}

// A held checkpoint (EndMode::kHold, a migration source's way), through the library in this
// process: the images are complete, the container is still there, frozen, its connection locked.
// Returns the hold and the lock table's name.
std::pair<std::unique_ptr<HeldCheckpoint>, std::string> HoldCheckpoint(const std::string& root,
                                                                      const std::string& id,
                                                                      const std::string& img,
                                                                      pid_t pid) {
  CheckpointOptions o;
  o.root = root;
  o.id = id;
  o.image_path = img;
  o.end = EndMode::kHold;
  auto r = Checkpoint(o);
  EXPECT_OK(r);
  if (!r.ok()) return {};
  EXPECT_TRUE(r->held != nullptr);
  EXPECT_TRUE(fs::Exists(img + "/container/inventory.img")) << "the images are complete";
  EXPECT_TRUE(fs::Exists(StrFormat("/proc/%d", pid))) << "the container is still there";
  auto cg = runtime::OpenCgroup(id);
  EXPECT_OK(cg);
  if (cg.ok()) {
    auto frozen = (*cg)->IsFrozen();
    EXPECT_TRUE(frozen.ok() && *frozen) << "held frozen";
  }
  img::NetLock nl;
  auto set = images::ImageSet::Open(img + "/tree");
  EXPECT_OK(set);
  if (set.ok()) {
    EXPECT_OK(set->ReadOne("files-netlock.img", &nl));
  }
  auto tables = Sh(StrFormat("nsenter -t %d -n nft list tables", pid));
  EXPECT_OK(tables);
  if (tables.ok() && !nl.table().empty()) {
    EXPECT_NE(tables->find(nl.table()), std::string::npos) << "locked in its netns: " << *tables;
  }
  return {std::move(r->held), nl.table()};
}

// Hold then resume: the workload carries on exactly as before, the same connection carries data
// both ways after, the cgroup is thawed and no lock table is left anywhere.
TEST_F(ContainerTcp, HoldThenResumeLeavesItRunning) {
  Start();
  if (HasFatalFailure()) return;
  pid_t pid = pid_;
  client_.AddBudget(256 << 10);
  auto [held, table] = HoldCheckpoint(root_, id_, tmp_.path() + "/ckpt", pid_);
  if (HasFailure() || !held) return;
  ASSERT_FALSE(table.empty());
  ASSERT_OK(held->Resume());
  EXPECT_FALSE(held->Kill(false).ok()) << "resumed: no longer held";
  held.reset();
  EXPECT_EQ(StatePid(), pid);
  auto frozen = (*runtime::OpenCgroup(id_))->IsFrozen();
  ASSERT_OK(frozen);
  EXPECT_FALSE(*frozen);
  for (const std::string& where : {StrFormat("nsenter -t %d -n ", pid_), std::string()}) {
    auto t = Sh(where + "nft list tables");
    ASSERT_OK(t);
    EXPECT_EQ(t->find(table), std::string::npos) << where << ": " << *t;
  }
  CheckNoLock();
  CheckConnection();
  client_.AddBudget(128 << 10);
  CheckConnection();
  CheckLoopback();
  EXPECT_OK(EchoOnce(ip_, kPort));
}

// Hold then kill: what a checkpoint without --leave-running does (the host holds the peers'
// packets while the container is gone; the restore gets the same connection back).
TEST_F(ContainerTcp, HoldThenKillIsACheckpoint) {
  Start();
  if (HasFatalFailure()) return;
  std::string img = tmp_.path() + "/ckpt";
  client_.AddBudget(256 << 10);
  auto [held, table] = HoldCheckpoint(root_, id_, img, pid_);
  if (HasFailure() || !held) return;
  ASSERT_OK(held->Kill(/*release_host_lock=*/false));
  held.reset();  // killed: nothing to resume
  auto host = Sh("nft list ruleset");
  ASSERT_OK(host);
  EXPECT_NE(host->find("daddr " + ip_ + " "), std::string::npos) << *host;
  Restore({"--image-path", img});
  if (HasFatalFailure()) return;
  CheckConnection();
  CheckNoLock();
  CheckEnvironment();
  CheckLoopback();
  client_.AddBudget(128 << 10);
  CheckConnection();
}

// Hold then kill releasing the host lock (a migration source once the destination runs the
// container): nothing of godwit's is left in the host's nftables.
TEST_F(ContainerTcp, HoldThenKillReleasingTheHostLockLeavesNoLock) {
  Start();
  if (HasFatalFailure()) return;
  std::string img = tmp_.path() + "/ckpt";
  auto [held, table] = HoldCheckpoint(root_, id_, img, pid_);
  if (HasFailure() || !held) return;
  ASSERT_OK(held->Kill(/*release_host_lock=*/true));
  held.reset();
  client_.Stop();
  EXPECT_NE(Gw({"--root", root_, "state", id_}).code, 0) << "deleted";
  auto host = Sh("nft list ruleset");
  ASSERT_OK(host);
  EXPECT_EQ(host->find(ip_ + " "), std::string::npos) << *host;
  EXPECT_EQ(host->find(table), std::string::npos) << *host;
}

// A container checkpoint failing after its tree dump thaws a tree whose connections were left in
// repair mode and locked (to be killed): files::ResumeTcp gives them back from the images alone.
TEST(ContainerTcpResume, ResumeTcpGivesTheConnectionBack) {
  int l = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  UniqueFd lfd(l);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof(a);
  ASSERT_EQ(::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof(a)), 0);
  ASSERT_EQ(::listen(l, 4), 0);
  ASSERT_EQ(::getsockname(l, reinterpret_cast<sockaddr*>(&a), &al), 0);
  // The tree: one stopped process holding the connected end at fd 3.
  pid_t pid = files::testing::SpawnStopped([&] {
    int c = ::socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof(a)) < 0) return 10;
    return ::dup2(c, 3) == 3 ? 0 : 11;
  });
  ASSERT_GT(pid, 0);
  ScopeExitKill kill_it{pid};
  UniqueFd srv(::accept4(l, nullptr, nullptr, SOCK_CLOEXEC));
  ASSERT_TRUE(srv.valid());
  std::string dir = files::testing::TempDir("tcpresume");
  ASSERT_FALSE(dir.empty());
  files::DumpOptions o;
  o.tcp_established = true;  // not leave_running, no Resume: left in repair mode and locked
  ASSERT_OK(files::testing::DumpPids({pid}, dir, o));
  auto set = images::ImageSet::Open(dir);
  ASSERT_OK(set);
  img::NetLock nl;
  ASSERT_OK(set->ReadOne("files-netlock.img", &nl));
  auto tables = Sh("nft list tables");
  ASSERT_OK(tables);
  ASSERT_NE(tables->find(nl.table()), std::string::npos) << "locked";
  ASSERT_OK(files::LockOutside(*set, pid));  // same netns as ours: nothing to add
  EXPECT_OK(files::ResumeTcp(*set));
  tables = Sh("nft list tables");
  ASSERT_OK(tables);
  EXPECT_EQ(tables->find(nl.table()), std::string::npos) << *tables;
  if (tables->find(nl.table()) != std::string::npos)
    (void)Sh("nft delete table inet " + nl.table());
  // Both ways through the tree's end (a copy taken from it): live, out of repair mode.
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)));
  UniqueFd c(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), 3, 0)));
  ASSERT_TRUE(c.valid());
  timeval tv{5, 0};
  ::setsockopt(srv.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ::setsockopt(c.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  ASSERT_EQ(::send(c.get(), "ping", 4, MSG_NOSIGNAL), 4);
  char buf[4];
  ASSERT_EQ(::recv(srv.get(), buf, 4, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(buf, 4), "ping");
  ASSERT_EQ(::send(srv.get(), "pong", 4, MSG_NOSIGNAL), 4);
  ASSERT_EQ(::recv(c.get(), buf, 4, MSG_WAITALL), 4);
  EXPECT_EQ(std::string(buf, 4), "pong");
  (void)fs::RemoveAll(dir);
}

}  // namespace
}  // namespace godwit::container
