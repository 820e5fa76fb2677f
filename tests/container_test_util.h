// Shared fixtures for the container namespace tests: a helper child that sits in fresh
// namespaces until released (so they live exactly as long as the test wants), temp dirs, and a
// dump/restore round trip through a real image directory.
#pragma once

#include <fcntl.h>
#include <gtest/gtest.h>
#include <sched.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <ostream>
#include <vector>
#include <string>

#include "common/fs.h"
#include "common/result.h"
#include "common/unique_fd.h"
#include "container/ns.h"
#include "images/image.h"

namespace godwit::container::testing {

#define ASSERT_OK(expr)                                                    \
  do {                                                                     \
    auto&& ok_r_ = (expr);                                                 \
    ASSERT_TRUE(ok_r_.ok()) << #expr << ": " << ok_r_.error().to_string(); \
  } while (0)
#define EXPECT_OK(expr)                                                    \
  do {                                                                     \
    auto&& ok_r_ = (expr);                                                 \
    EXPECT_TRUE(ok_r_.ok()) << #expr << ": " << ok_r_.error().to_string(); \
  } while (0)

// A child process in new namespaces (flags: CLONE_NEW*). `setup` runs in the child after
// unshare; its failure (non-zero) makes Start fail. The child then blocks on a pipe until Stop
// (or the destructor) releases it, and is reaped by pid.
class NsHolder {
 public:
  NsHolder() = default;
  NsHolder(const NsHolder&) = delete;
  NsHolder& operator=(const NsHolder&) = delete;
  ~NsHolder() { Stop(); }

  Result<void> Start(int flags, const std::function<int()>& setup = nullptr) {
    int ready[2], hold[2];
    if (::pipe2(ready, O_CLOEXEC) < 0 || ::pipe2(hold, O_CLOEXEC) < 0) return Errno("pipe");
    pid_t pid = ::fork();
    if (pid < 0) return Errno("fork");
    if (pid == 0) {
      ::close(ready[0]);
      ::close(hold[1]);
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      char status = 0;
      if (::unshare(flags) < 0) status = 1;
      if (!status && (flags & CLONE_NEWNS) &&
          ::mount(nullptr, "/", nullptr, MS_REC | MS_PRIVATE, nullptr) < 0)
        status = 2;
      if (!status && setup) status = static_cast<char>(setup());
      if (::write(ready[1], &status, 1) != 1) ::_exit(3);
      char c;
      while (::read(hold[0], &c, 1) < 0 && errno == EINTR) {
      }
      ::_exit(0);
    }
    ::close(ready[1]);
    ::close(hold[0]);
    pid_ = pid;
    hold_.reset(hold[1]);
    char status = 9;
    ssize_t n = ::read(ready[0], &status, 1);
    ::close(ready[0]);
    if (n != 1 || status != 0) {
      Stop();
      return MakeError(ErrorKind::kGeneric, 0, "namespace holder failed to start (status %d)",
                       n == 1 ? status : -1);
    }
    return Ok();
  }

  void Stop() {
    if (pid_ <= 0) return;
    hold_.reset();
    int st;
    while (::waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
  }

  pid_t pid() const { return pid_; }
  Result<UniqueFd> Ns(const char* name) const { return OpenNamespace(pid_, name); }

 private:
  pid_t pid_ = -1;
  UniqueFd hold_;
};

// A directory removed (after unmounting whatever is on it) at scope exit.
class TempDir {
 public:
  explicit TempDir(const std::string& tag) {
    static int n = 0;
    path_ = StrFormat("/tmp/godwit-%s-%d-%d", tag.c_str(), getpid(), n++);
    (void)fs::RemoveAll(path_);
    (void)fs::MkdirAll(path_, 0755);
  }
  ~TempDir() {
    while (::umount2(path_.c_str(), MNT_DETACH) == 0) {
    }
    (void)fs::RemoveAll(path_);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs dump into a fresh image directory, finishes it and opens it back verified.
inline Result<images::ImageSet> DumpToDir(const std::string& dir,
                                          const std::function<Result<void>(images::Sink&)>& dump) {
  ASSIGN_OR_RETURN(std::unique_ptr<images::Sink> sink, images::OpenDirSink(dir));
  Result<void> r = dump(*sink);
  if (!r.ok()) {
    sink->Abort();
    return std::move(r).error();
  }
  TRY(sink->Finish(images::NewInventory()));
  return images::ImageSet::Open(dir);
}

// Runs a shell command (for setting up state with the standard tools, independent of godwit).
inline Result<std::string> Sh(const std::string& cmd) {
  FILE* f = ::popen((cmd + " 2>&1").c_str(), "r");
  if (!f) return Errno("popen %s", cmd.c_str());
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), f)) > 0) out.append(buf, n);
  int st = ::pclose(f);
  if (st != 0)
    return MakeError(ErrorKind::kGeneric, 0, "`%s` failed (%d): %s", cmd.c_str(), st, out.c_str());
  return out;
}

