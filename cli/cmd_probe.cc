// `godwit probe --tcp HOST:PORT [--udp HOST:PORT] [--icmp HOST] [--interval 1ms] [--duration S]
//  [--until-file F] [--ready-file F] [--size N] [--connect-timeout S] [--drain S] [--json]`:
// the downtime a real client sees, measured from the client's side (the migration's researchers'
// tool). Every interval it sends a small numbered message to an echo server (over one TCP
// connection, and/or as one UDP datagram, and/or as the payload of an ICMP echo request, which
// the target's kernel answers: what `ping -i` sees, from a raw socket, so as root) and reads the
// echoes back. It records each message's
// round trip and the gaps between consecutive echoes received: while the server is frozen or in
// flight, no echo comes back, and the longest gap is the outage as this client lived it,
// retransmission timers included.
//
// The TCP echo must be exactly the byte stream sent (message i is a function of i and a per-run
// salt): any other byte is corruption. The run stops after --duration, when --until-file exists,
// or on SIGINT/SIGTERM; then it stops sending, waits (up to --drain) for the echoes still in
// flight, and prints the report: messages sent/echoed/lost, gap and RTT percentiles, and the
// client socket's TCP counters (TCP_INFO: retransmitted segments, RTO timeouts and backoff). If
// TCP echoes are still missing at the end, the time since the last one counts as a gap.
// Exit 0, or 1 (after the report) if the TCP connection broke, an echo was corrupt, or TCP
// messages were never echoed.
#include <fcntl.h>
#include <linux/tcp.h>  // the kernel's struct tcp_info (glibc's stops at tcpi_total_retrans)
#include <netdb.h>
#include <netinet/icmp6.h>
#include <netinet/in.h>
#include <netinet/ip_icmp.h>
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/command.h"
#include "common/args.h"
#include "common/fs.h"
#include "common/inet_checksum.h"
#include "common/unique_fd.h"

namespace godwit::cli {
namespace {

using nlohmann::json;

// Wall-clock ms since the epoch of a CLOCK_MONOTONIC time in ns (0 stays 0).
double UnixMs(int64_t mono_ns) {
  if (mono_ns == 0) return 0;
  timespec m, r;
  clock_gettime(CLOCK_MONOTONIC, &m);
  clock_gettime(CLOCK_REALTIME, &r);
  int64_t offset = (r.tv_sec - m.tv_sec) * 1000000000LL + (r.tv_nsec - m.tv_nsec);
  return (mono_ns + offset) / 1e6;
}

int64_t NowNs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// "1ms", "500us", "0.5ms", "2s", "1500ns"; a bare number is in default_unit_ns.
Result<int64_t> ParseDurationNs(const std::string& s, int64_t default_unit_ns, const char* what) {
  char* end = nullptr;
  double v = strtod(s.c_str(), &end);
  std::string unit = end ? end : "";
  double mul = 0;
  if (unit.empty()) mul = static_cast<double>(default_unit_ns);
  if (unit == "ns") mul = 1;
  if (unit == "us") mul = 1e3;
  if (unit == "ms") mul = 1e6;
  if (unit == "s") mul = 1e9;
  if (end == s.c_str() || mul == 0 || !(v > 0) || v * mul > 1e18)
    return MakeError(ErrorKind::kUsage, 0, "--%s %s: want a positive duration (1ms, 500us, 2s)",
                     what, s.c_str());
  return static_cast<int64_t>(std::llround(v * mul));
}

// "HOST:PORT" or "[V6]:PORT" -> an address (numeric or a name).
Result<sockaddr_storage> Resolve(const std::string& target, int socktype, socklen_t* len) {
  ASSIGN_OR_RETURN(auto hp, SplitHostPort(target));
  const std::string& host = hp.first;
  const std::string& port = hp.second;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = socktype;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), port.c_str(), &hints, &res);
  if (rc != 0 || !res)
    return MakeError(ErrorKind::kUsage, 0, "%s: %s", target.c_str(), gai_strerror(rc));
  sockaddr_storage ss{};
  memcpy(&ss, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return ss;
}

std::string AddrString(const sockaddr_storage& ss) {
  char host[NI_MAXHOST] = "?", serv[NI_MAXSERV] = "?";
  ::getnameinfo(reinterpret_cast<const sockaddr*>(&ss), sizeof(ss), host, sizeof(host), serv,
                sizeof(serv), NI_NUMERICHOST | NI_NUMERICSERV);
  return ss.ss_family == AF_INET6 ? StrFormat("[%s]:%s", host, serv)
                                  : StrFormat("%s:%s", host, serv);
}

// Message seq of a run: 8 bytes of seq (big endian), then bytes derived from seq and the salt.
// Every byte depends on seq, so a stale, duplicated, reordered or altered message shows.
void FillMessage(uint64_t salt, uint64_t seq, size_t size, uint8_t* out) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(seq >> (56 - 8 * i));
  uint64_t x = salt ^ (seq * 0x9E3779B97F4A7C15ull);
  for (size_t i = 8; i < size; ++i) {
    // splitmix64 steps
    x += 0x9E3779B97F4A7C15ull;
    uint64_t z = x;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    out[i] = static_cast<uint8_t>(z ^ (z >> 31));
  }
}

