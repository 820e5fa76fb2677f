// godwitd: the migration destination daemon, one per host.
//
//   godwitd --listen ADDR:PORT --root DIR [--cgroup-parent NAME] [--bridge BR]
//           [--tls-cert F --tls-key F --tls-ca F | --insecure] [--timeout S] [--log-level L]
//
// One asio loop accepts connections and reaps children. Each accepted connection is served by a
// forked process of its own (TLS handshake, migration, restore: migrate/dest.h), so migrations run
// side by side, isolated from each other and from the daemon: a restore that crashes or hangs
// takes only its own session (killed on timeout by its own watchdog). The daemon is a child
// subreaper: containers restored by a session are reparented here when the session exits, and
// reaped when they die (this machine's pid 1 does not reap). SIGTERM/SIGINT: stop accepting,
// end the sessions in progress (they roll back), exit; restored containers keep running.
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio.hpp>
#include <cstdio>
#include <cstring>
#include <set>
#include <string>

#include "common/args.h"
#include "common/log.h"
#include "common/netns.h"
#include "migrate/dest.h"
#include "migrate/wire.h"

namespace {

using namespace godwit;

void Usage() {
  fprintf(stderr,
          "usage: godwitd --listen ADDR:PORT --root DIR [--cgroup-parent NAME] [--bridge BR]\n"
          "               [--tls-cert F --tls-key F --tls-ca F | --insecure] [--timeout S]\n"
          "               [--log-level error|warn|info|debug] [--staging DIR] [--ready-file F]\n"
          "               [--keep-staging]  (debugging: keep the received images)\n"
          "               [--no-lazy]  (fill the container's memory before it runs, for\n"
          "                            measuring; default: paged in after, restore --lazy)\n"
          "               [--discard-staging]  (free the staged page files as the container's\n"
          "                            memory is paged in: its memory is held once, not twice)\n"
          "               [--fault PHASE:kill|close|corrupt]  (testing: welcome, round, final,\n"
          "               restored)\n");
}

struct Daemon {
  asio::io_context io;
  asio::ip::tcp::acceptor acceptor{io};
  asio::signal_set signals{io, SIGCHLD, SIGTERM, SIGINT};
  migrate::TlsConfig tls;
  migrate::DestOptions dest;
  std::set<pid_t> sessions;
  bool stopping = false;

  void Accept() {
    acceptor.async_accept([this](const asio::error_code& ec, asio::ip::tcp::socket sock) {
      if (stopping) return;
      if (ec) {
        LOG_WARN("accept: %s", ec.message().c_str());
      } else {
        Serve(std::move(sock));
      }
      Accept();
    });
  }

  void Serve(asio::ip::tcp::socket sock) {
    asio::error_code ec;
    auto ep = sock.remote_endpoint(ec);
    std::string peer = ec ? "?" : ep.address().to_string() + ":" + std::to_string(ep.port());
    pid_t pid = fork();
    if (pid < 0) {
      PLOG_ERROR("fork a session for %s", peer.c_str());
      return;
    }
    if (pid == 0) {
      // The session: a plain single-threaded process from here; nothing of the daemon's loop.
      signal(SIGCHLD, SIG_DFL);
      signal(SIGTERM, SIG_DFL);
      signal(SIGINT, SIG_DFL);
      sigset_t none;
      sigemptyset(&none);
      sigprocmask(SIG_SETMASK, &none, nullptr);
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      int fd = dup(sock.native_handle());
      ::close(acceptor.native_handle());
      _exit(RunSession(fd, peer));
    }
    sessions.insert(pid);
    LOG_INFO("session %d: connection from %s", pid, peer.c_str());
    sock.close(ec);
  }

  int RunSession(int fd, const std::string& peer) {
    auto ch = migrate::Channel::Accept(fd, tls, dest.timeout_s);
    if (!ch.ok()) {
      LOG_WARN("refused %s: %s", peer.c_str(), ch.error().to_string().c_str());
      return ch.error().exit_code();
    }
    auto r = migrate::ServeMigration(**ch, dest);
    if (!r.ok()) {
      LOG_WARN("%s", r.error().to_string().c_str());
      return r.error().exit_code();
    }
    return 0;
  }

  void Cleanup() {
    std::vector<pid_t> live(sessions.begin(), sessions.end());
    live.push_back(getpid());  // the daemon itself is never a session
    int n = migrate::CleanupDeadSessions(dest, live);
    if (n) LOG_INFO("cleaned up after %d dead session(s)", n);
  }

