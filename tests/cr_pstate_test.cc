// Process state (proto/pstate.proto) through real dump -> kill -> restore round trips, zdtm style:
// a ps_* helper sets its state up and reports "ready"; the test dumps it with `godwit dump`
// (which kills it), reaps it, checks the dumped image through `godwit inspect --json`, restores
// it with `godwit restore --detach` (the restored helper becomes our child: we are a subreaper),
// sends SIGUSR2, and the helper checks its own state and exits 0 (else the number of the failed
// check, with the reason in its log).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

struct GodwitRun {
  int status = -1;
  std::string out, err;
};

std::string Slurp(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

int StatusCode(int st) {
  if (WIFEXITED(st)) return WEXITSTATUS(st);
  if (WIFSIGNALED(st)) return 128 + WTERMSIG(st);
  return -1;
}

int Wait(pid_t pid) {
  int st = 0;
  for (;;) {
    pid_t w = waitpid(pid, &st, 0);
    if (w == pid) return StatusCode(st);
    if (w < 0 && errno != EINTR) return -1;
  }
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/godwit-pstate-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  std::string operator/(const std::string& n) const { return path_ + "/" + n; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Runs godwit; pre_exec runs in the child before exec (to lower a limit, say).
GodwitRun Godwit(const std::vector<std::string>& args, const TempDir& dir,
                 void (*pre_exec)() = nullptr) {
  static int n = 0;
  std::string out = dir / ("godwit-" + std::to_string(++n) + ".out");
  std::string err = dir / ("godwit-" + std::to_string(n) + ".err");
  pid_t pid = fork();
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int in = open("/dev/null", O_RDONLY);
    dup2(in, 0);
    dup2(o, 1);
    dup2(e, 2);
    if (pre_exec) pre_exec();
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(GODWIT_BIN));
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(GODWIT_BIN, argv.data());
    _exit(127);
  }
  GodwitRun r;
  r.status = Wait(pid);
  r.out = Slurp(out);
  r.err = Slurp(err);
  return r;
}

// A zdtm-style helper: the checks it runs after the restore, its pid and its log.
class Helper {
 public:
  Helper(const TempDir& dir, const std::string& name, std::vector<std::string> args)
      : log_(dir / (name + ".log")) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) < 0) return;
    pid_ = fork();
    if (pid_ == 0) {
      // Only stdio and the ready pipe (fd 3): nothing else of the test leaks into the tree.
      int in = open("/dev/null", O_RDONLY);
      int out = open("/dev/null", O_WRONLY);
      int err = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      dup2(in, 0);
      dup2(out, 1);
      dup2(err, 2);
      dup2(p[1], 3);  // dup2 clears O_CLOEXEC
      close_range(4, ~0U, 0);
      int ready = 3;
      std::string path = std::string(GODWIT_HELPERS) + "/" + name;
      std::vector<std::string> full = {path, args[0], std::to_string(ready)};
      for (size_t i = 1; i < args.size(); ++i) full.push_back(args[i]);
      std::vector<char*> argv;
      for (auto& a : full) argv.push_back(a.data());
      argv.push_back(nullptr);
      execv(path.c_str(), argv.data());
      _exit(127);
    }
    close(p[1]);
    // "ready", then EOF: the helper closed its end, so no fd leads out of the tree at the dump.
    std::string got;
    char buf[64];
    ssize_t n;
    while ((n = read(p[0], buf, sizeof(buf))) > 0 || (n < 0 && errno == EINTR))
      if (n > 0) got.append(buf, n);
    close(p[0]);
    ready_ = got.rfind("ready", 0) == 0;
  }
  ~Helper() {
    // Only a child of ours that is still running (the original, or a restored helper that came
    // back to us, the subreaper): never a pid that something else took meanwhile.
    if (pid_ > 0 && !reaped_ && waitpid(pid_, nullptr, WNOHANG) == 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
  }
  pid_t pid() const { return pid_; }
  bool ready() const { return ready_; }
  std::string log() const { return Slurp(log_); }
  // Reaps the helper (the dump killed it, or it finished its checks).
  int Reap() {
    reaped_ = true;
    return Wait(pid_);
  }
  void Restored() { reaped_ = false; }

 private:
  std::string log_;
  pid_t pid_ = -1;
  bool ready_ = false;
  bool reaped_ = false;
};