uint64_t SeqOf(const uint8_t* m) {
  uint64_t seq = 0;
  for (int i = 0; i < 8; ++i) seq = (seq << 8) | m[i];
  return seq;
}

// Nearest-rank percentile of a sorted sample, in ms.
double Pct(const std::vector<int64_t>& sorted_ns, double p) {
  if (sorted_ns.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(p * sorted_ns.size()));
  if (rank < 1) rank = 1;
  if (rank > sorted_ns.size()) rank = sorted_ns.size();
  return sorted_ns[rank - 1] / 1e6;
}

json Distribution(std::vector<int64_t> ns) {
  std::sort(ns.begin(), ns.end());
  return {{"count", ns.size()},
          {"p50", Pct(ns, 0.50)},
          {"p99", Pct(ns, 0.99)},
          {"p999", Pct(ns, 0.999)},
          {"max", ns.empty() ? 0.0 : ns.back() / 1e6}};
}

// What one stream (TCP or UDP) saw.
struct Stream {
  std::string target, local;
  UniqueFd fd;
  uint64_t sent = 0, echoed = 0;
  std::vector<int64_t> sent_ns;  // send time by seq
  std::vector<int64_t> rtt_ns, gap_ns;
  int64_t last_echo_ns = 0;
  // The longest gaps (length, end on CLOCK_MONOTONIC), longest first (of equal ones, the first):
  // to line each stall up with what happened then. The front is the max gap.
  static constexpr size_t kLongest = 16;
  std::vector<std::pair<int64_t, int64_t>> longest;
  // When the run stopped sending (0: not yet). A gap counts until then only: once the client
  // stops, its peer's last echoes can wait for the client's delayed ACK (Nagle on the echoing
  // side: ~40 ms here), which is not the service's stall.
  int64_t stop_ns = 0;
  std::string error;  // why the stream failed (broken or corrupt); "" if fine
  bool corrupt = false, broken = false;

  void Echo(uint64_t seq, int64_t now) {
    rtt_ns.push_back(now - sent_ns[seq]);
    if (last_echo_ns && (!stop_ns || last_echo_ns < stop_ns)) {
      AddGap((stop_ns ? std::min(now, stop_ns) : now) - last_echo_ns, now);
    }
    last_echo_ns = now;
    echoed++;
  }
  void AddGap(int64_t g, int64_t end) {
    gap_ns.push_back(g);
    if (longest.size() == kLongest && g <= longest.back().first) return;
    auto at = std::upper_bound(longest.begin(), longest.end(), std::make_pair(g, end),
                               [](const auto& a, const auto& b) { return a.first > b.first; });
    longest.insert(at, {g, end});
    if (longest.size() > kLongest) longest.pop_back();
  }
  void Fail(bool is_corrupt, const std::string& why) {
    if (!error.empty()) return;
    error = why;
    (is_corrupt ? corrupt : broken) = true;
  }
};

struct TcpStream : Stream {
  std::vector<uint8_t> out;  // bytes not yet accepted by the socket
  size_t out_off = 0;
  std::vector<uint8_t> in;  // a partial message
  // TCP_INFO, sampled along the run: the worst moments are gone by the end.
  uint32_t max_retransmits = 0, max_backoff = 0, max_rto_us = 0;
};

struct UdpStream : Stream {
  std::vector<bool> seen;
  uint64_t duplicates = 0, reordered = 0, refused = 0, max_seq = 0;
};

// Echo requests carry the message as their payload; the replies are matched by the identifier
// (ours among every ICMP the raw socket sees) and checked like UDP echoes.
struct IcmpStream : UdpStream {
  bool v6 = false;
  uint16_t ident = 0;
};

// TCP_INFO with the fields these headers (Linux 6.1) lack: tcpi_rcv_wnd and tcpi_rehash (6.2),
// then tcpi_total_rto, tcpi_total_rto_recoveries and tcpi_total_rto_time (6.7) follow
// tcpi_snd_wnd; a kernel returns as much of the struct as it has.
struct TcpCounters {
  tcp_info info{};
  bool has_total_rto = false;
  uint16_t total_rto = 0, total_rto_recoveries = 0;
  uint32_t total_rto_time_ms = 0;
};

Result<TcpCounters> ReadTcpInfo(int fd) {
  alignas(8) uint8_t buf[512] = {};
  socklen_t len = sizeof(buf);
  if (::getsockopt(fd, IPPROTO_TCP, TCP_INFO, buf, &len) < 0) return Errno("getsockopt TCP_INFO");
  TcpCounters c;
  memcpy(&c.info, buf, std::min<size_t>(len, sizeof(c.info)));
  constexpr size_t kRto = offsetof(tcp_info, tcpi_snd_wnd) + 4 + 4 + 4;
  if (len >= kRto + 8) {
    c.has_total_rto = true;
    memcpy(&c.total_rto, buf + kRto, 2);
    memcpy(&c.total_rto_recoveries, buf + kRto + 2, 2);
    memcpy(&c.total_rto_time_ms, buf + kRto + 4, 4);
  }
  return c;
}

