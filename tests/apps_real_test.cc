// Real applications through godwit dump -> kill -> restore --detach, with a client connection
// (from this test, over loopback) kept open across the checkpoint (--tcp-established): the
// restored application must answer on the old connection and on new ones, with its state intact.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <gtest/gtest.h>

#include "zdtm_harness.h"

namespace godwit::crtest {
namespace {

void WriteFile(const std::string& path, const std::string& s) { std::ofstream(path) << s; }

int64_t NowMs() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

// A free loopback port (bound and released: the application binds it next).
int FreePort() {
  int s = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t l = sizeof a;
  getsockname(s, reinterpret_cast<sockaddr*>(&a), &l);
  close(s);
  return ntohs(a.sin_port);
}

int Connect(int port) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(s, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    close(s);
    return -1;
  }
  return s;
}

// The application starts listening asynchronously: poll connect() with a deadline.
int ConnectWithin(int port, int ms) {
  for (int64_t end = NowMs() + ms; NowMs() < end;) {
    int s = Connect(port);
    if (s >= 0) return s;
    usleep(20000);
  }
  return -1;
}

bool SendAll(int s, const std::string& d) {
  for (size_t off = 0; off < d.size();) {
    ssize_t n = send(s, d.data() + off, d.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += n;
  }
  return true;
}

// Reads until pred(buffer) or a 20 s timeout / EOF.
template <typename Pred>
std::string ReadUntil(int s, Pred pred) {
  std::string buf;
  int64_t end = NowMs() + 20000;
  while (!pred(buf)) {
    pollfd p = {s, POLLIN, 0};
    int left = static_cast<int>(end - NowMs());
    if (left <= 0 || poll(&p, 1, left) <= 0) break;
    char tmp[65536];
    ssize_t n = recv(s, tmp, sizeof tmp, 0);
    if (n <= 0) break;
    buf.append(tmp, n);
  }
  return buf;
}

// One HTTP/1.1 response (Content-Length framing): its body, or "" with *ok false.
std::string HttpBody(int s, bool* ok) {
  std::string r = ReadUntil(s, [](const std::string& b) {
    size_t h = b.find("\r\n\r\n");
    if (h == std::string::npos) return false;
    size_t cl = b.find("Content-Length: ");
    if (cl == std::string::npos || cl > h) cl = b.find("content-length: ");
    if (cl == std::string::npos || cl > h) return true;
    return b.size() >= h + 4 + std::stoul(b.substr(cl + 16));
  });
  size_t h = r.find("\r\n\r\n");
  *ok = r.rfind("HTTP/1.1 200", 0) == 0 && h != std::string::npos;
  return *ok ? r.substr(h + 4) : r;
}

std::string Pattern(size_t n) {
  std::string s(n, 0);
  for (size_t i = 0; i < n; ++i) s[i] = static_cast<char>('a' + (i * 7 + i / 1000) % 26);
  return s;
}

class Apps : public ::testing::Test {
 protected:
  void TearDown() override {
    for (pid_t p : pids_) KillAndReap(p);
    // Orphans of a failed check (reparented to us, the subreaper) are ours too.
    std::ifstream kf("/proc/self/task/" + std::to_string(getpid()) + "/children");
    for (pid_t k; kf >> k;) KillAndReap(k);
    if (HasFailure()) {
      std::string e = ReadAll(dir_ / "app.log");
      if (!e.empty()) ADD_FAILURE() << "application output:\n" << e.substr(e.size() > 4000 ? e.size() - 4000 : 0);
    }
  }
  // Starts argv[0] (absolute) with stdin /dev/null and stdout/stderr to app.log.
  pid_t Spawn(const std::vector<std::string>& argv) {
    std::string log = dir_ / "app.log";
    pid_t pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_RDONLY);
      int l = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(null, 0);
      dup2(l, 1);
      dup2(l, 2);
      for (int fd = 3; fd < 1024; ++fd) close(fd);
      std::vector<char*> av;
      for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
      av.push_back(nullptr);
      execv(av[0], av.data());
      _exit(127);
    }
    pids_.push_back(pid);
    return pid;
  }
  // Dump (kills), reap the tree, restore detached; "" or what went wrong.
  std::string DumpKillRestore(pid_t pid, const std::vector<std::string>& extra = {"--tcp-established"}) {
    std::vector<std::string> args = {"dump", "--pid", std::to_string(pid), "--images-dir", dir_ / "img"};
    args.insert(args.end(), extra.begin(), extra.end());
    std::vector<pid_t> kids = Descendants(pid);
    auto d = Godwit(args);
    if (d.status != 0) return "dump failed (" + std::to_string(d.status) + "): " + d.err;
    int st = Wait(pid);
    if (st != 128 + SIGKILL) return "the dumped application ended with " + std::to_string(st);
    for (pid_t k : kids) waitpid(k, nullptr, 0);
    auto r = Godwit({"restore", "--images-dir", dir_ / "img", "--detach"});
    if (r.status != 0) return "restore failed (" + std::to_string(r.status) + "): " + r.err;
    return "";
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
};

// python3: worker threads computing, a server thread with an accepted connection and a client
// connection to it, all inside the interpreter; after restore the interpreter checks everything.
TEST_F(Apps, Python3ThreadsAndSockets) {
  std::string prog = R"(
import os, signal, socket, sys, threading, hashlib
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2})
ls = socket.socket(); ls.bind(('127.0.0.1', 0)); ls.listen(8)
port = ls.getsockname()[1]
c = socket.create_connection(('127.0.0.1', port))
a, _ = ls.accept()
c.sendall(b'x' * 70000)   # queued in the kernel across the checkpoint
results = {}
go = threading.Event()
def worker(i):
    h = hashlib.sha256()
    for k in range(20000): h.update(str(k * i).encode())
    results[i] = h.hexdigest()
    go.wait()
    h2 = hashlib.sha256()
    for k in range(20000): h2.update(str(k * i).encode())
    results[i] = results[i] == h2.hexdigest()
