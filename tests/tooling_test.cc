// The everyday tooling of issue 12, through the binary with real containers and processes: a
// detached container's log (`run --detach`, `logs`, `logs --follow`), `exec` with --user, --env,
// --cwd, --detach, --pid-file and -t on a real pty, `ps` passing ps(1) options through, --json
// printing one object per verb (and runc's --format json arrays), exit code 6 for the
// unsupported states, `help VERB`, the progress meter on a terminal only, and the error naming
// a zombie that holds a pid a restore needs.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>
#include <set>

#include "runtime/runtime.h"
#include "tests/container_test_util.h"

namespace godwit::container {
namespace {

using nlohmann::json;
using testing::CliRun;
using testing::Godwit;
using testing::TempDir;

bool Has(const std::string& hay, const std::string& needle) {
  return hay.find(needle) != std::string::npos;
}

// Runs godwit with stdin, stdout and stderr on a fresh pty's slave (a terminal), with
// `stdout_file` instead for stdout when given; returns the exit code and what the terminal
// showed. The master is read while godwit runs (a full pty would block it).
struct TtyRun {
  int code = -1;
  std::string screen;
};
TtyRun GodwitOnTty(const std::vector<std::string>& args, const std::string& input = "") {
  TtyRun r;
  int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
  if (master < 0 || grantpt(master) < 0 || unlockpt(master) < 0) return r;
  std::string slave_name = ptsname(master);
  pid_t pid = fork();
  if (pid == 0) {
    setsid();
    int s = open(slave_name.c_str(), O_RDWR);  // the controlling terminal
    dup2(s, 0);
    dup2(s, 1);
    dup2(s, 2);
    close_range(3, ~0U, 0);
    std::vector<std::string> full = {GODWIT_BIN};
    full.insert(full.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : full) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(argv[0], argv.data());
    _exit(127);
  }
  if (!input.empty()) (void)!write(master, input.data(), input.size());
  fcntl(master, F_SETFL, O_NONBLOCK);
  int st = 0;
  bool done = false;
  for (;;) {
    char buf[4096];
    ssize_t n;
    while ((n = read(master, buf, sizeof(buf))) > 0) r.screen.append(buf, n);
    if (done) break;
    if (waitpid(pid, &st, WNOHANG) == pid) {
      done = true;  // one more read: what was written right before the exit
      continue;
    }
    pollfd p = {master, POLLIN, 0};
    poll(&p, 1, 50);
  }
  close(master);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

class Tooling : public ::testing::Test {
 protected:
  void SetUp() override {
    id_ = StrFormat("gwtool%d", getpid());
    root_ = tmp_.path() + "/state";
    rootfs_ = tmp_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
  }
  void TearDown() override { (void)runtime::Delete(root_, id_, true); }

  CliRun Gw(std::vector<std::string> args) {
    args.insert(args.begin(), {"--root", root_});
    return Godwit(args);
  }
  // A detached container running cmd (sh -c), started as from a script that reads godwit's
  // output through a pipe (`id=$(godwit run -d ...)`): the container's output goes to its log.
  void RunDetached(const std::string& cmd) {
    int p[2];
    ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
    pid_t pid = fork();
    if (pid == 0) {
      int null = open("/dev/null", O_RDWR);
      dup2(null, 0);
      dup2(p[1], 1);
      dup2(null, 2);
      execl(GODWIT_BIN, GODWIT_BIN, "--root", root_.c_str(), "run", "--rootfs", rootfs_.c_str(),
            "--name", id_.c_str(), "--detach", "--", "sh", "-c", cmd.c_str(), nullptr);
      _exit(127);
    }
    close(p[1]);
    std::string out;
    char buf[256];
    ssize_t n;
    // EOF once godwit exits: the container does not hold the pipe.
    while ((n = read(p[0], buf, sizeof(buf))) > 0) out.append(buf, n);
    close(p[0]);
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st << out;
    // Only the id on godwit's stdout: the container's output went to its log.
    ASSERT_EQ(fs::Trim(out), id_) << out;
  }
  pid_t InitPid() {
    auto j = json::parse(Gw({"state", id_}).out, nullptr, false);
    return j.is_object() ? j.value("pid", 0) : 0;
  }
  std::string Status() {
    auto j = json::parse(Gw({"state", id_}).out, nullptr, false);
    return j.is_object() ? j.value("status", "") : "";
  }

  TempDir tmp_{"tool"};
  std::string id_, root_, rootfs_;
};

TEST_F(Tooling, DetachedRunLogsStdoutAndStderrAndFollowEndsWithTheInit) {
  // stdin is /dev/null (cat ends at once); three lines on stdout and stderr; then it waits for
  // a file the test creates, prints the last line and exits.
  RunDetached("cat; echo cat-done; echo out-1; echo err-1 >&2; "
              "while [ ! -e /tmp/go ]; do sleep 0.01; done; echo last-line");
  std::string log = root_ + "/.logs/" + id_ + ".log";
  auto have = [&](const std::string& s) { return Has(Gw({"logs", id_}).out, s); };
  for (int i = 0; i < 500 && !have("err-1"); ++i) usleep(10000);
  CliRun l = Gw({"logs", id_});
  EXPECT_EQ(l.code, 0) << l;
  EXPECT_TRUE(Has(l.out, "cat-done\nout-1\nerr-1\n")) << l.out;
  EXPECT_FALSE(Has(l.out, "last-line"));
  EXPECT_TRUE(fs::Exists(log));
  // --follow prints until the init exits: it is started first, then the container is let go;
  // its output must then hold the last line (written right before the exit).
  pid_t follower = fork();
  std::string fout = tmp_.path() + "/follow.out";
  if (follower == 0) {
    int fd = open(fout.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    execl(GODWIT_BIN, GODWIT_BIN, "--root", root_.c_str(), "logs", "--follow", id_.c_str(),
          nullptr);
    _exit(127);
  }
  pid_t init = InitPid();
  ASSERT_GT(init, 0);
  ASSERT_TRUE(fs::WriteFile("/proc/" + std::to_string(init) + "/root/tmp/go", "").ok());
  int st = 0;
  ASSERT_EQ(waitpid(follower, &st, 0), follower);
  EXPECT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << st;
  auto followed = fs::ReadFile(fout);
  ASSERT_TRUE(followed.ok());
  EXPECT_TRUE(Has(*followed, "out-1\nerr-1\nlast-line\n")) << *followed;
  EXPECT_EQ(Status(), "stopped");
  // The log goes with the container.
  ASSERT_EQ(Gw({"delete", id_}).code, 0);
  EXPECT_FALSE(fs::Exists(log));
  EXPECT_EQ(Gw({"logs", id_}).code, 3);
}

// A checkpoint deletes the container but keeps its log (the images name it); the restored
// counter goes on appending to it; delete removes it.
TEST_F(Tooling, LogOutlivesCheckpointAndTheRestoreAppends) {
  RunDetached("i=0; while :; do i=$((i+1)); echo tick-$i; sleep 0.02; done");
  auto last = [&]() -> long {
    auto lines = fs::Split(fs::Trim(Gw({"logs", id_}).out), '\n');
    return lines.empty() || lines.back().rfind("tick-", 0) != 0 ? -1
                                                                : atol(lines.back().c_str() + 5);
  };
  for (int i = 0; i < 500 && last() < 3; ++i) usleep(10000);
  ASSERT_GE(last(), 3);
  std::string img = tmp_.path() + "/img";
  CliRun c = Gw({"checkpoint", id_, "--image-path", img});
  ASSERT_EQ(c.code, 0) << c;
  EXPECT_EQ(Gw({"state", id_}).code, 3);
  long at_checkpoint = last();  // printed without the container
  ASSERT_GE(at_checkpoint, 3);
  CliRun r = Gw({"--debug", "restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(r.code, 0) << r;
  // godwit's own lines go to its caller's stderr, not into the application's log.
  EXPECT_TRUE(Has(r.err, "restore: images loaded")) << r.err;
  for (int i = 0; i < 500 && last() <= at_checkpoint + 2; ++i) usleep(10000);
  EXPECT_GT(last(), at_checkpoint + 2);
  EXPECT_FALSE(Has(Gw({"logs", id_}).out, "godwit[")) << Gw({"logs", id_}).out;
  // The history is one sequence: the restore appended, it did not start a new file.
  EXPECT_TRUE(Has(Gw({"logs", id_}).out, "tick-1\ntick-2\n"));
  ASSERT_EQ(Gw({"delete", "--force", id_}).code, 0);
  EXPECT_FALSE(fs::Exists(root_ + "/.logs/" + id_ + ".log"));
}

// A detached restore that fails makes no log (it opens the log before it waits or restores)
// and says why on its own stderr.
TEST_F(Tooling, FailedDetachedRestoreLeavesNoLog) {
  CliRun r = Gw({"restore", id_, "--image-path", tmp_.path() + "/no-images", "--detach"});
  EXPECT_EQ(r.code, 3) << r;
  EXPECT_TRUE(Has(r.err, "no-images")) << r.err;
  EXPECT_FALSE(fs::Exists(root_ + "/.logs/" + id_ + ".log"));
}

// `run -d ... > file` (stdout a file, as godwit's test helper has it): the container writes
// there, as with runc; no log is made.
TEST_F(Tooling, StdoutRedirectedToAFileStaysTheContainers) {
  CliRun r = Gw({"run", "--rootfs", rootfs_, "--name", id_, "--detach", "--", "sh", "-c",
                 "echo to-the-file; exec sleep 1000"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_FALSE(fs::Exists(root_ + "/.logs/" + id_ + ".log"));
  EXPECT_EQ(Gw({"logs", id_}).code, 3);
}

TEST_F(Tooling, CreatedContainerHasNoLogAndSaysWhy) {
  std::string bundle = tmp_.path() + "/bundle";
  ASSERT_OK(fs::MkdirAll(bundle));
  ASSERT_EQ(symlink(rootfs_.c_str(), (bundle + "/rootfs").c_str()), 0);
  ASSERT_EQ(Gw({"spec", "--bundle", bundle}).code, 0);
  CliRun c = Gw({"create", id_, "--bundle", bundle});
  ASSERT_EQ(c.code, 0) << c;
  CliRun l = Gw({"logs", id_});
  EXPECT_EQ(l.code, 3) << l;
  EXPECT_TRUE(Has(l.err, "create/start")) << l.err;
}

TEST_F(Tooling, ExecUserEnvCwdDetachPidFileAndTty) {
  RunDetached("exec sleep 1000");
  CliRun e = Gw({"exec", "--user", "1000:1001", "--env", "FOO=bar", "--cwd", "/tmp", id_, "--",
                 "sh", "-c", "echo $(id -u):$(id -g):$FOO:$(pwd); exit 9"});
  EXPECT_EQ(e.code, 9) << e;
  EXPECT_EQ(fs::Trim(e.out), "1000:1001:bar:/tmp") << e;

  std::string pidf = tmp_.path() + "/exec.pid";
  CliRun d = Gw({"exec", "--detach", "--pid-file", pidf, id_, "--", "sleep", "1000"});
  ASSERT_EQ(d.code, 0) << d;
  pid_t p = testing::ReadInt(pidf);
  ASSERT_GT(p, 0);
  // A process of the container (its cgroup), running sleep; re-parented to us (a subreaper).
  auto pids = json::parse(Gw({"ps", "--format", "json", id_}).out, nullptr, false);
  ASSERT_TRUE(pids.is_array());
  EXPECT_TRUE(std::set<pid_t>(pids.begin(), pids.end()).count(p)) << pids.dump();
  auto comm = fs::ReadFile(StrFormat("/proc/%d/comm", p));
  EXPECT_EQ(comm.ok() ? fs::Trim(*comm) : "", "sleep");
  ASSERT_EQ(kill(p, SIGKILL), 0);
  EXPECT_EQ(waitpid(p, nullptr, 0), p);

  // -t without --console-socket: godwit relays the process's pty to its own terminal.
  TtyRun t = GodwitOnTty({"--root", root_, "exec", "-t", id_, "--", "sh", "-c",
                          "tty; [ -t 0 ] && echo stdin-is-a-tty; exit 5"});
  EXPECT_EQ(t.code, 5) << t.screen;
  EXPECT_TRUE(Has(t.screen, "/dev/pts/")) << t.screen;
  EXPECT_TRUE(Has(t.screen, "stdin-is-a-tty")) << t.screen;
  // Not a terminal and no console socket: a usage error naming the cause.
  CliRun nt = Gw({"exec", "-t", id_, "--", "true"});
  EXPECT_EQ(nt.code, 2) << nt;
  EXPECT_TRUE(Has(nt.err, "not a terminal")) << nt;
}

TEST_F(Tooling, PsPassesOptionsToPsAndFormats) {
  RunDetached("exec sleep 1000");
  pid_t init = InitPid();
  ASSERT_GT(init, 0);
  CliRun def = Gw({"ps", id_});
  ASSERT_EQ(def.code, 0) << def;
  auto lines = fs::Split(fs::Trim(def.out), '\n');
  ASSERT_EQ(lines.size(), 2u) << def.out;  // the header and the one process
  EXPECT_TRUE(Has(lines[0], "PID") && Has(lines[0], "CMD")) << def.out;
  EXPECT_TRUE(Has(lines[1], std::to_string(init)) && Has(lines[1], "sleep 1000")) << def.out;
  CliRun o = Gw({"ps", id_, "-o", "pid,comm"});
  ASSERT_EQ(o.code, 0) << o;
  lines = fs::Split(fs::Trim(o.out), '\n');
  ASSERT_EQ(lines.size(), 2u) << o.out;
  EXPECT_TRUE(Has(lines[0], "PID") && Has(lines[0], "COMMAND")) << o.out;
  EXPECT_EQ(fs::Trim(lines[1]), std::to_string(init) + " sleep") << o.out;
  // ps(1) output without a PID column cannot be filtered: a usage error.
  EXPECT_EQ(Gw({"ps", id_, "-o", "comm"}).code, 2);
  EXPECT_EQ(json::parse(Gw({"ps", "--format", "json", id_}).out), json::array({init}));
  EXPECT_EQ(json::parse(Gw({"--json", "ps", id_}).out), json({{"id", id_}, {"pids", {init}}}));
}

TEST_F(Tooling, JsonIsOneObjectPerVerbAndFormatJsonIsRuncsArray) {
  RunDetached("exec sleep 1000");
  auto obj = [&](std::vector<std::string> a) {
    a.insert(a.begin(), "--json");
    CliRun r = Gw(a);
    EXPECT_EQ(r.code, 0) << r;
    auto j = json::parse(r.out, nullptr, false);
    EXPECT_TRUE(j.is_object()) << r.out;
    return j;
  };
  json l = obj({"list"});
  ASSERT_TRUE(l["containers"].is_array()) << l;
  ASSERT_EQ(l["containers"].size(), 1u);
  EXPECT_EQ(l["containers"][0]["id"], id_);
  json arr = json::parse(Gw({"list", "--format", "json"}).out, nullptr, false);
  ASSERT_TRUE(arr.is_array());
  EXPECT_EQ(arr[0]["status"], "running");
  EXPECT_EQ(obj({"pause", id_})["status"], "paused");
  EXPECT_EQ(obj({"resume", id_})["status"], "running");
  json k = obj({"kill", id_, "0"});
  EXPECT_EQ(k["signal"], 0);
  EXPECT_EQ(k["id"], id_);
  EXPECT_EQ(obj({"delete", "--force", id_})["deleted"], json::array({id_}));
}

TEST_F(Tooling, UnsupportedStatesExitSix) {
  RunDetached("exec sleep 1000");
  CliRun d = Gw({"delete", id_});
  EXPECT_EQ(d.code, 6) << d;
  EXPECT_TRUE(Has(d.err, "running")) << d;
  EXPECT_EQ(Status(), "running");
  ASSERT_EQ(Gw({"pause", id_}).code, 0);
  CliRun dp = Gw({"delete", id_});
  EXPECT_EQ(dp.code, 6) << dp;
  EXPECT_EQ(Gw({"delete", "--force", id_}).code, 0);
  EXPECT_EQ(Gw({"state", id_}).code, 3);
}

// A paused container is checkpointed as runc does (containerd's client pauses a task before
// its checkpoint): with --leave-running it stays paused; without, it is gone and the images
// restore it running, its counter carrying on.
TEST_F(Tooling, PausedContainerCheckpointsAndStaysPaused) {
  RunDetached("i=0; while :; do i=$((i+1)); echo $i > /tmp/n; usleep 2000; done");
  ASSERT_EQ(Gw({"pause", id_}).code, 0);
  std::string img = tmp_.path() + "/img";
  CliRun c = Gw({"checkpoint", "--leave-running", id_, "--image-path", img});
  EXPECT_EQ(c.code, 0) << c;
  EXPECT_EQ(Status(), "paused");  // as its owner left it
  ASSERT_EQ(Gw({"resume", id_}).code, 0);
  EXPECT_EQ(Status(), "running");
  ASSERT_EQ(Gw({"pause", id_}).code, 0);
  CliRun k = Gw({"checkpoint", id_, "--image-path", img});
  ASSERT_EQ(k.code, 0) << k;
  EXPECT_EQ(Gw({"state", id_}).code, 3);  // killed and deleted
  CliRun r = Gw({"restore", id_, "--image-path", img, "--detach"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_EQ(Status(), "running");
  // The counter moves again after the restore.
  auto read_n = [&] { return Gw({"exec", id_, "--", "cat", "/tmp/n"}).out; };
  std::string first = read_n();
  std::string later = first;
  for (int i = 0; i < 2000 && later == first; ++i) later = read_n();
  EXPECT_NE(later, first);
}

TEST_F(Tooling, HelpDescribesEveryVerbWithAnExample) {
  CliRun all = Godwit({"help"});
  ASSERT_EQ(all.code, 0);
  int verbs = 0;
  for (const auto& line : fs::Split(all.out, '\n')) {
    // "  VERB       summary"
    if (line.size() < 4 || line.rfind("  ", 0) != 0 || line[2] == ' ') continue;
    std::string verb = fs::Split(line.substr(2), ' ')[0];
    CliRun h = Godwit({"help", verb});
    EXPECT_EQ(h.code, 0) << verb;
    EXPECT_TRUE(Has(h.out, "usage: godwit " + verb)) << h.out;
    EXPECT_TRUE(Has(h.out, "example")) << verb << " has no example:\n" << h.out;
    ++verbs;
  }
  EXPECT_GE(verbs, 20) << all.out;
  CliRun ck = Godwit({"help", "checkpoint"});
  for (const char* flag : {"--image-path", "--leave-running", "--pre-copy", "--export",
                           "--work-path", "--compress"})
    EXPECT_TRUE(Has(ck.out, flag)) << flag;
  EXPECT_EQ(Godwit({"help", "no-such-verb"}).code, 2);
  // `VERB --help` is the same text.
  EXPECT_EQ(Godwit({"exec", "--help"}).out, Godwit({"help", "exec"}).out);
}

TEST_F(Tooling, ProgressOnATerminalOnly) {
  // Some anonymous memory to dump: a few MiB in the shell's heap.
  RunDetached("x=$(seq 1 300000); echo ready; while :; do sleep 1; done");
  for (int i = 0; i < 1000 && !Has(Gw({"logs", id_}).out, "ready"); ++i) usleep(10000);
  ASSERT_TRUE(Has(Gw({"logs", id_}).out, "ready"));
  std::string img = tmp_.path() + "/img";
  TtyRun t = GodwitOnTty({"--root", root_, "checkpoint", id_, "--image-path", img,
                          "--leave-running"});
  EXPECT_EQ(t.code, 0) << t.screen;
  EXPECT_TRUE(Has(t.screen, "memory:")) << t.screen;
  EXPECT_TRUE(Has(t.screen, "MiB/s")) << t.screen;
  EXPECT_TRUE(Has(t.screen, "100%")) << t.screen;
  // stderr not a terminal: no meter.
  CliRun q = Gw({"checkpoint", id_, "--image-path", img + "2", "--leave-running"});
  EXPECT_EQ(q.code, 0) << q;
  EXPECT_FALSE(Has(q.err, "MiB/s")) << q.err;
  EXPECT_EQ(Status(), "running");
}

TEST(ToolingRestore, TakenPidNamesTheZombieAndItsParent) {
  TempDir tmp("toolz");
  std::string img = tmp.path() + "/img";
  pid_t p = fork();
  if (p == 0) {
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0);
    dup2(null, 1);
    dup2(null, 2);
    setsid();
    execlp("sleep", "sleep", "1000", nullptr);
    _exit(127);
  }
  ASSERT_GT(p, 0);
  // sleep has exec'd once its comm says so (the child's comm is the test's until then).
  for (int i = 0; i < 1000; ++i) {
    auto c = fs::ReadFile(StrFormat("/proc/%d/comm", p));
    if (c.ok() && fs::Trim(*c) == "sleep") break;
    usleep(1000);
  }
  CliRun d = Godwit({"dump", "--pid", std::to_string(p), "--images-dir", img});
  ASSERT_EQ(d.code, 0) << d;
  // The dump killed it; unreaped, it is a zombie holding the pid.
  CliRun r = Godwit({"restore", "--images-dir", img, "--detach"});
  EXPECT_EQ(r.code, 4) << r;
  EXPECT_TRUE(Has(r.err, StrFormat("pid %d is a zombie not yet reaped by its parent, pid %d", p,
                                   getpid())))
      << r.err;
  ASSERT_EQ(waitpid(p, nullptr, 0), p);
  // Reaped: the restore runs, detached; its root is re-parented to us (a subreaper).
  r = Godwit({"restore", "--images-dir", img, "--detach"});
  EXPECT_EQ(r.code, 0) << r;
  if (r.code == 0) {
    EXPECT_EQ(kill(p, SIGKILL), 0);
    EXPECT_EQ(waitpid(p, nullptr, 0), p);
  }
  // The help says what --detach leaves as parent and the remedy.
  CliRun h = Godwit({"help", "restore"});
  EXPECT_TRUE(Has(h.out, "godwit subreaper")) << h.out;
  EXPECT_TRUE(Has(h.out, "nearest subreaper")) << h.out;
}

}  // namespace
}  // namespace godwit::container