struct ProbeOptions {
  std::string tcp, udp, icmp;
  int64_t interval_ns = 1000000;
  int64_t duration_ns = 0;  // 0: until a signal or the until-file
  int64_t connect_timeout_ns = 10000000000;
  int64_t drain_ns = 5000000000;
  size_t size = 16;
  std::string until_file, ready_file;
};

Result<UniqueFd> ConnectTcp(const std::string& target, int64_t timeout_ns) {
  socklen_t len = 0;
  ASSIGN_OR_RETURN(sockaddr_storage ss, Resolve(target, SOCK_STREAM, &len));
  int64_t deadline = NowNs() + timeout_ns;
  // The server may still be starting: refused and unreachable are retried until the deadline.
  for (;;) {
    UniqueFd fd(::socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!fd) return Errno("socket");
    int one = 1;
    // Messages go out one by one as the interval says, not batched by Nagle.
    ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int err = 0;
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) == 0) return fd;
    err = errno;
    if (err == EINPROGRESS) {
      pollfd p{fd.get(), POLLOUT, 0};
      int64_t left = deadline - NowNs();
      int n = ::poll(&p, 1, left > 0 ? static_cast<int>(left / 1000000) + 1 : 0);
      if (n == 0) {
        err = ETIMEDOUT;
      } else {
        socklen_t l = sizeof(err);
        ::getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &err, &l);
        if (err == 0) return fd;
      }
    }
    bool retry = err == ECONNREFUSED || err == ENETUNREACH || err == EHOSTUNREACH ||
                 err == ETIMEDOUT || err == ECONNRESET;
    if (!retry || NowNs() >= deadline) {
      errno = err;
      return Errno("connect to %s", target.c_str());
    }
    ::usleep(20000);
  }
}

Result<UniqueFd> ConnectUdp(const std::string& target) {
  socklen_t len = 0;
  ASSIGN_OR_RETURN(sockaddr_storage ss, Resolve(target, SOCK_DGRAM, &len));
  UniqueFd fd(::socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Errno("socket");
  // Connected: only the server's datagrams come in, and an ICMP refusal shows as ECONNREFUSED.
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0)
    return Errno("connect UDP %s", target.c_str());
  return fd;
}

// "HOST" or "[V6]": a raw ICMP (ICMPv6) socket connected to it, so that only its packets come in,
// and filtered to echo replies.
Result<UniqueFd> ConnectIcmp(const std::string& target, bool* v6) {
  std::string host = target;
  if (host.size() > 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_RAW;
  addrinfo* res = nullptr;
  int rc = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (rc != 0 || !res)
    return MakeError(ErrorKind::kUsage, 0, "--icmp %s: %s", target.c_str(), gai_strerror(rc));
  sockaddr_storage ss{};
  memcpy(&ss, res->ai_addr, res->ai_addrlen);
  socklen_t len = res->ai_addrlen;
  ::freeaddrinfo(res);
  *v6 = ss.ss_family == AF_INET6;
  UniqueFd fd(::socket(ss.ss_family, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK,
                       *v6 ? static_cast<int>(IPPROTO_ICMPV6) : static_cast<int>(IPPROTO_ICMP)));
  if (!fd) return Errno("--icmp %s: raw ICMP socket (needs CAP_NET_RAW)", target.c_str());
  if (*v6) {
    icmp6_filter f;
    ICMP6_FILTER_SETBLOCKALL(&f);
    ICMP6_FILTER_SETPASS(ICMP6_ECHO_REPLY, &f);
    if (::setsockopt(fd.get(), IPPROTO_ICMPV6, ICMP6_FILTER, &f, sizeof(f)) < 0)
      return Errno("--icmp %s: ICMP6_FILTER", target.c_str());
  } else {
    // linux/icmp.h's ICMP_FILTER (its header clashes with glibc's): a set bit drops that type.
    constexpr int kIcmpFilter = 1;
    uint32_t f = ~(1u << ICMP_ECHOREPLY);
    if (::setsockopt(fd.get(), SOL_RAW, kIcmpFilter, &f, sizeof(f)) < 0)
      return Errno("--icmp %s: ICMP_FILTER", target.c_str());
  }
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&ss), len) < 0)
    return Errno("--icmp %s: connect", target.c_str());
  return fd;
}

std::string LocalName(int fd) {
  sockaddr_storage ss{};
  socklen_t l = sizeof(ss);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &l) < 0) return "?";
  return AddrString(ss);
}

class Probe {
 public:
  explicit Probe(ProbeOptions o) : o_(std::move(o)) {
    salt_ = static_cast<uint64_t>(NowNs()) ^ (static_cast<uint64_t>(getpid()) << 32);
    msg_.resize(o_.size);
  }

  Result<void> Connect() {
    if (!o_.tcp.empty()) {
      tcp_.target = o_.tcp;
      ASSIGN_OR_RETURN(tcp_.fd, ConnectTcp(o_.tcp, o_.connect_timeout_ns));
      tcp_.local = LocalName(tcp_.fd.get());
    }
    if (!o_.udp.empty()) {
      udp_.target = o_.udp;
      ASSIGN_OR_RETURN(udp_.fd, ConnectUdp(o_.udp));
      udp_.local = LocalName(udp_.fd.get());
    }
    if (!o_.icmp.empty()) {
      icmp_.target = o_.icmp;
      ASSIGN_OR_RETURN(icmp_.fd, ConnectIcmp(o_.icmp, &icmp_.v6));
      icmp_.local = LocalName(icmp_.fd.get());
      // Raw sockets see every ICMP of the namespace: ours are told apart by the identifier.
      icmp_.ident = static_cast<uint16_t>((salt_ >> 17) ^ getpid());
    }
    return Ok();
  }

