#include "images/precheck.h"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>

#include "common/log.h"
#include "common/priority.h"
#include "images/image.h"

namespace godwit::images {
namespace {

struct Entry {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  timespec mtime{}, ctime{};
  std::set<uint64_t> chunks;  // file offsets of the chunks checked
  bool used = false;          // a reader took them (PrecheckHits)
};

bool SameFile(const Entry& e, const struct stat& st) {
  return e.dev == st.st_dev && e.ino == st.st_ino && e.size == st.st_size &&
         e.mtime.tv_sec == st.st_mtim.tv_sec && e.mtime.tv_nsec == st.st_mtim.tv_nsec &&
         e.ctime.tv_sec == st.st_ctim.tv_sec && e.ctime.tv_nsec == st.st_ctim.tv_nsec;
}

std::mutex g_mu;
std::map<std::string, Entry>& Registry() {
  static std::map<std::string, Entry> r;
  return r;
}

bool WriteAll(int fd, const char* p, size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    p += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// The helper: one path per line on fd 3; for each good chunk of the file (in file order, while
// the file stays the same), a line on fd 4:
// "PATH\tDEV INO SIZE MTIME_S MTIME_NS CTIME_S CTIME_NS FILE_OFF". Ends at EOF.
[[noreturn]] void HelperMain(bool paced) {
  Pacer pacer(paced);  // the rounds' checks are background work (common/priority.h)
  std::string in;
  char rd[4096];
  for (;;) {
    size_t nl;
    while ((nl = in.find('\n')) == std::string::npos) {
      ssize_t n = ::read(3, rd, sizeof(rd));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) _exit(0);
      in.append(rd, static_cast<size_t>(n));
    }
    std::string path = in.substr(0, nl);
    in.erase(0, nl + 1);
    struct stat before;
    if (::stat(path.c_str(), &before) < 0 || !S_ISREG(before.st_mode)) continue;
    auto blob = BlobReader::OpenFile(path, path, /*verified=*/false);
    if (!blob.ok()) continue;
    char id[160];
    snprintf(id, sizeof(id), "\t%llu %llu %lld %lld %ld %lld %ld ",
             static_cast<unsigned long long>(before.st_dev),
             static_cast<unsigned long long>(before.st_ino),
             static_cast<long long>(before.st_size), static_cast<long long>(before.st_mtim.tv_sec),
             before.st_mtim.tv_nsec, static_cast<long long>(before.st_ctim.tv_sec),
             before.st_ctim.tv_nsec);
    const std::string prefix = path + id;
    Entry same{before.st_dev, before.st_ino, before.st_size, before.st_mtim, before.st_ctim, {}};
    (void)(*blob)->CheckEachChunk([&](uint64_t off) {
      struct stat now;
      // Changed meanwhile (replaced, written again): neither this chunk nor the rest counts.
      if (::fstat((*blob)->fd(), &now) < 0 || !SameFile(same, now)) return false;
      std::string line = prefix + std::to_string(off) + "\n";
      if (!WriteAll(4, line.data(), line.size())) _exit(0);
      pacer.Tick();
      return true;
    });
  }
}

}  // namespace

Result<std::unique_ptr<Prechecker>> Prechecker::Start(bool paced) {
  // The paths go over a socket, not a pipe: a helper that died (killed by the OOM killer, say)
  // must not take the restore with it by SIGPIPE (godwitd starts it with the default action):
  // send(MSG_NOSIGNAL) gets EPIPE instead.
  int to[2], from[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, to) < 0)
    return Errno("precheck: socketpair");
  if (::pipe2(from, O_CLOEXEC) < 0) {
    int e = errno;
    ::close(to[0]);
    ::close(to[1]);
    return MakeError(ErrorKind::kGeneric, e, "precheck: pipe: %s", strerror(e));
  }
  const pid_t parent = getpid();
  pid_t pid = fork();
  if (pid < 0) {
    int e = errno;
    for (int fd : {to[0], to[1], from[0], from[1]}) ::close(fd);
    return MakeError(ErrorKind::kGeneric, e, "precheck: fork: %s", strerror(e));
  }
  if (pid == 0) {
    // Nothing of the restore's: its stdout (the JSON line its caller reads to EOF), the wait
    // fd. Dies with it; runs on idle CPU only.
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(0);
    if (::dup2(to[0], 3) < 0 || ::dup2(from[1], 4) < 0) _exit(0);
    ::syscall(SYS_close_range, 5U, ~0U, 0U);
    int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      for (int fd = 0; fd < 3; ++fd) ::dup2(null, fd);
      if (null > 4) ::close(null);
    }
    sched_param sp{};
    (void)sched_setscheduler(0, SCHED_IDLE, &sp);
    HelperMain(paced);
  }
  ::close(to[0]);
  ::close(from[1]);
  std::unique_ptr<Prechecker> p(new Prechecker());
  p->pid_ = pid;
  p->to_.reset(to[1]);
  p->from_.reset(from[0]);
  // Never blocks the restore: a path that does not fit the socket is simply not prechecked.
  // The results wait in the pipe until Finish: room for ~7000 chunks (28 GiB of rounds).
  (void)fcntl(from[0], F_SETFL, O_NONBLOCK);
  (void)fcntl(from[0], F_SETPIPE_SZ, 1 << 20);
  return p;
}