ts = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
for t in ts: t.start()
while len(results) < 4: pass
os.write(3, b'ready\n'); os.close(3)
signal.sigwait({signal.SIGUSR2})
go.set()
for t in ts: t.join()
if not all(v is True for v in results.values()): sys.exit(2)
got = b''
while len(got) < 70000: got += a.recv(65536)
if got != b'x' * 70000: sys.exit(3)
a.sendall(b'pong'); 
if c.recv(4) != b'pong': sys.exit(4)
c2 = socket.create_connection(('127.0.0.1', port)); a2, _ = ls.accept()
c2.sendall(b'new'); sys.exit(0 if a2.recv(3) == b'new' else 5)
)";
  WriteFile(dir_ / "t.py", prog);
  pid_t pid = StartProgram("/usr/bin/python3", {dir_ / "t.py"});
  ASSERT_GT(pid, 0);
  pids_.push_back(pid);
  ASSERT_EQ(DumpKillRestore(pid), "");
  kill(pid, SIGUSR2);
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
}

// python3's http.server (ThreadingHTTPServer + SimpleHTTPRequestHandler, HTTP/1.1 keep-alive): a
// client has a connection open with half a request sent; after restore it finishes the request
// on the same connection and opens a new one.
TEST_F(Apps, Python3HttpServerKeepsClientConnection) {
  std::string body = Pattern(300000);
  ASSERT_EQ(mkdir((dir_ / "www").c_str(), 0755), 0);
  WriteFile(dir_ / "www/data.bin", body);
  WriteFile(dir_ / "srv.py", R"(
import functools, http.server, os, sys
http.server.SimpleHTTPRequestHandler.protocol_version = 'HTTP/1.1'
h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
s = http.server.ThreadingHTTPServer(('127.0.0.1', 0), h)
os.write(3, (str(s.server_address[1]) + '\n').encode()); os.close(3)
s.serve_forever()
)");
  std::string line;
  pid_t pid = StartProgram("/usr/bin/python3", {dir_ / "srv.py", dir_ / "www"}, &line);
  ASSERT_GT(pid, 0);
  pids_.push_back(pid);
  int port = atoi(line.c_str());
  ASSERT_GT(port, 0);
  int c = Connect(port);
  ASSERT_GE(c, 0);
  bool ok;
  ASSERT_TRUE(SendAll(c, "GET /data.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(HttpBody(c, &ok), body);
  // The handler thread now waits for the next request; half of it is in its receive queue.
  ASSERT_TRUE(SendAll(c, "GET /data.bin HTTP/1.1\r\n"));
  ASSERT_EQ(DumpKillRestore(pid), "");
  ASSERT_TRUE(SendAll(c, "Host: x\r\n\r\n"));
  std::string got = HttpBody(c, &ok);
  EXPECT_TRUE(ok) << got.substr(0, 200);
  EXPECT_EQ(got.size(), body.size());
  EXPECT_TRUE(got == body);
  close(c);
  int c2 = Connect(port);
  ASSERT_GE(c2, 0);
  ASSERT_TRUE(SendAll(c2, "GET /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  EXPECT_TRUE(HttpBody(c2, &ok) == body && ok);
  close(c2);
}

// busybox sh running a pipeline (producer | tr | md5sum) in the background and waiting for it:
// the producer stops half way until SIGUSR2 (trapped); after restore the pipeline completes and
// its checksum matches the expected one.
TEST_F(Apps, BusyboxShPipeline) {
  if (access("/usr/bin/busybox", X_OK) != 0) GTEST_SKIP() << "no busybox";
  std::string d = dir_.path();
  std::string script =
      "produce() { trap 'go=1' USR2; busybox sh -c 'echo $PPID' > " + d + "/producer.pid\n"
      "  busybox seq 1 20000; : > " + d + "/half\n"
      "  while [ -z \"$go\" ]; do busybox sleep 1 & wait $!; done; busybox seq 20001 40000; }\n"
      "{ produce | busybox tr 0-9 a-j | busybox md5sum > " + d + "/out; } 3>&- &\n"
      "while [ ! -e " + d + "/half ]; do busybox sleep 0.02; done\n"
      "echo ready >&3; exec 3>&-\n"
      "wait\n";
  WriteFile(dir_ / "p.sh", script);
  ASSERT_EQ(system(("busybox seq 1 40000 | busybox tr 0-9 a-j | busybox md5sum > " + d + "/expect").c_str()), 0);
  pid_t pid = StartProgram("/usr/bin/busybox", {"sh", dir_ / "p.sh"});
  ASSERT_GT(pid, 0);
  pids_.push_back(pid);
  ASSERT_EQ(DumpKillRestore(pid, {}), "");
  pid_t producer = atoi(ReadAll(dir_ / "producer.pid").c_str());
  ASSERT_GT(producer, 0);
  ASSERT_EQ(kill(producer, SIGUSR2), 0);
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
  EXPECT_EQ(ReadAll(dir_ / "out"), ReadAll(dir_ / "expect"));
}

// Reads one RESP reply line (+OK / :N / $N\r\nDATA).
std::string RedisCmd(int s, const std::string& cmd) {
  // RESP array of bulk strings (inline commands are limited to 64 KiB).
  std::vector<std::string> words;
  std::istringstream in(cmd);
  for (std::string w; in >> w;) words.push_back(w);
  std::string req = "*" + std::to_string(words.size()) + "\r\n";
  for (const auto& w : words) req += "$" + std::to_string(w.size()) + "\r\n" + w + "\r\n";
  if (!SendAll(s, req)) return "<send failed>";
  std::string r = ReadUntil(s, [](const std::string& b) {
    size_t e = b.find("\r\n");
    if (e == std::string::npos) return false;
    if (b[0] != '$') return true;
    long n = std::stol(b.substr(1, e - 1));
    return n < 0 || b.size() >= e + 2 + n + 2;
  });
  if (!r.empty() && r[0] == '$') {
    size_t e = r.find("\r\n");
    long n = std::stol(r.substr(1, e - 1));
    return n < 0 ? "<nil>" : r.substr(e + 2, n);
  }
  return r.substr(0, r.find("\r\n"));
}

TEST_F(Apps, RedisKeysAndOpenClientConnection) {
  if (access("/usr/bin/redis-server", X_OK) != 0) GTEST_SKIP() << "redis-server not installed";
  int port = FreePort();
  pid_t pid = Spawn({"/usr/bin/redis-server", "--port", std::to_string(port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--dir", dir_.path(), "--daemonize", "no",
                     "--protected-mode", "no"});
  int c = ConnectWithin(port, 20000);
  ASSERT_GE(c, 0) << "redis did not start listening";
  ASSERT_EQ(RedisCmd(c, "PING"), "+PONG");
  for (int i = 0; i < 1000; ++i)
    ASSERT_EQ(RedisCmd(c, "SET key" + std::to_string(i) + " value" + std::to_string(i * 7)), "+OK");
  ASSERT_EQ(RedisCmd(c, "SET big " + Pattern(100000)), "+OK");
  ASSERT_EQ(RedisCmd(c, "CLIENT SETNAME keeper"), "+OK");
  ASSERT_EQ(RedisCmd(c, "SET counter 35"), "+OK");
  ASSERT_EQ(DumpKillRestore(pid), "");
  EXPECT_EQ(RedisCmd(c, "GET key999"), "value6993");
  EXPECT_EQ(RedisCmd(c, "GET big"), Pattern(100000));
  EXPECT_EQ(RedisCmd(c, "DBSIZE"), ":1002");
  EXPECT_EQ(RedisCmd(c, "CLIENT GETNAME"), "keeper");
  int c2 = Connect(port);
  ASSERT_GE(c2, 0);
  EXPECT_EQ(RedisCmd(c2, "INCR counter"), ":36");
  EXPECT_EQ(RedisCmd(c, "GET counter"), "36");
  close(c2);
  close(c);
}

TEST_F(Apps, NginxMasterWorkersKeepAlive) {
  if (access("/usr/sbin/nginx", X_OK) != 0) GTEST_SKIP() << "nginx not installed";
  int port = FreePort();
  std::string body = Pattern(200000);
  ASSERT_EQ(mkdir((dir_ / "www").c_str(), 0755), 0);
  WriteFile(dir_ / "www/data.bin", body);
  chmod(dir_.path().c_str(), 0755);
  WriteFile(dir_ / "nginx.conf",
            "worker_processes 2;\npid " + dir_ / "nginx.pid" + ";\nerror_log " + dir_ / "error.log" +
                ";\nevents { worker_connections 64; }\n"
                "http { access_log off; keepalive_timeout 600; keepalive_requests 1000;\n"
                "  client_body_temp_path " + dir_.path() + "/tmp_body; proxy_temp_path " + dir_.path() +
                "/tmp_proxy;\n  fastcgi_temp_path " + dir_.path() + "/tmp_fcgi; uwsgi_temp_path " +
                dir_.path() + "/tmp_uwsgi; scgi_temp_path " + dir_.path() + "/tmp_scgi;\n"
                "  server { listen 127.0.0.1:" + std::to_string(port) + "; root " + dir_.path() + "/www; } }\n");
  pid_t pid = Spawn({"/usr/sbin/nginx", "-c", dir_ / "nginx.conf", "-p", dir_.path(), "-g", "daemon off;"});
  int c = ConnectWithin(port, 20000);
  ASSERT_GE(c, 0) << "nginx did not start listening";
  bool ok;
  ASSERT_TRUE(SendAll(c, "GET /data.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
  ASSERT_EQ(HttpBody(c, &ok), body);
  ASSERT_TRUE(ok);
  // The master forks its workers asynchronously: wait (bounded) until both exist.
  for (int64_t end = NowMs() + 20000; Descendants(pid).size() < 2 && NowMs() < end;) usleep(10000);
  ASSERT_EQ(Descendants(pid).size(), 2u) << "master + 2 workers";
  ASSERT_EQ(DumpKillRestore(pid), "");
  ASSERT_TRUE(SendAll(c, "GET /data.bin HTTP/1.1\r\nHost: x\r\n\r\n"));
  std::string got = HttpBody(c, &ok);
  EXPECT_TRUE(ok && got == body) << got.substr(0, 200);
  int c2 = Connect(port);
  ASSERT_GE(c2, 0);
  ASSERT_TRUE(SendAll(c2, "GET /data.bin HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
  EXPECT_TRUE(HttpBody(c2, &ok) == body && ok);
  close(c2);
  close(c);
  EXPECT_EQ(Descendants(pid).size(), 2u);
  // Graceful stop through the restored master: it signals its workers and reaps them.
  kill(pid, SIGQUIT);
  EXPECT_EQ(Wait(pid), 0);
  pids_.clear();
}

}  // namespace
}  // namespace godwit::crtest