  // The run: sends on every tick until told to stop, then drains. Returns why it stopped.
  Result<std::string> Run(int signal_fd) {
    UniqueFd timer(::timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC));
    if (!timer) return Errno("timerfd_create");
    itimerspec its{};
    its.it_interval.tv_sec = o_.interval_ns / 1000000000;
    its.it_interval.tv_nsec = o_.interval_ns % 1000000000;
    its.it_value.tv_nsec = 1;  // the first message at once
    if (::timerfd_settime(timer.get(), 0, &its, nullptr) < 0) return Errno("timerfd_settime");
    start_ns_ = NowNs();
    std::string stopped_by;
    int64_t next_check = 0, next_info = 0, stop_ns = 0;
    auto stop = [&](int64_t t) { stop_ns = tcp_.stop_ns = udp_.stop_ns = icmp_.stop_ns = t; };
    for (;;) {
      int64_t now = NowNs();
      if (stopped_by.empty()) {
        if (o_.duration_ns && now - start_ns_ >= o_.duration_ns) stopped_by = "duration";
        if (!o_.until_file.empty() && now >= next_check) {
          next_check = now + 10000000;  // every 10 ms: a stat is cheap, not free
          struct stat st;
          if (::stat(o_.until_file.c_str(), &st) == 0) stopped_by = "until-file";
        }
        if (!tcp_.error.empty()) stopped_by = "error";
        if (!stopped_by.empty()) stop(now);
      }
      if (!stopped_by.empty() && Drained(now, stop_ns)) break;
      if (tcp_.fd && !tcp_.broken && now >= next_info) {
        next_info = now + 10000000;
        SampleTcpInfo();
      }
      pollfd p[5] = {{timer.get(), POLLIN, 0},
                     {signal_fd, POLLIN, 0},
                     {tcp_.fd ? tcp_.fd.get() : -1, 0, 0},
                     {udp_.fd ? udp_.fd.get() : -1, POLLIN, 0},
                     {icmp_.fd ? icmp_.fd.get() : -1, POLLIN, 0}};
      if (tcp_.fd && !tcp_.broken)
        p[2].events = POLLIN | (tcp_.out.size() > tcp_.out_off ? POLLOUT : 0);
      else
        p[2].fd = -1;
      int n = ::poll(p, 5, 10);
      if (n < 0 && errno != EINTR) return Errno("poll");
      if (n <= 0) continue;
      now = NowNs();
      if (p[1].revents & POLLIN) {
        signalfd_siginfo si;
        if (::read(signal_fd, &si, sizeof(si)) == sizeof(si) && stopped_by.empty()) {
          stopped_by = si.ssi_signo == SIGINT ? "SIGINT" : "SIGTERM";
          stop(now);
        }
      }
      if (p[0].revents & POLLIN) {
        uint64_t ticks = 0;
        if (::read(timer.get(), &ticks, sizeof(ticks)) == sizeof(ticks)) {
          if (ticks > 1) late_ticks_ += ticks - 1;  // one message per wake-up, no catching up
          if (stopped_by.empty()) Send(now);
        }
        // Replies read below may be to what was just sent (a fast path answers within the
        // send): their round trip is timed from now, not from before the send.
        now = NowNs();
      }
      if (p[2].revents) TcpEvents(p[2].revents, now);
      if (p[3].revents) UdpEvents(now);
      if (p[4].revents) IcmpEvents(now);
    }
    end_ns_ = NowNs();
    if (tcp_.fd && !tcp_.broken) SampleTcpInfo();
    // A TCP stall still going on at the end is a gap too (until now): a run stopped while
    // nothing comes back must not report the last good gaps only. (UDP: a lost datagram is no
    // stall; its gaps are between the echoes received.)
    if (tcp_.fd && tcp_.echoed < tcp_.sent)
      tcp_.AddGap(end_ns_ - (tcp_.last_echo_ns ? tcp_.last_echo_ns : start_ns_), end_ns_);
    return stopped_by;
  }

  json Report(const std::string& stopped_by) const {
    json j = {{"interval_ms", o_.interval_ns / 1e6},
              {"size", o_.size},
              {"duration_s", (end_ns_ - start_ns_) / 1e9},
              {"stopped_by", stopped_by},
              {"late_ticks", late_ticks_}};
    if (tcp_.fd || !tcp_.target.empty()) j["tcp"] = TcpJson();
    if (udp_.fd || !udp_.target.empty()) j["udp"] = UdpJson();
    if (icmp_.fd || !icmp_.target.empty()) j["icmp"] = IcmpJson();
    j["ok"] = Failure().empty();
    return j;
  }

  // Why the run failed ("" if it did not): the TCP stream broke, was corrupt or kept messages,
  // or a UDP or ICMP echo was corrupt.
  std::string Failure() const {
    if (!tcp_.error.empty()) return "tcp: " + tcp_.error;
    if (tcp_.fd && tcp_.echoed != tcp_.sent)
      return StrFormat("tcp: %llu of %llu messages never echoed",
                       static_cast<unsigned long long>(tcp_.sent - tcp_.echoed),
                       static_cast<unsigned long long>(tcp_.sent));
    if (!udp_.error.empty()) return "udp: " + udp_.error;
    if (!icmp_.error.empty()) return "icmp: " + icmp_.error;
    return "";
  }

  void Ready(const std::string& file) const {
    std::string text;
    if (tcp_.fd) text += "tcp " + tcp_.local + " " + tcp_.target + "\n";
    if (udp_.fd) text += "udp " + udp_.local + " " + udp_.target + "\n";
    if (icmp_.fd) text += "icmp " + icmp_.local + " " + icmp_.target + "\n";
    std::string tmp = file + ".tmp";
    if (fs::WriteFile(tmp, text).ok()) ::rename(tmp.c_str(), file.c_str());
  }

 private:
  bool Drained(int64_t now, int64_t stop_ns) const {
    if (now - stop_ns >= o_.drain_ns) return true;
    bool tcp_done = !tcp_.fd || tcp_.broken || !tcp_.error.empty() || tcp_.echoed == tcp_.sent;
    // UDP and ICMP echoes can be lost for good: a short grace for the stragglers.
    bool udp_done = !udp_.fd || udp_.echoed == udp_.sent || now - stop_ns >= 500000000;
    bool icmp_done = !icmp_.fd || icmp_.echoed == icmp_.sent || now - stop_ns >= 500000000;
    return tcp_done && udp_done && icmp_done;
  }

  void Send(int64_t now) {
    if (tcp_.fd && !tcp_.broken) {
      FillMessage(salt_, tcp_.sent, o_.size, msg_.data());
      tcp_.out.insert(tcp_.out.end(), msg_.begin(), msg_.end());
      tcp_.sent_ns.push_back(now);
      tcp_.sent++;
      FlushTcp();
    }
    if (udp_.fd) {
      FillMessage(salt_ ^ 0x5555, udp_.sent, o_.size, msg_.data());
      udp_.sent_ns.push_back(now);
      udp_.seen.push_back(false);
      udp_.sent++;
      // A full buffer or a refusal (ICMP from an earlier datagram) loses this one: counted lost.
      if (::send(udp_.fd.get(), msg_.data(), msg_.size(), MSG_NOSIGNAL) < 0 &&
          errno == ECONNREFUSED)
        udp_.refused++;
    }
    if (icmp_.fd) {
      // type, code, checksum, identifier, sequence (its low 16 bits; the payload has all 64).
      std::vector<uint8_t> req(8 + o_.size, 0);
      req[0] = icmp_.v6 ? ICMP6_ECHO_REQUEST : ICMP_ECHO;
      req[4] = static_cast<uint8_t>(icmp_.ident >> 8);
      req[5] = static_cast<uint8_t>(icmp_.ident);
      req[6] = static_cast<uint8_t>(icmp_.sent >> 8);
      req[7] = static_cast<uint8_t>(icmp_.sent);
      FillMessage(salt_ ^ 0xAAAA, icmp_.sent, o_.size, req.data() + 8);
      if (!icmp_.v6) {
        uint16_t c = inet::Checksum(req.data(), req.size());
        req[2] = static_cast<uint8_t>(c >> 8);
        req[3] = static_cast<uint8_t>(c);
      }
      icmp_.sent_ns.push_back(now);
      icmp_.seen.push_back(false);
      icmp_.sent++;
      (void)::send(icmp_.fd.get(), req.data(), req.size(), MSG_NOSIGNAL);  // else: lost
    }
  }

  void FlushTcp() {
    while (tcp_.out_off < tcp_.out.size()) {
      ssize_t w = ::send(tcp_.fd.get(), tcp_.out.data() + tcp_.out_off,
                         tcp_.out.size() - tcp_.out_off, MSG_NOSIGNAL);
      if (w < 0) {
        if (errno == EAGAIN || errno == EINTR) break;
        tcp_.Fail(false, StrFormat("send: %s", strerror(errno)));
        tcp_.broken = true;
        return;
      }
      tcp_.out_off += w;
    }
    if (tcp_.out_off == tcp_.out.size()) {
      tcp_.out.clear();
      tcp_.out_off = 0;
    } else if (tcp_.out_off > (1 << 20)) {
      tcp_.out.erase(tcp_.out.begin(), tcp_.out.begin() + tcp_.out_off);
      tcp_.out_off = 0;
    }
  }

  void TcpEvents(short revents, int64_t now) {
    if (revents & POLLOUT) FlushTcp();
    if (revents & (POLLIN | POLLERR | POLLHUP)) {
      uint8_t buf[65536];
      for (;;) {
        ssize_t r = ::recv(tcp_.fd.get(), buf, sizeof(buf), 0);
        if (r == 0) {
          tcp_.Fail(false, "connection closed by the server (EOF)");
          tcp_.broken = true;
          return;
        }
        if (r < 0) {
          if (errno == EAGAIN || errno == EINTR) break;
          tcp_.Fail(false, StrFormat("recv: %s", strerror(errno)));
          tcp_.broken = true;
          return;
        }
        for (ssize_t i = 0; i < r && !tcp_.corrupt; ++i) {
          tcp_.in.push_back(buf[i]);
          if (tcp_.in.size() == o_.size) {
            CheckTcpMessage(now);
            tcp_.in.clear();
          }
        }
        if (tcp_.corrupt) return;
      }
    }
  }

  void CheckTcpMessage(int64_t now) {
    uint64_t want = tcp_.echoed;
    if (want >= tcp_.sent) {
      tcp_.Fail(true, StrFormat("echo of message %llu, which was never sent",
                                static_cast<unsigned long long>(want)));
      return;
    }
    FillMessage(salt_, want, o_.size, msg_.data());
    if (memcmp(msg_.data(), tcp_.in.data(), o_.size) != 0) {
      size_t at = 0;
      while (at < o_.size && msg_[at] == tcp_.in[at]) at++;
      tcp_.Fail(true, StrFormat("byte %llu of the stream (message %llu, offset %zu) is %#x, "
                                "sent %#x",
                                static_cast<unsigned long long>(want * o_.size + at),
                                static_cast<unsigned long long>(want), at, tcp_.in[at], msg_[at]));
      return;
    }
    tcp_.Echo(want, now);
  }

  void UdpEvents(int64_t now) {
    std::vector<uint8_t> buf(o_.size + 64);
    for (;;) {
      ssize_t r = ::recv(udp_.fd.get(), buf.data(), buf.size(), MSG_TRUNC);
      if (r < 0) {
        if (errno == ECONNREFUSED) {  // ICMP port unreachable for an earlier datagram
          udp_.refused++;
          continue;
        }
        break;
      }
      Datagram(udp_, salt_ ^ 0x5555, buf.data(), static_cast<size_t>(r), now);
    }
  }

  // One echo of a datagram stream (UDP, ICMP): checked, counted once.
  void Datagram(UdpStream& s, uint64_t salt, const uint8_t* m, size_t len, int64_t now) {
    if (len != o_.size) {
      s.Fail(true, StrFormat("an echo of %zu bytes, sent %zu", len, o_.size));
      return;
    }
    uint64_t seq = SeqOf(m);
    if (seq >= s.sent) {
      s.Fail(true, StrFormat("echo of message %llu, which was never sent",
                             static_cast<unsigned long long>(seq)));
      return;
    }
    FillMessage(salt, seq, o_.size, msg_.data());
    if (memcmp(msg_.data(), m, o_.size) != 0) {
      s.Fail(true, StrFormat("echo of message %llu differs from what was sent",
                             static_cast<unsigned long long>(seq)));
      return;
    }
    if (s.seen[seq]) {
      s.duplicates++;
      return;
    }
    s.seen[seq] = true;
    if (s.echoed && seq < s.max_seq) s.reordered++;
    s.max_seq = std::max(s.max_seq, seq);
    s.Echo(seq, now);
  }

  void IcmpEvents(int64_t now) {
    std::vector<uint8_t> buf(o_.size + 128);
    for (;;) {
      ssize_t r = ::recv(icmp_.fd.get(), buf.data(), buf.size(), MSG_TRUNC);
      if (r < 0) break;
      size_t len = std::min(static_cast<size_t>(r), buf.size());
      const uint8_t* m = buf.data();
      if (!icmp_.v6) {  // IPv4 raw sockets receive the IP header too
        size_t ihl = len ? (m[0] & 0xf) * 4u : 0;
        if (ihl < 20 || ihl > len) continue;
        m += ihl;
        len -= ihl;
        r -= static_cast<ssize_t>(ihl);
      }
      if (len < 8 || m[0] != (icmp_.v6 ? ICMP6_ECHO_REPLY : ICMP_ECHOREPLY) || m[1] != 0 ||
          ((m[4] << 8) | m[5]) != icmp_.ident)
        continue;  // another's, or not a reply
      Datagram(icmp_, salt_ ^ 0xAAAA, m + 8, static_cast<size_t>(r) - 8, now);
    }
  }

  void SampleTcpInfo() {
    auto c = ReadTcpInfo(tcp_.fd.get());
    if (!c.ok()) return;
    tcp_.max_retransmits = std::max<uint32_t>(tcp_.max_retransmits, c->info.tcpi_retransmits);
    tcp_.max_backoff = std::max<uint32_t>(tcp_.max_backoff, c->info.tcpi_backoff);
    tcp_.max_rto_us = std::max<uint32_t>(tcp_.max_rto_us, c->info.tcpi_rto);
    last_info_ = *c;
  }

  json StreamJson(const Stream& s) const {
    json longest = json::array();
    for (const auto& [g, end] : s.longest)
      longest.push_back({{"ms", g / 1e6}, {"start_unix_ms", UnixMs(end) - g / 1e6}});
    const int64_t max_gap_ns = s.longest.empty() ? 0 : s.longest.front().first;
    const int64_t max_gap_end_ns = s.longest.empty() ? 0 : s.longest.front().second;
    return {{"target", s.target},
            {"local", s.local},
            {"sent", s.sent},
            {"echoed", s.echoed},
            {"lost", s.sent - s.echoed},
            {"max_gap_ms", max_gap_ns / 1e6},
            {"gap_ms", Distribution(s.gap_ns)},
            // When the longest gap started and ended, on the wall clock (ms since the epoch): to
            // line it up with a migration report's blackout.start_unix_ms on the same host.
            {"max_gap_end_unix_ms", UnixMs(max_gap_end_ns)},
            {"max_gap_start_unix_ms",
             s.gap_ns.empty() ? 0.0 : UnixMs(max_gap_end_ns) - max_gap_ns / 1e6},
            {"longest_gaps", longest},  // up to 16, longest first
            {"rtt_ms", Distribution(s.rtt_ns)},
            {"corrupt", s.corrupt},
            {"broken", s.broken},
            {"error", s.error}};
  }

  json TcpJson() const {
    json j = StreamJson(tcp_);
    const tcp_info& i = last_info_.info;
    json t = {{"total_retrans", i.tcpi_total_retrans},  {"retransmits_max", tcp_.max_retransmits},
              {"backoff_max", tcp_.max_backoff},        {"rto_ms", i.tcpi_rto / 1000.0},
              {"rto_max_ms", tcp_.max_rto_us / 1000.0}, {"state", i.tcpi_state}};
    if (last_info_.has_total_rto) {
      t["total_rto"] = last_info_.total_rto;
      t["total_rto_recoveries"] = last_info_.total_rto_recoveries;
      t["total_rto_time_ms"] = last_info_.total_rto_time_ms;
    } else {
      t["total_rto"] = nullptr;  // kernel older than 6.7
    }
    j["tcp_info"] = t;
    return j;
  }

  json UdpJson() const {
    json j = StreamJson(udp_);
    j["duplicates"] = udp_.duplicates;
    j["reordered"] = udp_.reordered;
    j["refused"] = udp_.refused;
    return j;
  }

  json IcmpJson() const {
    json j = StreamJson(icmp_);
    j["duplicates"] = icmp_.duplicates;
    j["reordered"] = icmp_.reordered;
    j["ident"] = icmp_.ident;
    return j;
  }

  ProbeOptions o_;
  uint64_t salt_ = 0;
  std::vector<uint8_t> msg_;
  TcpStream tcp_;
  UdpStream udp_;
  IcmpStream icmp_;
  TcpCounters last_info_;
  int64_t start_ns_ = 0, end_ns_ = 0;
  uint64_t late_ticks_ = 0;
};

