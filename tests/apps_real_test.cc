// Real applications through godwit dump -> kill -> restore --detach, with a client connection
// (from this test, over loopback) kept open across the checkpoint (--tcp-established): the
// restored application must answer on the old connection and on new ones, with its state intact.
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <set>
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
    // Files a killed application leaves (a JVM's hsperfdata, /tmp/hsperfdata_USER/PID: removed
    // by the JVM on a normal exit only), then their directory when it is empty.
    for (const auto& f : remove_after_) {
      ::unlink(f.c_str());
      ::rmdir(f.substr(0, f.rfind('/')).c_str());
    }
    // Orphans of a failed check (reparented to us, the subreaper) are ours too.
    std::ifstream kf("/proc/self/task/" + std::to_string(getpid()) + "/children");
    for (pid_t k; kf >> k;) KillAndReap(k);
    if (HasFailure()) {
      std::string e = ReadAll(dir_ / "app.log");
      if (!e.empty()) ADD_FAILURE() << "application output:\n" << e.substr(e.size() > 4000 ? e.size() - 4000 : 0);
    }
  }
  // Starts argv[0] (absolute) with stdin /dev/null and stdout/stderr to app.log.
  // uid/gid >= 0: run as that user (postgres refuses to run as root).
  pid_t Spawn(const std::vector<std::string>& argv, int uid = -1, int gid = -1) {
    std::string log = dir_ / "app.log";
    pid_t pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_RDONLY);
      int l = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);  // as root: in dir_
      if (gid >= 0 && (setgroups(0, nullptr) != 0 || setgid(gid) != 0)) _exit(126);
      if (uid >= 0 && setuid(uid) != 0) _exit(126);
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
  // A server that writes its port on fd 3 when it listens (StartProgram): its pid (killed at
  // TearDown) and *port; 0 when it did not start or named no port (a failure is recorded).
  pid_t StartServer(const std::string& path, const std::vector<std::string>& args, int* port) {
    std::string line;
    pid_t pid = StartProgram(path, args, &line);
    if (pid <= 0) {
      ADD_FAILURE() << path << " did not start";
      return 0;
    }
    pids_.push_back(pid);
    *port = atoi(line.c_str());
    if (*port <= 0) {
      ADD_FAILURE() << path << " named no port: \"" << line << "\"";
      return 0;
    }
    return pid;
  }
  TempDir dir_;
  std::vector<pid_t> pids_;
  std::vector<std::string> remove_after_;  // unlinked in TearDown, after the kills
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
  int port = 0;
  pid_t pid = StartServer("/usr/bin/python3", {dir_ / "srv.py", dir_ / "www"}, &port);
  ASSERT_GT(pid, 0);
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