// One run of the godwit binary.
struct CliRun {
  int code = -1;
  std::string out;  // its stdout (empty when keep_out is off)
  std::string err;  // its stderr (logs, warnings, the error)
};

inline std::ostream& operator<<(std::ostream& os, const CliRun& r) { return os << r.out << r.err; }

// Runs the godwit binary with only stdin/stdout/stderr open (a container it starts or restores
// inherits what godwit has): stdin /dev/null, stdout and stderr each to a file (not pipes: a
// detached container keeps its copies open; a pipe to a peer outside the container is not
// something its checkpoint can take along). keep_out off: stdout is /dev/null too.
// netns_fd >= 0: godwit runs in that network namespace (a stand-in host).
inline CliRun Godwit(const std::vector<std::string>& args, bool keep_out = true,
                     int netns_fd = -1) {
  CliRun r;
  static int n = 0;
  std::string outf = StrFormat("/tmp/godwit-test-cli-%d-%d", getpid(), n++);
  std::string errf = outf + ".err";
  UniqueFd out(::open(outf.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  UniqueFd err(::open(errf.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600));
  ::unlink(outf.c_str());
  ::unlink(errf.c_str());
  if (!out || !err) return r;
  std::vector<std::string> full = {GODWIT_BIN};
  full.insert(full.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& a : full) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    int null = ::open("/dev/null", O_RDWR);
    ::dup2(null, 0);
    ::dup2(keep_out ? out.get() : null, 1);
    ::dup2(err.get(), 2);
    if (netns_fd >= 0 && ::setns(netns_fd, CLONE_NEWNET) < 0) ::_exit(126);
    ::close_range(3, ~0U, 0);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  int st = 0;
  ::waitpid(pid, &st, 0);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  auto read_all = [](int fd) {
    std::string text;
    char buf[4096];
    ssize_t k;
    for (off_t off = 0; (k = ::pread(fd, buf, sizeof(buf), off)) > 0; off += k) text.append(buf, k);
    return text;
  };
  r.out = read_all(out.get());
  r.err = read_all(err.get());
  return r;
}

inline int ReadInt(const std::string& path) {
  auto t = fs::ReadFile(path);
  return t.ok() ? atoi(t->c_str()) : -1;
}

// Polls a counter file of a container until it exceeds `above` (bounded: the container runs on
// its own, nothing to wait on but the file).
inline int WaitAbove(const std::string& path, int above) {
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  int v = -1;
  while (std::chrono::steady_clock::now() < end) {
    v = ReadInt(path);
    if (v > above) return v;
    ::usleep(10000);
  }
  return v;
}

// A cgroup knob of pid's cgroup: v1 (CTRL's hierarchy) or the unified one; "?" if unreadable.
inline std::string Knob(pid_t pid, const std::string& ctrl, const std::string& v1,
                        const std::string& v2) {
  auto cg = fs::ReadFile(StrFormat("/proc/%d/cgroup", pid));
  if (!cg.ok()) return "?";
  for (const auto& line : fs::Split(*cg, '\n')) {
    auto parts = fs::Split(line, ':');
    if (parts.size() < 3) continue;
    for (const auto& c : fs::Split(parts[1], ','))
      if (c == ctrl) {
        auto v = fs::ReadFile("/sys/fs/cgroup/" + ctrl + parts[2] + "/" + v1);
        if (v.ok()) return fs::Trim(*v);
      }
  }
  for (const auto& line : fs::Split(*cg, '\n'))
    if (line.rfind("0::", 0) == 0) {
      auto v = fs::ReadFile("/sys/fs/cgroup" + line.substr(3) + "/" + v2);
      if (v.ok()) return fs::Trim(*v);
    }
  return "?";
}

}  // namespace godwit::container::testing