void PrintHuman(const json& r) {
  printf("probe: %.3f s, one %d-byte message every %.3f ms, stopped by %s\n",
         r["duration_s"].get<double>(), r["size"].get<int>(), r["interval_ms"].get<double>(),
         r["stopped_by"].get<std::string>().c_str());
  for (const char* proto : {"tcp", "udp", "icmp"}) {
    if (!r.contains(proto)) continue;
    const json& s = r[proto];
    printf("%s %s -> %s: sent %llu, echoed %llu, lost %llu%s%s\n", proto,
           s["local"].get<std::string>().c_str(), s["target"].get<std::string>().c_str(),
           s["sent"].get<unsigned long long>(), s["echoed"].get<unsigned long long>(),
           s["lost"].get<unsigned long long>(), s["error"].get<std::string>().empty() ? "" : ": ",
           s["error"].get<std::string>().c_str());
    const json& g = s["gap_ms"];
    printf("  gap between echoes (ms): max %.3f  p50 %.3f  p99 %.3f  p999 %.3f\n",
           g["max"].get<double>(), g["p50"].get<double>(), g["p99"].get<double>(),
           g["p999"].get<double>());
    const json& t = s["rtt_ms"];
    printf("  round trip (ms):         max %.3f  p50 %.3f  p99 %.3f  p999 %.3f\n",
           t["max"].get<double>(), t["p50"].get<double>(), t["p99"].get<double>(),
           t["p999"].get<double>());
    if (s.contains("tcp_info")) {
      const json& i = s["tcp_info"];
      std::string rto = i["total_rto"].is_null()
                            ? "n/a"
                            : StrFormat("%d (%d ms in recovery)", i["total_rto"].get<int>(),
                                        i["total_rto_time_ms"].get<int>());
      printf(
          "  client TCP: %u segments retransmitted, RTO timeouts %s, most consecutive %u, "
          "RTO %.0f ms (max %.0f)\n",
          i["total_retrans"].get<unsigned>(), rto.c_str(), i["retransmits_max"].get<unsigned>(),
          i["rto_ms"].get<double>(), i["rto_max_ms"].get<double>());
    } else {
      printf("  duplicates %llu, reordered %llu", s["duplicates"].get<unsigned long long>(),
             s["reordered"].get<unsigned long long>());
      if (s.contains("refused")) printf(", refused %llu", s["refused"].get<unsigned long long>());
      printf("\n");
    }
  }
}