// A PostgreSQL frontend/backend protocol (v3) client, just enough for simple queries: trust
// authentication, the backend's pid (BackendKeyData), rows as text.
class PgConn {
 public:
  ~PgConn() {
    if (fd_ >= 0) close(fd_);
  }
  // Connects and starts a session; "" or the server's error (the postmaster may still be
  // starting: "the database system is starting up").
  std::string Open(const std::string& ip, int port) {
    if (fd_ >= 0) close(fd_);
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(port);
    inet_pton(AF_INET, ip.c_str(), &a.sin_addr);
    if (connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return "connect failed";
    static const char kStartup[] = "\0\3\0\0user\0postgres\0database\0postgres\0";
    std::string body(kStartup, sizeof kStartup);  // protocol 3.0, parameters, a final \0
    uint32_t len = htonl(body.size() + 4);
    if (!SendAll(fd_, std::string(reinterpret_cast<char*>(&len), 4) + body)) return "send failed";
    for (;;) {
      char t;
      std::string b;
      if (!Read(&t, &b)) return "connection closed during startup";
      if (t == 'E') return Field(b, 'M');
      if (t == 'K' && b.size() >= 4)
        backend_pid_ = ntohl(*reinterpret_cast<const uint32_t*>(b.data()));
      if (t == 'Z') return "";
    }
  }
  // Opens within ms (the postmaster accepts before it is ready).
  std::string OpenWithin(const std::string& ip, int port, int ms) {
    std::string err;
    for (int64_t end = NowMs() + ms; NowMs() < end; usleep(20000))
      if ((err = Open(ip, port)).empty()) return "";
    return err;
  }
  // Runs a simple query: every row of every statement, columns joined by '|', rows by ';'. A
  // server error comes back as "ERROR: message".
  std::string Query(const std::string& sql) {
    std::string msg = "Q";
    uint32_t len = htonl(sql.size() + 5);
    msg.append(reinterpret_cast<char*>(&len), 4).append(sql).push_back('\0');
    if (!SendAll(fd_, msg)) return "<send failed>";
    std::string out, err;
    for (;;) {
      char t;
      std::string b;
      if (!Read(&t, &b)) return "<connection lost> " + out;
      if (t == 'E') err = "ERROR: " + Field(b, 'M');
      if (t == 'D' && b.size() >= 2) {
        if (!out.empty()) out += ";";
        int n = ntohs(*reinterpret_cast<const uint16_t*>(b.data()));
        size_t off = 2;
        for (int i = 0; i < n && off + 4 <= b.size(); ++i) {
          int32_t l = ntohl(*reinterpret_cast<const uint32_t*>(b.data() + off));
          off += 4;
          if (i) out += "|";
          if (l > 0) out += b.substr(off, l);
          off += std::max(l, 0);
        }
      }
      if (t == 'Z') return err.empty() ? out : err;
    }
  }
  int backend_pid() const { return backend_pid_; }

 private:
  bool ReadN(char* p, size_t n) {
    while (n) {
      pollfd pf = {fd_, POLLIN, 0};
      if (poll(&pf, 1, 20000) <= 0) return false;
      ssize_t k = recv(fd_, p, n, 0);
      if (k <= 0) return false;
      p += k;
      n -= k;
    }
    return true;
  }
  bool Read(char* type, std::string* body) {
    char h[5];
    if (!ReadN(h, 5)) return false;
    *type = h[0];
    uint32_t len = ntohl(*reinterpret_cast<uint32_t*>(h + 1));
    if (len < 4 || len > (64u << 20)) return false;
    body->resize(len - 4);
    return ReadN(body->data(), len - 4);
  }
  // A field of an ErrorResponse ('M': the message).
  static std::string Field(const std::string& b, char code) {
    for (size_t i = 0; i < b.size() && b[i];) {
      size_t e = b.find('\0', i + 1);
      if (e == std::string::npos) break;
      if (b[i] == code) return b.substr(i + 1, e - i - 1);
      i = e + 1;
    }
    return "error";
  }
  int fd_ = -1;
  int backend_pid_ = 0;
};

// The PostgreSQL server binaries (the Debian layout, or links in /usr/local/bin).
std::string PgBin(const std::string& name) {
  for (std::string d :
       {"/usr/local/bin/", "/usr/lib/postgresql/15/bin/", "/usr/lib/postgresql/16/bin/"})
    if (access((d + name).c_str(), X_OK) == 0) return d + name;
  return "";
}

// The unprivileged user postgres runs as: "postgres", else nobody.
bool PgUser(int* uid, int* gid) {
  passwd* pw = getpwnam("postgres");
  if (!pw) pw = getpwnam("nobody");
  if (!pw) return false;
  *uid = pw->pw_uid;
  *gid = pw->pw_gid;
  return true;
}

// Runs argv as uid/gid and waits: its exit code.
int RunAs(const std::vector<std::string>& argv, int uid, int gid, const std::string& log) {
  pid_t pid = fork();
  if (pid == 0) {
    int l = open(log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);  // as root: in the test's dir
    if (l < 0 || setgroups(0, nullptr) != 0 || setgid(gid) != 0 || setuid(uid) != 0) _exit(126);
    int null = open("/dev/null", O_RDONLY);
    dup2(null, 0);
    dup2(l, 1);
    dup2(l, 2);
    std::vector<char*> av;
    for (const auto& a : argv) av.push_back(const_cast<char*>(a.c_str()));
    av.push_back(nullptr);
    execv(av[0], av.data());
    _exit(127);
  }
  return Wait(pid);
}

// What a killed postmaster leaves behind outside its data directory: its SysV interlock segment
// (postmaster.pid line 7: key and id) and its POSIX dynamic shared memory (/dev/shm/PostgreSQL.N,
// the ones that appeared since `before`).
std::set<std::string> PgShmFiles() {
  std::set<std::string> out;
  if (DIR* d = opendir("/dev/shm")) {
    while (dirent* e = readdir(d))
      if (std::string(e->d_name).rfind("PostgreSQL.", 0) == 0) out.insert(e->d_name);
    closedir(d);
  }
  return out;
}
void PgRemoveLeftovers(const std::string& datadir, const std::set<std::string>& before) {
  std::istringstream in(ReadAll(datadir + "/postmaster.pid"));
  std::string line;
  for (int i = 0; i < 7 && std::getline(in, line); ++i) {
  }
  long key = 0, id = -1;
  if (sscanf(line.c_str(), "%ld %ld", &key, &id) == 2 && id >= 0) shmctl(id, IPC_RMID, nullptr);
  for (const auto& f : PgShmFiles())
    if (!before.count(f)) unlink(("/dev/shm/" + f).c_str());
}

class Postgres : public Apps {
 protected:
  void SetUp() override {
    if (PgBin("postgres").empty() || PgBin("initdb").empty()) GTEST_SKIP() << "no postgres";
    ASSERT_TRUE(PgUser(&uid_, &gid_));
    shm_before_ = PgShmFiles();
  }
  void TearDown() override {
    if (!id_.empty()) Godwit({"--root", root_, "delete", "-f", id_});
    Apps::TearDown();
    if (!data_.empty()) PgRemoveLeftovers(data_, shm_before_);
    if (!usr_.empty()) umount2(usr_.c_str(), MNT_DETACH);
  }
  // initdb into `parent`/db as the postgres user (trust authentication, no fsync).
  void InitDb(const std::string& parent) {
    ASSERT_EQ(chown(parent.c_str(), uid_, gid_), 0);
    data_ = parent + "/db";
    ASSERT_EQ(RunAs({PgBin("initdb"), "-D", data_, "-A", "trust", "-U", "postgres", "--no-sync",
                     "-E", "UTF8", "--locale=C"},
                    uid_, gid_, dir_ / "app.log"),
              0);
  }
  // A session with state only its backend has: a temp table and an open transaction.
  void OpenSession(PgConn& c) {
    ASSERT_EQ(c.Query("CREATE TEMP TABLE t AS SELECT g AS a, md5(g::text) AS b "
                      "FROM generate_series(1, 10000) g; CREATE TABLE p (a int); BEGIN; "
                      "INSERT INTO p VALUES (1), (2), (3); SELECT count(*) FROM p"),
              "3");
  }
  // After restore: the same backend answers with its temp table and transaction, commits; a new
  // session sees the commit and runs a parallel query (the restored postmaster forks workers
  // and hands them dynamic shared memory) and a checkpoint (the checkpointer, through latches).
  void CheckSession(PgConn& c, const std::string& ip, int port) {
    EXPECT_EQ(c.Query("SELECT count(*), pg_backend_pid(), sum(length(b)) FROM t"),
              "10000|" + std::to_string(c.backend_pid()) + "|320000");
    EXPECT_EQ(c.Query("INSERT INTO p VALUES (4); COMMIT; SELECT count(*) FROM p"), "4");
    PgConn c2;
    ASSERT_EQ(c2.Open(ip, port), "");
    EXPECT_NE(c2.backend_pid(), c.backend_pid());
    EXPECT_EQ(c2.Query("SELECT sum(a) FROM p"), "10");
    std::string plan = c2.Query(
        "SET max_parallel_workers_per_gather = 2; SET parallel_setup_cost = 0; "
        "SET parallel_tuple_cost = 0; SET min_parallel_table_scan_size = 0; "
        "CREATE TABLE big AS SELECT g AS a FROM generate_series(1, 100000) g; ANALYZE big; "
        "EXPLAIN (ANALYZE, COSTS OFF, TIMING OFF) SELECT count(*) FROM big");
    EXPECT_NE(plan.find("Workers Launched: 2"), std::string::npos) << plan;
    EXPECT_EQ(c2.Query("CHECKPOINT; SELECT count(*) FROM big"), "100000");
  }
  int uid_ = -1, gid_ = -1;
  std::string data_;
  std::string root_, id_, usr_;  // a container's state root and id, the /usr bound into its rootfs
  std::set<std::string> shm_before_;
};

// PostgreSQL as a process tree: the postmaster, its background processes (checkpointer, writer,
// WAL writer, autovacuum launcher, logical replication launcher) and a client's backend, with
// shared memory (anonymous shared, SysV, POSIX /dev/shm), latches (self-pipes, epoll) and the
// listening sockets; the client's TCP connection is held across the checkpoint.
TEST_F(Postgres, SessionAndTransactionSurviveProcessTreeCheckpoint) {
  ASSERT_NO_FATAL_FAILURE(InitDb(dir_.path()));
  int port = FreePort();
  pid_t pid = Spawn({PgBin("postgres"), "-D", data_, "-p", std::to_string(port), "-k", dir_.path(),
                     "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"},
                    uid_, gid_);
  PgConn c;
  ASSERT_EQ(c.OpenWithin("127.0.0.1", port, 20000), "");
  OpenSession(c);
  ASSERT_EQ(DumpKillRestore(pid), "");
  CheckSession(c, "127.0.0.1", port);
  // A clean shutdown through the restored postmaster: every child stops, the shutdown
  // checkpoint is written, shared memory is removed.
  kill(pid, SIGINT);
  EXPECT_EQ(WaitBounded(pid, 20000), 0);
  pids_.clear();
  EXPECT_NE(ReadAll(dir_ / "app.log").find("database system is shut down"), std::string::npos);
}

// PostgreSQL in a godwit container, as a user sets one up from the host's binaries: a bundle
// whose rootfs has the host's /usr bound beneath it (brought in by the rootfs's recursive bind,
// not listed in config.json) and no network namespace of its own (the host's, as --net=host);
// `godwit checkpoint --tcp-established` and `godwit restore`: the client's session goes on.
TEST_F(Postgres, SessionSurvivesContainerCheckpointWithHostNetwork) {
  chmod(dir_.path().c_str(), 0755);  // the postgres user reaches its data directory
  std::string b = dir_ / "bundle", rootfs = b + "/rootfs", id = "gwpg" + std::to_string(getpid());
  ASSERT_EQ(Godwit({"mkrootfs", rootfs, "--busybox", "/usr/bin/busybox"}).status, 0);
  ASSERT_EQ(Godwit({"spec", "--bundle", b}).status, 0);
  ASSERT_EQ(symlink("usr/lib", (rootfs + "/lib").c_str()), 0);
  ASSERT_EQ(symlink("usr/lib64", (rootfs + "/lib64").c_str()), 0);
  ASSERT_EQ(mount("/usr", (rootfs + "/usr").c_str(), nullptr, MS_BIND, nullptr), 0);
  usr_ = rootfs + "/usr";
  ASSERT_EQ(mount(nullptr, usr_.c_str(), nullptr, MS_BIND | MS_REMOUNT | MS_RDONLY, nullptr), 0);
  std::ofstream(rootfs + "/etc/passwd", std::ios::app)
      << "postgres:x:" << uid_ << ":" << gid_ << "::/data:/bin/sh\n";
  ASSERT_EQ(mkdir((rootfs + "/data").c_str(), 0755), 0);
  ASSERT_NO_FATAL_FAILURE(InitDb(rootfs + "/data"));
  int port = FreePort();
  std::ofstream(data_ + "/postgresql.conf", std::ios::app)
      << "listen_addresses = '127.0.0.1'\nport = " << port
      << "\nunix_socket_directories = '/data'\nfsync = off\n";
  // config.json: the host's network, postgres as its user.
  std::string cfg = ReadAll(b + "/config.json");
  size_t net = cfg.find("\"type\": \"network\"");
  ASSERT_NE(net, std::string::npos) << cfg;
  size_t open = cfg.rfind('{', net), close = cfg.find('}', net);
  cfg.erase(open, cfg.find_first_not_of(" \n,", close + 1) - open);
  size_t args = cfg.find("\"args\": [");
  ASSERT_NE(args, std::string::npos);
  cfg.replace(args, cfg.find(']', args) + 1 - args,
              "\"args\": [\"/usr/bin/setpriv\", \"--reuid\", \"" + std::to_string(uid_) +
                  "\", \"--regid\", \"" + std::to_string(gid_) + "\", \"--clear-groups\", \"" +
                  PgBin("postgres") + "\", \"-D\", \"/data/db\"]");
  WriteFile(b + "/config.json", cfg);
  root_ = dir_ / "state";
  id_ = id;
  auto run = Godwit({"--root", root_, "run", id, "--bundle", b, "--detach"});
  ASSERT_EQ(run.status, 0) << run.err;
  PgConn c;
  ASSERT_EQ(c.OpenWithin("127.0.0.1", port, 20000), "");
  OpenSession(c);
  auto ck = Godwit(
      {"--root", root_, "checkpoint", id, "--image-path", dir_ / "ck", "--tcp-established"});
  ASSERT_EQ(ck.status, 0) << ck.err;
  // The killed container's processes were reparented to us (the subreaper): reaped.
  for (pid_t k; (k = waitpid(-1, nullptr, WNOHANG)) > 0;) {
  }
  auto rs = Godwit({"--root", root_, "restore", id, "--image-path", dir_ / "ck", "--detach"});
  ASSERT_EQ(rs.status, 0) << rs.err;
  CheckSession(c, "127.0.0.1", port);
}

// Node.js: an http server whose keep-alive connection is held across the checkpoint, a
// worker_threads worker holding a counter, and a 5 ms setInterval timer.
TEST_F(Apps, NodeHttpWorkerAndTimers) {
  if (access("/usr/bin/node", X_OK) != 0) GTEST_SKIP() << "no node";
  WriteFile(dir_ / "app.js", R"(
const http = require('http'), fs = require('fs');
const { Worker } = require('worker_threads');
let ticks = 0;
setInterval(() => { ticks++; }, 5);
const w = new Worker(`
const { parentPort } = require('worker_threads');
let n = 0;
parentPort.on('message', (m) => { n++; parentPort.postMessage({ n, sq: m * m }); });
`, { eval: true });
const pending = [];
w.on('message', (r) => pending.shift()(r));
const srv = http.createServer((req, res) => {
  const v = Number(req.url.slice(1)) || 0;
  pending.push((r) => {
    const body = JSON.stringify({ ticks, n: r.n, sq: r.sq, pid: process.pid });
    res.setHeader('Content-Length', Buffer.byteLength(body));
    res.end(body);
  });
  w.postMessage(v);
});
srv.keepAliveTimeout = 600000;
srv.listen(0, '127.0.0.1', () => { fs.writeSync(3, srv.address().port + '\n'); fs.closeSync(3); });
)");
  int port = 0;
  pid_t pid = StartServer("/usr/bin/node", {dir_ / "app.js"}, &port);
  ASSERT_GT(pid, 0);
  int c = Connect(port);
  ASSERT_GE(c, 0);
  bool ok;
  // {"ticks":T,"n":N,"sq":S,"pid":P}
  int asked = 0;  // requests so far: the worker's counter
  auto get = [&](int sock, int v, long* ticks) {
    ++asked;
    if (!SendAll(sock, "GET /" + std::to_string(v) + " HTTP/1.1\r\nHost: x\r\n\r\n"))
      return std::string();
    std::string b = HttpBody(sock, &ok);
    size_t t = b.find("\"ticks\":");
    *ticks = t == std::string::npos ? -1 : atol(b.c_str() + t + 8);
    size_t n = b.find(",\"n\":");
    return n == std::string::npos ? b : b.substr(n);  // from the worker's counter on
  };
  long t0, t1, t2 = -1;
  std::string p = ",\"pid\":" + std::to_string(pid) + "}";
  ASSERT_EQ(get(c, 7, &t0), ",\"n\":1,\"sq\":49" + p);
  ASSERT_EQ(DumpKillRestore(pid), "");
  // The same connection, the same worker (its counter goes on), the same process.
  EXPECT_EQ(get(c, 8, &t1), ",\"n\":2,\"sq\":64" + p);
  EXPECT_GE(t1, t0);
  // The interval timer fires on after the restore (bounded: each request is a round trip).
  for (int64_t end = NowMs() + 10000; NowMs() < end && get(c, 1, &t2).size() && t2 <= t1 + 3;) {
  }
  EXPECT_GT(t2, t1 + 3) << "the setInterval timer stopped";
  int c2 = Connect(port);
  ASSERT_GE(c2, 0);
  long t3;
  std::string last = get(c2, 9, &t3);
  EXPECT_EQ(last, ",\"n\":" + std::to_string(asked) + ",\"sq\":81" + p);
  close(c2);
  close(c);
}

// Java (OpenJDK): worker threads, a ScheduledExecutorService, a ServerSocket with an accepted
// client connection held across the checkpoint (served by a thread pool).
TEST_F(Apps, JavaThreadsSchedulerServerSocket) {
  if (access("/usr/bin/java", X_OK) != 0 || access("/usr/bin/javac", X_OK) != 0)
    GTEST_SKIP() << "no java/javac";
  WriteFile(dir_ / "App.java", R"(
import java.io.*;
import java.net.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.*;

public class App {
  public static void main(String[] a) throws Exception {
    AtomicLong ticks = new AtomicLong();
    ScheduledExecutorService ses = Executors.newScheduledThreadPool(2);
    ses.scheduleAtFixedRate(() -> ticks.incrementAndGet(), 0, 5, TimeUnit.MILLISECONDS);
    AtomicLong[] spins = new AtomicLong[4];
    for (int i = 0; i < 4; i++) {
      AtomicLong mine = spins[i] = new AtomicLong();
      Thread t = new Thread(() -> {
        while (true) {
          mine.incrementAndGet();
          try { Thread.sleep(2); } catch (InterruptedException e) { return; }
        }
      });
      t.setDaemon(true);
      t.start();
    }
    ServerSocket ss = new ServerSocket(Integer.parseInt(a[0]), 8, InetAddress.getLoopbackAddress());
    ExecutorService pool = Executors.newCachedThreadPool();
    long[] served = new long[1];
    while (true) {
      Socket s = ss.accept();
      pool.submit(() -> {
        try (BufferedReader in = new BufferedReader(new InputStreamReader(s.getInputStream()));
             PrintWriter out = new PrintWriter(s.getOutputStream(), true)) {
          for (String l; (l = in.readLine()) != null;) {
            long n, min = Long.MAX_VALUE;
            synchronized (served) { n = ++served[0]; }
            for (AtomicLong x : spins) min = Math.min(min, x.get());
            long pid = ProcessHandle.current().pid();
            out.println(l + " " + n + " " + ticks.get() + " " + min + " " + pid);
          }
        } catch (IOException e) {}
        return null;
      });
    }
  }
}
)");
  std::string javac = "/usr/bin/javac -d " + dir_.path() + " " + dir_.path() + "/App.java";
  ASSERT_EQ(system(javac.c_str()), 0);
  int port = FreePort();
  pid_t pid = Spawn({"/usr/bin/java", "-Xmx64m", "-cp", dir_.path(), "App", std::to_string(port)});
  remove_after_.push_back("/tmp/hsperfdata_root/" + std::to_string(pid));
  int c = ConnectWithin(port, 20000);
  ASSERT_GE(c, 0) << "java did not start listening";
  // "WORD N TICKS MINSPIN PID": N counts requests over all connections.
  auto ask = [&](int s, const std::string& w, long* ticks, long* spin) {
    if (!SendAll(s, w + "\n")) return std::string();
    std::string l =
        ReadUntil(s, [](const std::string& b) { return b.find('\n') != std::string::npos; });
    std::istringstream in(l);
    std::string word, n, pidw;
    in >> word >> n >> *ticks >> *spin >> pidw;
    return word + " " + n + " " + pidw;
  };
  long t0, s0, t1, s1;
  std::string p = " " + std::to_string(pid);
  ASSERT_EQ(ask(c, "a", &t0, &s0), "a 1" + p);
  ASSERT_EQ(DumpKillRestore(pid), "");
  EXPECT_EQ(ask(c, "b", &t1, &s1), "b 2" + p);
  // The scheduler and every worker thread run on (bounded).
  int n = 2;
  for (int64_t end = NowMs() + 10000; NowMs() < end && (t1 <= t0 + 3 || s1 <= s0 + 3);)
    EXPECT_EQ(ask(c, "x", &t1, &s1), "x " + std::to_string(++n) + p);
  EXPECT_GT(t1, t0 + 3) << "the scheduled task stopped";
  EXPECT_GT(s1, s0 + 3) << "a worker thread stopped";
  int c2 = Connect(port);
  ASSERT_GE(c2, 0);
  EXPECT_EQ(ask(c2, "c", &t1, &s1), "c " + std::to_string(n + 1) + p);
  close(c2);
  close(c);
}

}  // namespace
}  // namespace godwit::crtest