  void Signals() {
    signals.async_wait([this](const asio::error_code& ec, int sig) {
      if (ec) return;
      if (sig == SIGCHLD) {
        int st;
        pid_t p;
        while ((p = waitpid(-1, &st, WNOHANG)) > 0) {
          if (sessions.erase(p)) {
            LOG_INFO("session %d ended (%s %d)", p, WIFEXITED(st) ? "exit" : "signal",
                     WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
            // A session that died without its own cleanup: remove what it made.
            if (!WIFEXITED(st)) Cleanup();
          }
        }
      } else {
        LOG_INFO("signal %d: stopping (%zu session(s) in progress end now)", sig, sessions.size());
        stopping = true;
        asio::error_code ig;
        acceptor.close(ig);
        for (pid_t p : sessions) kill(p, SIGTERM);  // our own children, by pid
        for (pid_t p : sessions) {
          int st;
          while (waitpid(p, &st, 0) < 0 && errno == EINTR) {
          }
        }
        sessions.clear();
        Cleanup();
        io.stop();
        return;
      }
      Signals();
    });
  }
};

}  // namespace

int main(int argc, char** argv) {
  using namespace godwit;
  log::SetLevel(log::kInfo);
  std::vector<std::string> args(argv + 1, argv + argc);
  ArgSpec spec{{"listen", "root", "cgroup-parent", "bridge", "tls-cert", "tls-key", "tls-ca",
                "timeout", "log-level", "staging", "fault", "ready-file"},
               {"insecure", "help", "keep-staging", "no-lazy", "discard-staging"},
               {{"-h", "help"}}};
  auto pa = ParseArgs(args, spec);
  if (!pa.ok()) {
    fprintf(stderr, "godwitd: %s\n", pa.error().to_string().c_str());
    Usage();
    return 2;
  }
  if (pa->has("help")) {
    Usage();
    return 0;
  }
  std::string l = pa->get("log-level", "info");
  log::SetLevel(l == "debug" ? log::kDebug : l == "warn" ? log::kWarn
                : l == "error" ? log::kError : log::kInfo);
  // A session writes to pipes (a restore started ahead): a peer gone is an error, not a death.
  signal(SIGPIPE, SIG_IGN);
  // Each commit opens the destination's network (libnftables) inside the blackout: the library
  // is loaded once here, not at a first migration's switch.
  if (auto nft = netns::PreloadNft(); !nft.ok()) {
    fprintf(stderr, "godwitd: %s\n", nft.error().to_string().c_str());
    return 1;
  }
  Daemon d;
  d.tls.insecure = pa->has("insecure");
  d.tls.cert = pa->get("tls-cert");
  d.tls.key = pa->get("tls-key");
  d.tls.ca = pa->get("tls-ca");
  if (!d.tls.insecure && (d.tls.cert.empty() || d.tls.key.empty() || d.tls.ca.empty())) {
    fprintf(stderr, "godwitd: need --tls-cert, --tls-key and --tls-ca (or --insecure)\n");
    return 2;
  }
  d.dest.root = pa->get("root", "/run/godwit");
  d.dest.cgroup_parent = pa->get("cgroup-parent");
  d.dest.bridge = pa->get("bridge");
  d.dest.staging = pa->get("staging");
  d.dest.fault = pa->get("fault");
  d.dest.keep_staging = pa->has("keep-staging");  // testing and failover drills only
  d.dest.lazy = !pa->has("no-lazy");
  d.dest.discard_staging = pa->has("discard-staging");
  if (pa->has("timeout")) d.dest.timeout_s = atof(pa->get("timeout").c_str());
  if (d.dest.timeout_s <= 0) d.dest.timeout_s = 30;
  auto hp = migrate::SplitHostPort(pa->get("listen"));
  if (!hp.ok()) {
    fprintf(stderr, "godwitd: --listen: %s\n", hp.error().to_string().c_str());
    return 2;
  }
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) {
    perror("godwitd: prctl(PR_SET_CHILD_SUBREAPER)");
    return 1;
  }
  asio::error_code ec;
  auto addr = asio::ip::make_address(hp->first, ec);
  if (ec) {
    fprintf(stderr, "godwitd: --listen %s: %s\n", hp->first.c_str(), ec.message().c_str());
    return 2;
  }
  asio::ip::tcp::endpoint ep(addr, hp->second);
  d.acceptor.open(ep.protocol(), ec);
  if (!ec) d.acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) d.acceptor.bind(ep, ec);
  if (!ec) d.acceptor.listen(64, ec);
  if (ec) {
    fprintf(stderr, "godwitd: listen on %s: %s\n", pa->get("listen").c_str(),
            ec.message().c_str());
    return ec == asio::error::address_in_use ? 4 : 1;
  }
  // The port actually bound (":0" picks one): scripts read it from this line.
  auto local = d.acceptor.local_endpoint(ec);
  fprintf(stderr, "godwitd %s: listening on %s:%u (%s), root %s\n", GODWIT_VERSION,
          local.address().to_string().c_str(), local.port(),
          d.tls.insecure ? "INSECURE plain TCP" : "mutual TLS", d.dest.root.c_str());
  fflush(stderr);
  if (pa->has("ready-file")) {
    // For scripts and tests: exists once the daemon accepts connections (holds the port).
    std::string rf = pa->get("ready-file");
    FILE* f = fopen((rf + ".tmp").c_str(), "w");
    if (f) {
      fprintf(f, "%u\n", local.port());
      fclose(f);
      rename((rf + ".tmp").c_str(), rf.c_str());
    }
  }
  // Sessions of an earlier daemon that died with it.
  {
    int n = migrate::CleanupDeadSessions(d.dest, {});
    if (n) LOG_INFO("cleaned up after %d session(s) of an earlier run", n);
  }
  d.Signals();
  d.Accept();
  d.io.run();
  return 0;
}