int CmdProbe(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{"tcp", "udp", "icmp", "interval", "duration", "until-file", "ready-file", "size",
                "connect-timeout", "drain"},
               {"json"},
               {}};
  auto p = ParseArgs(args, spec);
  if (!p.ok()) return ReportError(g, "probe", p.error());
  if (p->has("json")) g.json = true;
  auto usage = [&](const char* fmt, const std::string& a = "") {
    return ReportError(g, "probe", MakeError(ErrorKind::kUsage, 0, fmt, a.c_str()));
  };
  if (!p->positionals.empty()) return usage("unexpected argument %s", p->positionals[0]);
  ProbeOptions o;
  o.tcp = p->get("tcp");
  o.udp = p->get("udp");
  o.icmp = p->get("icmp");
  if (o.tcp.empty() && o.udp.empty() && o.icmp.empty())
    return usage("need --tcp HOST:PORT, --udp HOST:PORT and/or --icmp HOST");
  auto dur = [&](const char* name, int64_t unit, int64_t* out) -> Result<void> {
    if (!p->has(name)) return Ok();
    ASSIGN_OR_RETURN(*out, ParseDurationNs(p->get(name), unit, name));
    return Ok();
  };
  if (auto r = dur("interval", 1000000, &o.interval_ns); !r.ok())
    return ReportError(g, "probe", r.error());
  if (auto r = dur("duration", 1000000000, &o.duration_ns); !r.ok())
    return ReportError(g, "probe", r.error());
  if (auto r = dur("connect-timeout", 1000000000, &o.connect_timeout_ns); !r.ok())
    return ReportError(g, "probe", r.error());
  if (auto r = dur("drain", 1000000000, &o.drain_ns); !r.ok())
    return ReportError(g, "probe", r.error());
  if (o.interval_ns < 10000) return usage("--interval: at least 10us");
  if (p->has("size")) {
    char* end = nullptr;
    long v = strtol(p->get("size").c_str(), &end, 10);
    if (!end || *end || v < 16 || v > 1400)
      return usage("--size %s: 16 to 1400 bytes", p->get("size"));
    o.size = static_cast<size_t>(v);
  }
  o.until_file = p->get("until-file");
  o.ready_file = p->get("ready-file");

  // SIGINT/SIGTERM end the run with its report: taken through a signalfd, blocked before the
  // connection so that none is lost or kills us meanwhile.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  ::sigprocmask(SIG_BLOCK, &set, nullptr);
  UniqueFd sfd(::signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC));
  if (!sfd) return ReportError(g, "probe", Errno("signalfd"));

  Probe probe(o);
  if (auto r = probe.Connect(); !r.ok()) return ReportError(g, "probe", r.error());
  if (!o.ready_file.empty()) probe.Ready(o.ready_file);
  auto stopped = probe.Run(sfd.get());
  if (!stopped.ok()) return ReportError(g, "probe", stopped.error());
  json report = probe.Report(*stopped);
  if (g.json)
    printf("%s\n", report.dump().c_str());
  else
    PrintHuman(report);
  fflush(stdout);
  std::string failure = probe.Failure();
  if (!failure.empty()) {
    Global quiet = g;
    quiet.json = false;  // stdout has the report; the reason goes to stderr as text
    return ReportError(quiet, "probe", MakeError(ErrorKind::kGeneric, 0, "%s", failure.c_str()));
  }
  return 0;
}

}  // namespace