// The decoded pstate-PID.img of a dump, through `godwit inspect --json`.
nlohmann::json Pstate(const TempDir& dir, const std::string& images, pid_t pid) {
  GodwitRun r = Godwit({"inspect", images, "--json"}, dir);
  EXPECT_EQ(r.status, 0) << r.err;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  if (j.is_discarded()) {
    ADD_FAILURE() << "inspect output is not JSON: " << r.out.substr(0, 200);
    return {};
  }
  std::string want = "pstate-" + std::to_string(pid) + ".img";
  for (const auto& f : j["files"]) {
    if (f.value("name", "") != want) continue;
    EXPECT_EQ(f.value("type", ""), "godwit.img.ProcessState");
    if (!f.contains("records_json") || f["records_json"].empty()) break;
    return f["records_json"][0];
  }
  ADD_FAILURE() << want << " missing from the dump";
  return {};
}

uint64_t U64(const nlohmann::json& j) {
  if (j.is_string()) return std::stoull(j.get<std::string>());
  if (j.is_number()) return j.get<uint64_t>();
  return 0;
}

// Dumps the helper (killing it) and reaps it; returns the images dir.
std::string Dump(const TempDir& dir, Helper& h) {
  std::string images = dir / "images";
  GodwitRun d = Godwit({"dump", "--pid", std::to_string(h.pid()), "--images-dir", images}, dir);
  EXPECT_EQ(d.status, 0) << d.err;
  if (d.status != 0) kill(h.pid(), SIGKILL);  // a failed dump leaves the tree running
  int st = h.Reap();
  EXPECT_EQ(st, 128 + SIGKILL) << "the dump did not kill the helper";
  // The rest of the tree: once the root is reaped, its killed children are ours (subreaper).
  if (d.status == 0) {
    GodwitRun r = Godwit({"inspect", images, "--json"}, dir);
    auto j = nlohmann::json::parse(r.out, nullptr, false);
    if (!j.is_discarded())
      for (const auto& f : j["files"])
        if (f.value("name", "") == "pstree.img" && f.contains("records_json"))
          for (const auto& e : f["records_json"][0]["processes"])
            if (e.value("pid", 0) != h.pid()) waitpid(e.value("pid", 0), nullptr, __WALL);
  }
  return images;
}

// Restores, lets the helper check itself and returns its exit code.
int RestoreAndCheck(const TempDir& dir, Helper& h, const std::string& images) {
  GodwitRun r = Godwit({"restore", "--images-dir", images, "--detach"}, dir);
  EXPECT_EQ(r.status, 0) << r.err;
  if (r.status != 0) return -1;
  h.Restored();
  if (kill(h.pid(), SIGUSR2) < 0) return -1;
  return h.Reap();
}

void RoundTrip(const TempDir& dir, Helper& h, const std::string& images) {
  int code = RestoreAndCheck(dir, h, images);
  EXPECT_EQ(code, 0) << "helper log:\n" << h.log();
}

const nlohmann::json* Action(const nlohmann::json& ps, int sig) {
  for (const auto& a : ps["handlers"]["actions"])
    if (a.value("signo", 0) == sig) return &a;
  return nullptr;
}