Prechecker::~Prechecker() {
  if (pid_ <= 0) return;
  if (!finished_) ::kill(pid_, SIGKILL);
  to_.reset();
  from_.reset();
  while (::waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
  }
}

void Prechecker::Add(const std::string& path) {
  if (finished_ || !to_ || path.find('\n') != std::string::npos || !queued_.insert(path).second)
    return;
  std::string line = path + "\n";
  ssize_t w = ::send(to_.get(), line.data(), line.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  if (w != static_cast<ssize_t>(line.size())) to_.reset();  // full or broken: no more
}

size_t Prechecker::Finish(bool wait_all) {
  if (finished_) return 0;
  finished_ = true;
  if (wait_all) {
    to_.reset();  // EOF: the helper ends once it has done the queue, closing its end
    (void)fcntl(from_.get(), F_SETFL, 0);
  }
  std::string got;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(from_.get(), buf, sizeof(buf));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    got.append(buf, static_cast<size_t>(n));
  }
  ::kill(pid_, SIGKILL);
  to_.reset();
  from_.reset();
  size_t registered = 0;
  size_t start = 0, nl;
  while ((nl = got.find('\n', start)) != std::string::npos) {
    std::string line = got.substr(start, nl - start);
    start = nl + 1;
    size_t tab = line.rfind('\t');
    if (tab == std::string::npos) continue;
    unsigned long long dev, ino, off;
    long long size, ms, cs;
    long mn, cn;
    if (sscanf(line.c_str() + tab + 1, "%llu %llu %lld %lld %ld %lld %ld %llu", &dev, &ino, &size,
               &ms, &mn, &cs, &cn, &off) != 8)
      continue;
    struct stat st{};
    st.st_dev = static_cast<dev_t>(dev);
    st.st_ino = static_cast<ino_t>(ino);
    st.st_size = static_cast<off_t>(size);
    st.st_mtim = {static_cast<time_t>(ms), mn};
    st.st_ctim = {static_cast<time_t>(cs), cn};
    NotePrechecked(line.substr(0, tab), st, off);
    registered++;
  }
  return registered;
}

void NotePrechecked(const std::string& path, const struct stat& st, uint64_t file_off) {
  std::lock_guard<std::mutex> l(g_mu);
  Entry& e = Registry()[path];
  if (!SameFile(e, st)) e = Entry{st.st_dev, st.st_ino, st.st_size, st.st_mtim, st.st_ctim, {}};
  e.chunks.insert(file_off);
}

std::set<uint64_t> PrecheckedChunks(const std::string& path, int fd) {
  std::lock_guard<std::mutex> l(g_mu);
  auto it = Registry().find(path);
  if (it == Registry().end()) return {};
  struct stat st;
  if (::fstat(fd, &st) < 0 || !SameFile(it->second, st)) return {};
  it->second.used = true;
  return it->second.chunks;
}

void ForgetPrechecked() {
  std::lock_guard<std::mutex> l(g_mu);
  Registry().clear();
}

size_t PrecheckHits() {
  std::lock_guard<std::mutex> l(g_mu);
  size_t n = 0;
  for (const auto& [path, e] : Registry())
    if (e.used) n += e.chunks.size();
  return n;
}

}  // namespace godwit::images