GODWIT_COMMAND(probe, "probe",
               "probe [--tcp HOST:PORT] [--udp HOST:PORT] [--icmp HOST] [--interval 1ms] "
               "[--duration S] [--until-file F] [--ready-file F] [--size 16] "
               "[--connect-timeout 10s] [--drain 5s] [--json]",
               "measure the downtime a client sees: numbered echoes at a fixed interval, gaps, "
               "RTTs, TCP retransmissions (stops on SIGINT/SIGTERM with the report)",
               CmdProbe,
               "Measures the downtime a client sees: sends numbered echoes at a fixed interval\n"
               "to a TCP and/or UDP echo server and/or as ICMP echo requests (ping), and reports\n"
               "gaps, the longest one and the order of replies. Used by the migration tests and\n"
               "benchmarks.\n"
               "\n"
               "options (at least one of --tcp, --udp, --icmp):\n"
               "  --tcp HOST:PORT          probe a TCP echo server over one connection\n"
               "  --udp HOST:PORT          probe a UDP echo server\n"
               "  --icmp HOST              ping HOST (echo requests; a raw socket: needs root)\n"
               "  --interval 1ms           time between probes\n"
               "  --duration S             stop after S seconds\n"
               "  --until-file F           stop once F exists\n"
               "  --ready-file F           create F once the connection is up\n"
               "  --size 16                bytes per probe\n"
               "  --connect-timeout 10s    how long to try connecting\n"
               "  --drain 5s               wait this long for late replies at the end\n"
               "  --json                   the report as one object\n"
               "\n"
               "examples:\n"
               "  godwit probe --tcp 198.18.0.10:7 --interval 1ms --duration 10 --json\n"
               "  godwit probe --tcp 10.0.0.5:7 --until-file /tmp/stop --ready-file /tmp/ready\n"
               "  godwit probe --icmp 198.18.1.10 --interval 1ms --json\n");

}  // namespace godwit::cli