TEST(CrPstate, SignalHandlers) {
  TempDir dir;
  Helper h(dir, "ps_signals", {"handlers"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["handlers"]["actions"].size(), 62u);
  const auto* usr1 = Action(ps, SIGUSR1);
  ASSERT_NE(usr1, nullptr);
  EXPECT_NE(U64((*usr1)["handler"]), 0u);
  EXPECT_EQ(U64((*usr1)["flags"]) & (SA_SIGINFO | SA_RESTART), uint64_t{SA_SIGINFO | SA_RESTART});
  EXPECT_EQ(U64((*usr1)["mask"]) & (1ULL << (SIGINT - 1)), 1ULL << (SIGINT - 1));
  EXPECT_EQ(U64((*Action(ps, SIGHUP))["handler"]), 1u);   // SIG_IGN
  EXPECT_EQ(U64((*Action(ps, SIGTERM))["handler"]), 0u);  // SIG_DFL
  // The human summary of `godwit inspect` has a line for the process state.
  GodwitRun human = Godwit({"inspect", images}, dir);
  EXPECT_NE(human.out.find("godwit.img.ProcessState"), std::string::npos) << human.out;
  EXPECT_NE(human.out.find("3 handlers, 2 ignored"), std::string::npos) << human.out;
  RoundTrip(dir, h, images);
}

TEST(CrPstate, Sigaltstack) {
  TempDir dir;
  Helper h(dir, "ps_signals", {"altstack"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["threads"].size(), 2u);
  EXPECT_EQ(U64(ps["threads"][0]["altstack"]["size"]), 64u * 1024);
  EXPECT_EQ(U64(ps["threads"][1]["altstack"]["size"]), 96u * 1024);
  EXPECT_EQ(ps["threads"][0]["altstack"].value("flags", -1), 0);
  RoundTrip(dir, h, images);
}

// Dumped while a handler runs on the altstack (SS_ONSTACK is a fact of the stack pointer, not
// part of the image): it carries on there after the restore and returns normally.
TEST(CrPstate, DumpedInsideHandlerOnAltstack) {
  TempDir dir;
  Helper h(dir, "ps_signals", {"onstack"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  EXPECT_EQ(ps["threads"][0]["altstack"].value("flags", -1), 0);
  EXPECT_EQ(U64(ps["threads"][0]["altstack"]["size"]), 64u * 1024);
  RoundTrip(dir, h, images);
}

TEST(CrPstate, Creds) {
  TempDir dir;
  Helper h(dir, "ps_creds", {"creds"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["threads"].size(), 1u);
  const auto& c = ps["threads"][0]["creds"];
  EXPECT_EQ(c.value("uid", 0), 2000);
  EXPECT_EQ(c.value("euid", 0), 2001);
  EXPECT_EQ(c.value("suid", 0), 2002);
  EXPECT_EQ(c.value("fsuid", 0), 2003);
  EXPECT_EQ(c.value("gid", 0), 1000);
  EXPECT_EQ(c.value("fsgid", 0), 1003);
  EXPECT_EQ(c["groups"], nlohmann::json::parse("[1001,1005,1007]"));
  EXPECT_EQ(U64(c["cap_effective"]), (1ULL << 5) | (1ULL << 10));  // KILL, NET_BIND_SERVICE
  EXPECT_EQ(U64(c["cap_ambient"]), 1ULL << 10);
  EXPECT_EQ(U64(c["cap_bounding"]) & (1ULL << 22), 0u);  // CAP_SYS_BOOT dropped
  EXPECT_EQ(c.value("securebits", 0u), 0x14u);           // KEEP_CAPS | NO_SETUID_FIXUP
  RoundTrip(dir, h, images);
}

TEST(CrPstate, NoNewPrivs) {
  TempDir dir;
  Helper h(dir, "ps_creds", {"nnp"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  EXPECT_TRUE(ps["threads"][0]["creds"].value("no_new_privs", false));
  RoundTrip(dir, h, images);
}

// Credentials, no_new_privs and pdeathsig are per thread in the kernel.
TEST(CrPstate, PerThreadCreds) {
  TempDir dir;
  Helper h(dir, "ps_creds", {"threads"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["threads"].size(), 3u);
  EXPECT_EQ(ps["threads"][0]["creds"].value("euid", -1), 0);
  int uid_threads = 0, nnp_threads = 0;
  for (const auto& t : ps["threads"]) {
    if (t["creds"].value("euid", -1) == 3001) uid_threads++;
    if (t["creds"].value("no_new_privs", false) && t.value("pdeathsig", 0) == SIGWINCH)
      nnp_threads++;
  }
  EXPECT_EQ(uid_threads, 1);
  EXPECT_EQ(nnp_threads, 1);
  RoundTrip(dir, h, images);
}

TEST(CrPstate, Rlimits) {
  TempDir dir;
  Helper h(dir, "ps_misc", {"rlimits"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  bool seen = false;
  for (const auto& l : ps["rlimits"]["limits"]) {
    if (l.value("name", "") != "RLIMIT_NOFILE") continue;
    seen = true;
    EXPECT_EQ(U64(l["cur"]), 100u);
    EXPECT_EQ(U64(l["max"]), 200u);
  }
  EXPECT_TRUE(seen);
  EXPECT_EQ(ps["rlimits"]["limits"].size(), 16u);
  RoundTrip(dir, h, images);
}

// A hard limit above the restorer's cannot be raised without CAP_SYS_RESOURCE: the restore fails,
// naming the limit, and leaves no process behind.
TEST(CrPstate, RlimitAboveRestorersHardLimitFails) {
  TempDir dir;
  Helper h(dir, "ps_misc", {"rlimits"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  GodwitRun r = Godwit({"restore", "--images-dir", images, "--detach"}, dir, [] {
    struct rlimit rl = {150, 150};  // below the dumped RLIMIT_NOFILE hard limit (200)
    setrlimit(RLIMIT_NOFILE, &rl);
  });
  h.Restored();  // if it was restored after all, the destructor kills it
  EXPECT_EQ(r.status, 6) << r.err;  // ErrorKind::kUnsupported
  EXPECT_NE(r.err.find("RLIMIT_NOFILE"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("CAP_SYS_RESOURCE"), std::string::npos) << r.err;
  waitpid(h.pid(), nullptr, WNOHANG);  // if it came back to us as a zombie
  EXPECT_NE(access(("/proc/" + std::to_string(h.pid())).c_str(), F_OK), 0)
      << "a half-restored process was left behind";
}

TEST(CrPstate, CwdRootUmaskPersonalityComm) {
  TempDir dir;
  std::string root = dir / "root";
  ASSERT_EQ(mkdir(root.c_str(), 0755), 0);
  ASSERT_EQ(mkdir((root + "/sub").c_str(), 0755), 0);
  std::ofstream(root + "/marker") << "x";
  std::ofstream(root + "/sub/here") << "x";
  Helper h(dir, "ps_misc", {"fs", root});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  EXPECT_EQ(ps["fs"].value("root", ""), root);
  EXPECT_EQ(ps["fs"].value("cwd", ""), "/sub");  // as the chrooted process sees it
  EXPECT_EQ(ps["fs"].value("umask", 0u), 027u);
  EXPECT_EQ(ps.value("personality", 0u), 0x0240000u);  // ADDR_NO_RANDOMIZE | ADDR_COMPAT_LAYOUT
  RoundTrip(dir, h, images);
}

TEST(CrPstate, SchedPolicyNiceTimerSlack) {
  TempDir dir;
  Helper h(dir, "ps_misc", {"sched"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["threads"].size(), 2u);
  EXPECT_EQ(ps["threads"][0]["sched"].value("policy", 0u), 3u);  // SCHED_BATCH
  EXPECT_EQ(ps["threads"][0]["sched"].value("nice", 0), 5);
  EXPECT_EQ(U64(ps["threads"][0]["timer_slack_ns"]), 123456u);
  EXPECT_EQ(ps["threads"][1]["sched"].value("policy", 0u), 1u);  // SCHED_FIFO
  EXPECT_EQ(ps["threads"][1]["sched"].value("priority", 0u), 7u);
  RoundTrip(dir, h, images);
}

TEST(CrPstate, PdeathsigSubreaperThp) {
  TempDir dir;
  Helper h(dir, "ps_misc", {"prctl"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  EXPECT_EQ(ps["threads"][0].value("pdeathsig", 0), SIGUSR1);
  EXPECT_TRUE(ps.value("child_subreaper", false));
  EXPECT_EQ(ps.value("thp_disable", 0u), 1u);
  RoundTrip(dir, h, images);
}

TEST(CrPstate, SeccompFilters) {
  TempDir dir;
  Helper h(dir, "ps_misc", {"seccomp"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["threads"].size(), 2u);
  for (const auto& t : ps["threads"]) {
    EXPECT_EQ(t["seccomp"].value("mode", 0u), 2u);
    ASSERT_EQ(t["seccomp"]["filters"].size(), 2u);
    EXPECT_EQ(U64(t["seccomp"]["filters"][0]["flags"]), 0u);  // oldest first
    EXPECT_EQ(U64(t["seccomp"]["filters"][1]["flags"]), 2u);  // SECCOMP_FILTER_FLAG_LOG
  }
  RoundTrip(dir, h, images);
}

// Every process of a tree has its own pstate image and gets its own state back.
TEST(CrPstate, TreeOfProcesses) {
  TempDir dir;
  // Destroyed after the helper: a restored child left running comes to us once the root dies.
  struct Reaper {
    std::vector<pid_t> pids;
    ~Reaper() {
      for (pid_t p : pids)
        if (waitpid(p, nullptr, WNOHANG) == 0) {
          kill(p, SIGKILL);
          waitpid(p, nullptr, 0);
        }
    }
  } reaper;
  Helper h(dir, "ps_misc", {"tree"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  GodwitRun r = Godwit({"inspect", images, "--json"}, dir);
  int pstates = 0;
  auto j = nlohmann::json::parse(r.out, nullptr, false);
  ASSERT_FALSE(j.is_discarded());
  for (const auto& f : j["files"]) {
    if (f.value("name", "").rfind("pstate-", 0) != 0) continue;
    pstates++;
    const auto& ps = f["records_json"][0];
    if (ps.value("pid", 0) == h.pid()) continue;
    reaper.pids.push_back(ps.value("pid", 0));
    EXPECT_EQ(ps["fs"].value("umask", 0u), 077u);
    EXPECT_EQ(ps["threads"][0]["creds"].value("uid", 0), 5000);
  }
  EXPECT_EQ(pstates, 2);
  RoundTrip(dir, h, images);
}

TEST(CrPstate, ITimers) {
  TempDir dir;
  Helper h(dir, "ps_timers", {"itimers"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  const auto& it = ps["itimers"];
  EXPECT_EQ(U64(it["real"]["interval_us"]), 250000u);
  EXPECT_GT(U64(it["real"]["value_us"]), 0u);
  EXPECT_LE(U64(it["real"]["value_us"]), 1500000u);
  EXPECT_EQ(U64(it["virt"]["interval_us"]), 7000000u);
  EXPECT_EQ(U64(it["prof"]["interval_us"]), 500000u);
  RoundTrip(dir, h, images);
}

TEST(CrPstate, PosixTimers) {
  TempDir dir;
  Helper h(dir, "ps_timers", {"posix"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  auto ps = Pstate(dir, images, h.pid());
  ASSERT_EQ(ps["timers"].size(), 4u);
  std::vector<int> ids;
  for (const auto& t : ps["timers"]) ids.push_back(t.value("id", -1));
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<int>{0, 2, 3, 4}));
  for (const auto& t : ps["timers"]) {
    if (t.value("id", -1) == 3) {
      EXPECT_EQ(t.value("notify", 0), 4);  // SIGEV_THREAD_ID
      EXPECT_EQ(t.value("notify_tid", 0), h.pid());
      EXPECT_EQ(U64(t["sigev_value"]), 333u);
      EXPECT_EQ(U64(t["interval_ns"]), 10000000000u);
    }
    if (t.value("id", -1) == 0) {
      EXPECT_EQ(t.value("signo", 0), SIGRTMIN + 1);
      EXPECT_EQ(U64(t["sigev_value"]), 111u);
    }
  }
  RoundTrip(dir, h, images);
}

// Ports of CRIU zdtm static tests of process state (tests/helpers/z_pstate.c): dump, kill,
// restore, and the helper checks itself.
void ZdtmRoundTrip(const std::string& mode) {
  TempDir dir;
  Helper h(dir, "z_pstate", {mode});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  RoundTrip(dir, h, images);
}

// The grandchild's parent-death signal fires once its restored parent exits.
TEST(CrPstateZdtm, PdeathSigFiresAfterRestore) { ZdtmRoundTrip("pdeath_sig"); }
// One-shot timers of six clocks after holes of deleted ids, SIGEV_NONE, a periodic one.
TEST(CrPstateZdtm, PosixTimersClocksHolesSivalPtr) { ZdtmRoundTrip("posix_timers"); }
// SIGEV_THREAD_ID timers aimed at two threads, one on a thread's CPU clock.
TEST(CrPstateZdtm, PthreadTimersPerThread) { ZdtmRoundTrip("pthread_timers"); }
TEST(CrPstateZdtm, ITimersAllThreeKeepFiring) { ZdtmRoundTrip("itimers"); }
// SCHED_RR, SCHED_IDLE, SCHED_BATCH and nice values per thread.
TEST(CrPstateZdtm, SchedPoliciesAndNicePerThread) { ZdtmRoundTrip("sched"); }
TEST(CrPstateZdtm, PendingSignalsInThreeThreads) { ZdtmRoundTrip("sigpending_thr"); }
// Locked securebits, capability sets, bounding set, no_new_privs.
TEST(CrPstateZdtm, SecurebitsLockedCapsNoNewPrivs) { ZdtmRoundTrip("secbits"); }
TEST(CrPstateZdtm, PersonalityFlags) { ZdtmRoundTrip("personality"); }
// An rseq area of the program's own (glibc's unregistered) in two threads.
TEST(CrPstateZdtm, Rseq00OwnArea) { ZdtmRoundTrip("rseq00"); }
// A child in seccomp strict mode, blocked in read(): still strict after the restore.
TEST(CrPstateZdtm, SeccompStrictChild) { ZdtmRoundTrip("seccomp_strict"); }
TEST(CrPstateZdtm, Dumpable01) { ZdtmRoundTrip("dumpable"); }
// A subreaper root with a grandchild it adopted (child_subreaper_existing_child).
TEST(CrPstateZdtm, SubreaperWithAdoptedOrphan) { ZdtmRoundTrip("subreaper_orphan"); }
TEST(CrPstateZdtm, SigaltstackAutodisarm) { ZdtmRoundTrip("altstack_autodisarm"); }
// Robust futex lists per thread (futex-rl): a robust mutex's dead owner is seen after restore.
TEST(CrPstateZdtm, FutexRobustList) { ZdtmRoundTrip("futex_rl"); }
TEST(CrPstateZdtm, OomScoreAdj) { ZdtmRoundTrip("oom_score_adj"); }
// A thread dumped while spinning inside an rseq critical section is sent to its abort handler
// (the seize acts as the preemption it is), restored or left running.
TEST(CrPstateZdtm, RseqInsideCriticalSection) { ZdtmRoundTrip("rseq_cs"); }
// A process group whose leader exited: a stand-in leader recreates it for the restore.
TEST(CrPstateZdtm, ProcessGroupWithoutItsLeader) { ZdtmRoundTrip("pgid_orphan"); }
TEST(CrPstateZdtm, RseqInsideCriticalSectionLeaveRunning) {
  TempDir dir;
  Helper h(dir, "z_pstate", {"rseq_cs"});
  ASSERT_TRUE(h.ready()) << h.log();
  GodwitRun d = Godwit({"dump", "--leave-running", "--pid", std::to_string(h.pid()),
                        "--images-dir", dir / "img"},
                       dir);
  ASSERT_EQ(d.status, 0) << d.err;
  ASSERT_EQ(kill(h.pid(), SIGUSR2), 0);
  EXPECT_EQ(h.Reap(), 0) << "helper log:\n" << h.log();
}

// vfork00: a process waiting for its vfork child (not exec'd yet) cannot be dumped (the seize
// would wait for the vfork forever): refused naming both, the tree left running and working.
TEST(CrPstateZdtm, Vfork00RefusedWithoutHanging) {
  TempDir dir;
  Helper h(dir, "z_pstate", {"vfork00"});
  ASSERT_TRUE(h.ready()) << h.log();
  GodwitRun d = Godwit({"dump", "--pid", std::to_string(h.pid()), "--images-dir", dir / "img"}, dir);
  EXPECT_EQ(d.status, 6) << d.err;  // kUnsupported
  EXPECT_NE(d.err.find("vfork"), std::string::npos) << d.err;
  struct stat sb;
  EXPECT_NE(stat((dir / "img/inventory.img").c_str(), &sb), 0) << "a checkpoint was written";
  ASSERT_EQ(kill(h.pid(), SIGUSR2), 0);
  EXPECT_EQ(h.Reap(), 0) << "the tree was damaged by the refused dump:\n" << h.log();
}

// The root's parent-death signal after `restore --detach` (the rule in restore/restore.cc): it
// does not fire when the restoring godwit exits, and it does fire when the parent the root is
// left with dies. Here that parent is P, a child subreaper that runs the restore and exits on
// our word.
TEST(CrPstateZdtm, RootPdeathsigFollowsItsFinalParent) {
  TempDir dir;
  Helper h(dir, "z_pstate", {"pdeath_root"});
  ASSERT_TRUE(h.ready()) << h.log();
  std::string images = Dump(dir, h);
  int cmd[2], done[2];
  ASSERT_EQ(pipe(cmd), 0);
  ASSERT_EQ(pipe(done), 0);
  pid_t p = fork();
  ASSERT_GE(p, 0);
  if (p == 0) {
    close(cmd[1]);
    close(done[0]);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    GodwitRun r = Godwit({"restore", "--images-dir", images, "--detach"}, dir);
    int st = r.status;
    if (write(done[1], &st, sizeof st) != sizeof st) _exit(2);
    char c;
    (void)!read(cmd[0], &c, 1);
    _exit(0);
  }
  close(cmd[0]);
  close(done[1]);
  int st = -1;
  ASSERT_EQ(read(done[0], &st, sizeof st), static_cast<ssize_t>(sizeof st));
  close(done[0]);
  h.Restored();
  EXPECT_EQ(st, 0) << "restore failed";
  // Alive, P's child, its signal still set (godwit's exit did not fire it).
  std::string stat = Slurp("/proc/" + std::to_string(h.pid()) + "/stat");
  size_t rp = stat.rfind(')');
  ASSERT_NE(rp, std::string::npos) << "the restored root is gone";
  char state = 0;
  int ppid = 0;
  sscanf(stat.c_str() + rp + 2, "%c %d", &state, &ppid);
  EXPECT_NE(state, 'Z');
  EXPECT_EQ(ppid, p);
  // P exits: the root gets SIGTERM and comes to us (the subreaper above P) to be reaped.
  close(cmd[1]);
  EXPECT_EQ(Wait(p), 0);
  EXPECT_EQ(h.Reap(), 128 + SIGTERM) << "helper log:\n" << h.log();
}

}  // namespace
