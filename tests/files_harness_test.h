// Round trips of fd state through FdDumper/FdRestorer without the process engine: a real forked
// process sets up its fds and stops (SIGSTOP, the parent sees it with waitpid WUNTRACED), the
// test dumps it into a temporary image directory, kills it, then a forked "coordinator" loads
// the images, prepares every description and forks one child per dumped process, which installs
// its fds and runs the check. Checks report through the exit code and a text on a pipe.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "common/fs.h"
#include "files/files.h"
#include "images/image.h"
#include "proto/fd.pb.h"

namespace godwit::files::testing {

// High numbers for the harness's own pipes: restored fd tables stay below them.
inline constexpr int kHarnessFd = 900;

inline std::string TempDir(const char* tag) {
  std::string d = StrFormat("/tmp/godwit-files-%s-%d-XXXXXX", tag, getpid());
  if (!mkdtemp(d.data())) return "";
  return d;
}

// Stops the calling process until the test kills it.
inline void StopHere() { raise(SIGSTOP); }

// Forks a process that makes its stdio /dev/null, closes everything else, runs setup and stops.
// setup returns 0 or an exit code (the process exits with it: the test sees no stop).
inline pid_t SpawnStopped(const std::function<int()>& setup, const std::vector<int>& keep = {}) {
  pid_t pid = fork();
  if (pid == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    if (!getenv("GODWIT_TEST_STDERR")) dup2(null, 2);
    for (int fd = 3; fd < 1024; fd++)
      if (std::find(keep.begin(), keep.end(), fd) == keep.end()) close(fd);
    int rc = setup();
    if (rc) _exit(rc);
    StopHere();
    _exit(0);  // only if continued
  }
  int st = 0;
  if (waitpid(pid, &st, WUNTRACED) != pid || !WIFSTOPPED(st)) {
    ADD_FAILURE() << "setup of pid " << pid << " failed: status " << st;
    return -1;
  }
  return pid;
}

// Children of pid (stopped ones the setup forked).
inline std::vector<pid_t> ChildrenOf(pid_t pid) {
  std::vector<pid_t> out;
  auto r = fs::ReadFile(StrFormat("/proc/%d/task/%d/children", pid, pid));
  if (!r.ok()) return out;
  for (const auto& s : fs::Split(*r, ' '))
    if (!fs::Trim(s).empty()) out.push_back(atoi(s.c_str()));
  return out;
}

inline Result<void> DumpPids(const std::vector<pid_t>& pids, const std::string& dir,
                             const DumpOptions& opts = {},
                             std::vector<std::pair<std::string, int>>* counts = nullptr) {
  ASSIGN_OR_RETURN(auto sink, images::OpenDirSink(dir, true));
  ASSIGN_OR_RETURN(auto dumper, FdDumper::Create(*sink, opts));
  for (pid_t p : pids) {
    auto r = dumper->DumpProcess(p);
    if (!r.ok()) {
      dumper->Resume();
      sink->Abort();
      return r;
    }
  }
  auto r = dumper->Finish();
  if (!r.ok()) {
    dumper->Resume();
    sink->Abort();
    return r;
  }
  if (counts) *counts = dumper->Counts();
  TRY(sink->Finish(images::NewInventory()));
  if (opts.leave_running) dumper->Resume();
  return Ok();
}

// Kills and reaps pids (children of this process or orphans reparented to it, the subreaper).
inline void KillAll(const std::vector<pid_t>& pids) {
  for (pid_t p : pids) kill(p, SIGKILL);
  for (pid_t p : pids) waitpid(p, nullptr, 0);
}

// A check runs in the restored process: "" on success, else what is wrong.
using Check = std::function<std::string()>;

// Restores dir: one process per (old pid, check), checks run one after the other in list
// order, after Finalize. Returns "" or the failures.
inline std::string Restore(const std::string& dir, const std::vector<std::pair<pid_t, Check>>& procs,
                           const FdRestoreOptions& opts = {}) {
  if (getenv("GODWIT_FILES_DEBUG")) {  // the images, for a person debugging a test
    auto set = images::ImageSet::Open(dir);
    if (set.ok()) {
      auto rd = set->OpenImage("files.img");
      img::FileEntry e;
      while (rd.ok()) {
        auto more = rd->Next(&e);
        if (!more.ok() || !*more) break;
        fprintf(stderr, "%s\n", e.DebugString().c_str());
      }
    }
  }
  int rep[2];
  if (pipe(rep) < 0) return "pipe";
  pid_t coord = fork();
  if (coord == 0) {
    close(rep[0]);
    int report = fcntl(rep[1], F_DUPFD, kHarnessFd + 90);
    close(rep[1]);
    auto fail = [&](const std::string& s) {
      std::string m = s + "\n";
      (void)!write(report, m.data(), m.size());
      _exit(1);
    };
    auto set = images::ImageSet::Open(dir);
    if (!set.ok()) fail("open images: " + set.error().to_string());
    auto rest = FdRestorer::Load(*set, opts);
    if (!rest.ok()) fail("load: " + rest.error().to_string());
    int base = std::max((*rest)->MaxFd() + 1, 64);
    auto pr = (*rest)->Prepare(base);
    if (!pr.ok()) fail("prepare: " + pr.error().to_string());
    std::vector<pid_t> kids;
    std::vector<int> gos;
    for (const auto& [old, check] : procs) {
      int go[2];
      if (pipe(go) < 0) fail("pipe");
      int gr = fcntl(go[0], F_DUPFD, kHarnessFd);
      int gw = fcntl(go[1], F_DUPFD, kHarnessFd);
      close(go[0]);
      close(go[1]);
      pid_t k = fork();
      if (k == 0) {
        close(gw);
        for (int g : gos) close(g);
        auto ir = (*rest)->Install(old);
        if (!ir.ok()) fail(StrFormat("install %d: ", old) + ir.error().to_string());
        char c;
        if (read(gr, &c, 1) != 1) _exit(3);
        std::string res = check();
        if (!res.empty()) fail(StrFormat("pid %d: ", old) + res);
        _exit(0);
      }
      close(gr);
      kids.push_back(k);
      gos.push_back(gw);
    }
    (*rest)->ClosePrepared();
    auto fr = (*rest)->Finalize();
    if (!fr.ok()) fail("finalize: " + fr.error().to_string());
    int rc = 0;
    for (size_t i = 0; i < kids.size(); i++) {
      (void)!write(gos[i], "g", 1);
      int st;
      waitpid(kids[i], &st, 0);
      if (!WIFEXITED(st) || WEXITSTATUS(st)) rc = 1;
    }
    _exit(rc);
  }
  close(rep[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(rep[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(rep[0]);
  int st;
  waitpid(coord, &st, 0);
  if ((!WIFEXITED(st) || WEXITSTATUS(st)) && out.empty())
    out = StrFormat("restore failed with status %#x", st);
  return out;
}

// The common case: one process, set up, dumped, killed, restored, checked.
inline std::string RoundTrip(const std::function<int()>& setup, const Check& check,
                             const DumpOptions& dopts = {}, const FdRestoreOptions& ropts = {}) {
  std::string dir = TempDir("rt");
  pid_t pid = SpawnStopped(setup);
  if (pid < 0) return "setup failed";
  auto r = DumpPids({pid}, dir, dopts);
  KillAll({pid});
  if (!r.ok()) {
    (void)fs::RemoveAll(dir);
    return "dump: " + r.error().to_string();
  }
  std::string res = Restore(dir, {{pid, check}}, ropts);
  (void)fs::RemoveAll(dir);
  return res;
}

// Small check helpers.
#define CHECK_OR(cond, ...)                               \
  do {                                                    \
    if (!(cond)) return ::godwit::StrFormat(__VA_ARGS__); \
  } while (0)

inline bool IsCloexec(int fd) { return fcntl(fd, F_GETFD) & FD_CLOEXEC; }
inline std::string ReadN(int fd, size_t n) {
  std::string s(n, '\0');
  ssize_t r = read(fd, s.data(), n);
  s.resize(r < 0 ? 0 : r);
  return s;
}

}  // namespace godwit::files::testing
