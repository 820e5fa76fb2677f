// Live migration end to end (issue 10): two namespace hosts (scripts/netns-hosts) with their own
// godwitd, --root and cgroup parent, busybox containers bridged on the hosts' segment, a client
// namespace, real TLS (scripts/migration-certs). Every test checks where the container runs
// afterwards, that its state carried on, and that neither host keeps anything of a migration
// that failed (containers, staging directories); the fixture removes all at the end.
#include <arpa/inet.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <signal.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/netns.h"
#include "container_test_util.h"
#include "migrate/staging.h"
#include "migrate/wire.h"
#include "netns_hosts.h"
#include "runtime/cgroup.h"
#include "runtime/runtime.h"

namespace godwit::migrate {
namespace {

using container::testing::CliRun;
using container::testing::Godwit;
using container::testing::TempDir;
using godwit::testing::NetnsHosts;

// Watches watched (inotify, mask) until done() holds, at most timeout_ms.
bool WaitWatching(const std::string& watched, uint32_t mask, int timeout_ms,
                  const std::function<bool()>& done) {
  UniqueFd in(inotify_init1(IN_CLOEXEC | IN_NONBLOCK));
  if (!in || inotify_add_watch(in.get(), watched.c_str(), mask) < 0) return false;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
  while (!done()) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                    deadline - std::chrono::steady_clock::now())
                    .count();
    if (left <= 0) return false;
    struct pollfd p = {in.get(), POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(left)) > 0) {
      char buf[4096];
      while (read(in.get(), buf, sizeof(buf)) > 0) {
      }
    }
  }
  return true;
}

// Waits (bounded) until path exists.
bool WaitForFile(const std::string& path, int timeout_ms) {
  return WaitWatching(path.substr(0, path.rfind('/')), IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE,
                      timeout_ms, [&] { return fs::Exists(path); });
}

// Waits (bounded) until the file at path holds text.
bool WaitForText(const std::string& path, const std::string& text, int timeout_ms) {
  if (!WaitForFile(path, timeout_ms)) return false;
  return WaitWatching(path, IN_MODIFY, timeout_ms, [&] {
    auto t = fs::ReadFile(path);
    return t.ok() && t->find(text) != std::string::npos;
  });
}

// A process started in a network namespace, stdout/stderr to files; ended by pid.
class Proc {
 public:
  Proc(const std::vector<std::string>& args, int netns_fd, const std::string& out,
       const std::string& err) {
    std::vector<std::string> a = args;
    std::vector<char*> argv;
    for (auto& s : a) argv.push_back(s.data());
    argv.push_back(nullptr);
    pid_ = fork();
    if (pid_ == 0) {
      int null = open("/dev/null", O_RDWR);
      int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      dup2(null, 0);
      dup2(o, 1);
      dup2(e, 2);
      if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) < 0) _exit(126);
      close_range(3, ~0U, 0);
      execv(argv[0], argv.data());
      _exit(127);
    }
  }
  ~Proc() { Stop(SIGKILL); }
  // Signals and reaps; returns the exit status (128+sig if killed).
  int Stop(int sig) {
    if (pid_ <= 0) return status_;
    kill(pid_, sig);
    return Wait();
  }
  // Reaps it; the exit status (128+sig if killed).
  int Wait() {
    if (pid_ <= 0) return status_;
    int st = 0;
    while (waitpid(pid_, &st, 0) < 0 && errno == EINTR) {
    }
    pid_ = -1;
    status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return status_;
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int status_ = -1;
};

class MigrateTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_OK(hosts_.Up());
    std::string certs = work_.path() + "/certs";
    auto r = container::testing::Sh(std::string(GODWIT_SCRIPTS) + "/migration-certs " + certs +
                                    " host-a host-b && " + GODWIT_SCRIPTS + "/migration-certs " +
                                    certs + "/other intruder");
    ASSERT_TRUE(r.ok()) << r.error().to_string();
    rootfs_ = work_.path() + "/rootfs";
    ASSERT_OK(runtime::MakeBusyboxRootfs(rootfs_));
    ASSERT_OK(container::testing::Sh("cp " + std::string(GODWIT_HELPERS) + "/mig_dirty " +
                                     rootfs_ + "/bin/"));
  }
  void TearDown() override {
    for (auto& id : ids_) {
      for (char h : {'a', 'b'}) (void)Gw(h, {"delete", "--force", id});
    }
    // SIGTERM, as an operator stops it: the daemon ends its sessions and removes what they
    // staged (a SIGKILL would leave a session's staging to the next daemon on that root).
    (void)StopDaemons();
    // Nothing of a migration is left in either host's state root or memory-backed staging
    // (migrate/staging.h); an empty base left by a session that ended while another ran is
    // removed here (each test has its own roots).
    for (char h : {'a', 'b'}) {
      for (const char* sub : {"incoming", "outgoing"}) {
        for (const auto& base : migrate::StagingCandidates(Root(h), sub)) {
          auto l = fs::ListDir(base);
          if (l.ok()) {
            EXPECT_TRUE(l->empty()) << base << " keeps " << l->front();
          }
        }
        migrate::RemoveStagingIfEmpty(migrate::StagingCandidates(Root(h), sub)[1]);
      }
    }
    (void)hosts_.Down();
  }

  std::string Root(char h) const { return work_.path() + "/root-" + h; }
  std::string Parent(char h) const { return StrFormat("godwit-t%d-%c", getpid(), h); }
  static std::string Addr(char h) { return h == 'a' ? NetnsHosts::kHostA : NetnsHosts::kHostB; }
  std::string HostNs(char h) const { return std::string(1, h); }
  std::vector<std::string> Tls(const std::string& who) const {
    std::string d = work_.path() + "/certs/";
    if (who == "intruder")
      return {"--tls-cert", d + "other/intruder.pem", "--tls-key", d + "other/intruder.key",
              "--tls-ca", d + "other/ca.pem"};
    return {"--tls-cert", d + who + ".pem", "--tls-key", d + who + ".key", "--tls-ca",
            d + "ca.pem"};
  }

  CliRun Gw(char h, std::vector<std::string> args) {
    std::vector<std::string> full = {"--root", Root(h), "--cgroup-parent", Parent(h)};
    full.insert(full.end(), args.begin(), args.end());
    return Godwit(full, true, hosts_.Fd(HostNs(h)));
  }

  nlohmann::json DirtyToB(const std::vector<std::string>& daemon_flags);  // below
  // godwitd on host h (mutual TLS with host-h's certificate), optional extra flags.
  void StartDaemon(char h, std::vector<std::string> extra = {}) {
    std::vector<std::string> args = {GODWITD_BIN, "--listen", Addr(h) + ":7070", "--root",
                                     Root(h), "--cgroup-parent", Parent(h)};
    auto tls = Tls(StrFormat("host-%c", h));
    args.insert(args.end(), tls.begin(), tls.end());
    args.insert(args.end(), extra.begin(), extra.end());
    std::string log = StrFormat("%s/godwitd-%c-%zu.log", work_.path().c_str(), h, daemons_.size());
    std::string ready = log + ".ready";
    args.push_back("--ready-file");
    args.push_back(ready);
    daemons_.push_back(std::make_unique<Proc>(args, hosts_.Fd(HostNs(h)), "/dev/null", log));
    ASSERT_TRUE(WaitForFile(ready, 10000)) << "godwitd did not start: " << *fs::ReadFile(log);
  }
  // Stops the daemons (SIGTERM: sessions end, leftovers cleaned) and returns their logs.
  std::string StopDaemons() {
    std::string logs;
    for (size_t i = 0; i < daemons_.size(); ++i) daemons_[i]->Stop(SIGTERM);
    for (char h : {'a', 'b'})
      for (size_t i = 0; i < 8; ++i) {
        auto t = fs::ReadFile(StrFormat("%s/godwitd-%c-%zu.log", work_.path().c_str(), h, i));
        if (t.ok()) logs += *t;
      }
    daemons_.clear();
    return logs;
  }

  // mig_dirty ARGS as the container id on host a, bridged with address n; returns once its
  // memory is filled (DIR/ready).
  void RunDirty(const std::string& id, int n, const std::string& memory,
                const std::vector<std::string>& args, const std::vector<std::string>& run = {}) {
    ids_.push_back(id);
    std::vector<std::string> cmd = {"run", "--rootfs", rootfs_, "--name", id, "--detach",
                                    "--bridge", "br0", "--ip",
                                    NetnsHosts::ContainerIp(n) + "/15", "--memory", memory};
    cmd.insert(cmd.end(), run.begin(), run.end());
    cmd.push_back("--");
    cmd.push_back("/bin/mig_dirty");
    cmd.insert(cmd.end(), args.begin(), args.end());
    CliRun r = Gw('a', cmd);
    ASSERT_EQ(r.code, 0) << r;
    for (int i = 0; i < 500 && Gw('a', {"exec", id, "--", "test", "-e", "/dev/shm/ready"}).code;
         ++i) {
    }
  }
  // mig_dirty's check of its whole memory (SIGUSR1), as it wrote it to /dev/shm/verify ("OK ..."
  // or "BAD page ..."); empty if it never came.
  std::string VerifyDirty(char host, const std::string& id) {
    if (Gw(host, {"exec", id, "--", "rm", "-f", "/dev/shm/verify"}).code != 0) return "";
    if (Gw(host, {"kill", id, "USR1"}).code != 0) return "";
    for (int i = 0; i < 500; ++i) {
      CliRun c = Gw(host, {"exec", id, "--", "cat", "/dev/shm/verify"});
      if (c.code == 0 && !c.out.empty()) return c.out;
    }
    return "";
  }
  // A counter (tmpfs) and an echo server on 8081, bridged with address n.
  void RunCounter(const std::string& id, int n, const std::string& extra = "",
                  const std::string& rootfs = "") {
    ids_.push_back(id);
    std::string cmd =
        "nc -ll -p 8081 -e cat & " + extra +
        "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; usleep 20000; done";
    CliRun r = Gw('a', {"run", "--rootfs", rootfs.empty() ? rootfs_ : rootfs, "--name", id,
                        "--detach", "--bridge", "br0", "--ip", NetnsHosts::ContainerIp(n) + "/15",
                        "--memory", "512M", "--", "sh", "-c", cmd});
    ASSERT_EQ(r.code, 0) << r;
    ASSERT_GT(WaitCount('a', id, 2), 2);
  }
  int Count(char h, const std::string& id) {
    CliRun r = Gw(h, {"exec", id, "--", "cat", "/dev/shm/count"});
    return r.code == 0 ? atoi(r.out.c_str()) : -1;
  }
  // Bounded: until the counter passes `above` (it ticks every 20 ms).
  int WaitCount(char h, const std::string& id, int above) {
    int c = -1;
    for (int i = 0; i < 500 && (c = Count(h, id)) <= above; ++i) {
    }
    return c;
  }
  bool Exists(char h, const std::string& id) { return Gw(h, {"state", id}).code == 0; }

  CliRun Migrate(char from, const std::string& id, std::vector<std::string> extra = {}) {
    char to = from == 'a' ? 'b' : 'a';
    std::vector<std::string> args = {"migrate", id, "--to", Addr(to) + ":7070"};
    auto tls = Tls(StrFormat("host-%c", from));
    args.insert(args.end(), tls.begin(), tls.end());
    args.insert(args.end(), extra.begin(), extra.end());
    return Gw(from, args);
  }

  NetnsHosts hosts_{StrFormat("gm%d", getpid() % 100000)};
  TempDir work_{"migrate"};
  std::string rootfs_;
  std::vector<std::string> ids_;
  std::vector<std::unique_ptr<Proc>> daemons_;
};

TEST_F(MigrateTest, IdleContainerThereAndBackTenTimes) {
  StartDaemon('a');
  // b stages without its own huge-page tmpfs (migrate/staging.h), as where the kernel refuses
  // one; so does every other source below: both ways, on both ends.
  ASSERT_EQ(setenv("GODWIT_NO_HUGE_STAGING", "1", 1), 0);
  StartDaemon('b');
  ASSERT_EQ(unsetenv("GODWIT_NO_HUGE_STAGING"), 0);
  // A process with a nice value of its own: the blackout's raised priority (common/priority.h)
  // must not stick to the restored tree.
  RunCounter("idle", 10, "sleep 100000 & renice -n 7 -p $! >/dev/null; ");
  char at = 'a';
  int last = Count('a', "idle");
  for (int i = 0; i < 10; ++i) {
    std::string rep = work_.path() + StrFormat("/rep-%d.json", i);
    const bool no_huge = i % 4 >= 2;
    if (no_huge) ASSERT_EQ(setenv("GODWIT_NO_HUGE_STAGING", "1", 1), 0);
    CliRun r = Migrate(at, "idle", {"--report", rep, "--json"});
    ASSERT_EQ(unsetenv("GODWIT_NO_HUGE_STAGING"), 0);
    ASSERT_EQ(r.code, 0) << "migration " << i << ": " << r;
    char to = at == 'a' ? 'b' : 'a';
    EXPECT_FALSE(Exists(at, "idle")) << "migration " << i;
    ASSERT_TRUE(Exists(to, "idle")) << "migration " << i;
    int c = WaitCount(to, "idle", last);
    EXPECT_GT(c, last) << "the counter carries on after migration " << i;
    last = c;
    // The report parses and adds up.
    auto j = nlohmann::json::parse(*fs::ReadFile(rep));
    EXPECT_EQ(j["outcome"], "migrated");
    EXPECT_TRUE(j["tls"].get<bool>());
    EXPECT_EQ(j["tls_cipher"].get<std::string>().rfind("TLS_", 0), 0u) << j["tls_cipher"];
    EXPECT_TRUE(j["boosted"].get<bool>());
    EXPECT_EQ(j["restore_phases"]["dest.boosted"].get<double>(), 1.0);
    EXPECT_EQ(j["staging"], no_huge ? "tmpfs" : "huge-tmpfs") << "migration " << i;
    EXPECT_EQ(j["restore_phases"]["dest.huge_staging"].get<double>(), to == 'b' ? 0.0 : 1.0);
    // The destination made the environment while the source dumped the tree (EnvReady).
    EXPECT_GT(j["restore_phases"].value("restore.ahead_ms", 0.0), 0.0) << j["restore_phases"];
    // The fixed part of the prediction: the source's half measured on this container.
    const auto& fp = j["fixed_cost_parts"];
    EXPECT_GT(fp["collect_ms"].get<double>(), 0.0) << fp;
    EXPECT_GT(fp["tree_start_measured_ms"].get<double>(), 0.0) << fp;
    EXPECT_GE(fp["tree_ms"].get<double>(), fp["tree_model_ms"].get<double>()) << fp;
    EXPECT_NEAR(fp["freeze_ms"].get<double>() + fp["collect_ms"].get<double>() +
                    fp["tree_ms"].get<double>() + fp["restore_ms"].get<double>() +
                    fp["switch_ms"].get<double>(),
                j["fixed_cost_ms"].get<double>(), 0.01)
        << fp;
    ASSERT_GE(j["rounds"].size(), 1u);
    EXPECT_EQ(j["rounds"].back()["decision"].get<std::string>().rfind("switch", 0), 0u);
    const auto& b = j["blackout"];
    double parts = b["freeze_ms"].get<double>() + b["final_dump_ms"].get<double>() +
                   b["transfer_ms"].get<double>() + b["restore_ms"].get<double>() +
                   b["release_ms"].get<double>() + b["announce_ms"].get<double>();
    EXPECT_NEAR(parts, b["total_ms"].get<double>(), 1.0 + 0.02 * parts);
    at = to;
  }
  // The pid inside the container is still 1 and the echo server answers on the final host.
  CliRun ps = Gw(at, {"exec", "idle", "--", "sh", "-c", "echo hi | nc 127.0.0.1 8081"});
  EXPECT_EQ(ps.out, "hi\n") << ps;
  // Neither the environment's quiet table nor the connections' lock is left in its namespace.
  CliRun st = Gw(at, {"state", "idle"});
  auto sj = nlohmann::json::parse(st.out, nullptr, false);
  ASSERT_FALSE(sj.is_discarded()) << st;
  auto tables = container::testing::Sh(StrFormat("nsenter -t %d -n nft list tables", sj.value("pid", 0)));
  ASSERT_OK(tables);
  EXPECT_EQ(tables->find("godwit_"), std::string::npos) << *tables;
  // Each process kept its own nice value (field 19 of stat): the init 0, the sleeper 7.
  CliRun nice = Gw(at, {"exec", "idle", "--", "sh", "-c",
                        "cut -d' ' -f19 /proc/1/stat; cut -d' ' -f19 /proc/$(pidof sleep)/stat"});
  EXPECT_EQ(nice.out, "0\n7\n") << nice;
}

// The container's tmpfs contents and its writable layer's files go with the rounds
// (mnt::PrecopyTmpfs, mnt::PrecopyLayer): the final checkpoint refers to what is unchanged since
// (24 and 8 MiB files) and reads only what changed (the counter the container rewrites every
// 20 ms); all arrive as they were at the freeze.
TEST_F(MigrateTest, TmpfsAndLayerFilesGoAheadOfTheFreeze) {
  StartDaemon('b');
  // A writable layer of its own (--disk: an overlay) holding an 8 MiB file, a 24 MiB file in
  // its /dev/shm, and a counter rewritten every 20 ms.
  ids_.push_back("files");
  CliRun run = Gw('a', {"run", "--rootfs", rootfs_, "--name", "files", "--detach", "--bridge",
                        "br0", "--ip", NetnsHosts::ContainerIp(12) + "/15", "--memory", "512M",
                        "--disk", "64M", "--", "sh", "-c",
                        "head -c 25165824 /dev/urandom > /dev/shm/blob; "
                        "head -c 8388608 /dev/urandom > /layerfile; nc -ll -p 8081 -e cat & "
                        "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; "
                        "usleep 20000; done"});
  ASSERT_EQ(run.code, 0) << run;
  ASSERT_GT(WaitCount('a', "files", 2), 2);
  CliRun sum = Gw('a', {"exec", "files", "--", "md5sum", "/dev/shm/blob", "/layerfile"});
  ASSERT_EQ(sum.code, 0) << sum;
  // Until the files' change times are well in the past (the clock, not another actor): a file
  // changed within the clock's granularity of the copy is read again at the freeze.
  for (;;) {
    CliRun age = Gw('a', {"exec", "files", "--", "sh", "-c",
                          "echo $(( $(date +%s) - $(stat -c %Z /layerfile) ))"});
    ASSERT_EQ(age.code, 0) << age;
    if (atoi(age.out.c_str()) >= 2) break;  // whole seconds: 2 is more than one
  }
  std::string rep = work_.path() + "/rep.json";
  CliRun r = Migrate('a', "files", {"--report", rep});
  ASSERT_EQ(r.code, 0) << r;
  auto j = nlohmann::json::parse(*fs::ReadFile(rep));
  EXPECT_GE(j["files_ahead_bytes"].get<uint64_t>(), 32ull << 20) << j.dump(2);
  EXPECT_GE(j["files_ahead_reused_bytes"].get<uint64_t>(), 32ull << 20) << j.dump(2);
  // The final checkpoint did not send them again: its bytes on the wire are far below them.
  EXPECT_LT(j["final_bytes"].get<uint64_t>(), 8ull << 20) << j.dump(2);
  CliRun there = Gw('b', {"exec", "files", "--", "md5sum", "/dev/shm/blob", "/layerfile"});
  EXPECT_EQ(there.out, sum.out) << there;
  int c = Count('b', "files");
  EXPECT_GT(WaitCount('b', "files", c), c) << "the counter carries on from the freeze";
}

// A container with a user namespace migrates there and back: its environment is not made
// ahead (the holder of its namespaces is built from the whole record), its root stays the
// namespace's root, mapped to the same host ids, and its counter carries on.
TEST_F(MigrateTest, UserNamespacedContainerThereAndBack) {
  StartDaemon('a');
  StartDaemon('b');
  ids_.push_back("uns");
  CliRun run = Gw('a', {"run", "--rootfs", rootfs_, "--name", "uns", "--detach", "--userns-base",
                        "100000", "--bridge", "br0", "--ip", NetnsHosts::ContainerIp(13) + "/15",
                        "--", "sh", "-c",
                        "i=0; while true; do i=$((i+1)); echo $i > /dev/shm/count; "
                        "usleep 20000; done"});
  ASSERT_EQ(run.code, 0) << run;
  int last = WaitCount('a', "uns", 2);
  ASSERT_GT(last, 2);
  char at = 'a';
  for (int i = 0; i < 2; ++i) {
    std::string rep = work_.path() + StrFormat("/rep-uns-%d.json", i);
    CliRun r = Migrate(at, "uns", {"--report", rep});
    ASSERT_EQ(r.code, 0) << "migration " << i << ": " << r;
    char to = at == 'a' ? 'b' : 'a';
    auto j = nlohmann::json::parse(*fs::ReadFile(rep));
    EXPECT_EQ(j["outcome"], "migrated");
    int c = WaitCount(to, "uns", last);
    EXPECT_GT(c, last) << "the counter carries on after migration " << i;
    last = c;
    CliRun map = Gw(to, {"exec", "uns", "--", "sh", "-c", "id -u; cat /proc/self/uid_map"});
    ASSERT_EQ(map.code, 0) << map;
    EXPECT_EQ(map.out.substr(0, 2), "0\n") << map;
    EXPECT_NE(map.out.find("100000"), std::string::npos) << map;
    at = to;
  }
}

// Daemons on both hosts (with daemon_flags), a container dirtying 64 MiB ("dirty") on host a,
// migrated to b; the migration's report.
nlohmann::json MigrateTest::DirtyToB(const std::vector<std::string>& daemon_flags) {
  StartDaemon('a', daemon_flags);
  StartDaemon('b', daemon_flags);
  RunDirty("dirty", 11, "512M", {"64", "1", "100", "/dev/shm"});
  if (HasFatalFailure()) return {};
  std::string rep = work_.path() + "/rep.json";
  CliRun r = Migrate('a', "dirty", {"--report", rep, "--max-downtime", "60ms"});
  EXPECT_EQ(r.code, 0) << r;
  if (r.code != 0) return {};
  return nlohmann::json::parse(*fs::ReadFile(rep));
}

TEST_F(MigrateTest, DirtyingMemoryArrivesIntactAndFinalRoundIsSmall) {
  auto j = DirtyToB({});
  ASSERT_FALSE(j.empty());
  ASSERT_GE(j["rounds"].size(), 2u) << j.dump(2);
  uint64_t round0 = j["rounds"][0]["bytes"].get<uint64_t>();
  EXPECT_GE(round0, 60ull << 20) << "round 0 holds all the memory";
  EXPECT_LT(j["final_bytes"].get<uint64_t>(), round0 / 4) << "the final dump holds the dirty set: " << j.dump(2);
  // The destination restored lazily: its memory is still being paged in. Straight back: the
  // pre-copy there must wait for those pages (they are not there yet), not lose them.
  EXPECT_GT(j["restore_phases"]["lazy_bytes"].get<double>(), 0) << j.dump(2);
  // The earlier rounds' pages were resolved for the pager while the restore waited
  // (restore/load.h TakeLazyAhead): the blackout only laid the final dump over them.
  EXPECT_GT(j["restore_phases"].value("restore.lazy_prepared_bytes", 0.0), 32.0 * (1 << 20))
      << j["restore_phases"];
  // The rounds' page files were checked by the helper on idle CPU while the rounds went on,
  // each once whole (a blob still arriving in pieces is not taken: cli/cmd_container.cc).
  EXPECT_GT(j["restore_phases"].value("restore.prechecked_chunks", 0.0), 0.0)
      << j["restore_phases"];
  CliRun r = Migrate('b', "dirty", {"--max-downtime", "60ms"});
  ASSERT_EQ(r.code, 0) << r;
  // Every page checks out against its generation table after both hops.
  std::string v = VerifyDirty('a', "dirty");
  EXPECT_EQ(v.rfind("OK ", 0), 0u) << v;
}

// godwitd --discard-staging: the destination's pager frees the staged page files as it installs
// their pages (restore --discard-pages), across every round's file and the final dump's, with
// chunks checked ahead by the precheck helper and chunks checked as read. Every page checks out
// after a hop there and back.
TEST_F(MigrateTest, DiscardedStagingKeepsTheMemoryIntact) {
  auto j = DirtyToB({"--discard-staging"});
  ASSERT_FALSE(j.empty());
  EXPECT_GT(j["restore_phases"]["lazy_bytes"].get<double>(), 0) << j.dump(2);
  CliRun r = Migrate('b', "dirty", {"--max-downtime", "60ms"});
  ASSERT_EQ(r.code, 0) << r;
  std::string v = VerifyDirty('a', "dirty");
  EXPECT_EQ(v.rfind("OK ", 0), 0u) << v;
}

// A container whose memory is all locked (mlockall): the destination's lazy pager can take none
// of it, so the rounds resolved ahead for it are filled whole inside the restore instead (a
// restore that handed them to the pager failed: "pid N is not registered"). Every page checks
// out after the hop.
TEST_F(MigrateTest, LockedMemoryIsFilledWholeFromTheRoundsResolvedAhead) {
  StartDaemon('a');
  StartDaemon('b');
  RunDirty("locked", 20, "256M", {"4", "5", "20", "/dev/shm", "lock"});
  if (HasFatalFailure()) return;
  ASSERT_EQ(Gw('a', {"exec", "locked", "--", "grep", "-q", "VmLck:[^0]*[1-9]",
                     "/proc/1/status"}).code, 0)
      << "the workload's memory is not locked";
  std::string rep = work_.path() + "/rep.json";
  CliRun r = Migrate('a', "locked", {"--report", rep, "--max-downtime", "60ms"});
  ASSERT_EQ(r.code, 0) << r;
  auto j = nlohmann::json::parse(*fs::ReadFile(rep));
  ASSERT_GE(j["rounds"].size(), 2u) << j.dump(2);
  EXPECT_EQ(j["restore_phases"].value("restore.lazy_prepared_bytes", -1.0), 0.0)
      << j["restore_phases"];
  std::string v = VerifyDirty('b', "locked");
  EXPECT_EQ(v.rfind("OK ", 0), 0u) << v;
}

TEST_F(MigrateTest, TcpClientStreamsThroughMigrationUnbroken) {
  StartDaemon('a');
  StartDaemon('b');
  RunCounter("tcp", 12);
  std::string out = work_.path() + "/probe.json", ready = work_.path() + "/probe.ready";
  Proc probe({GODWIT_BIN, "probe", "--tcp", NetnsHosts::ContainerIp(12) + ":8081", "--interval",
              "1ms", "--ready-file", ready, "--json"},
             hosts_.Fd("c"), out, work_.path() + "/probe.err");
  ASSERT_TRUE(WaitForFile(ready, 10000)) << *fs::ReadFile(work_.path() + "/probe.err");
  CliRun r = Migrate('a', "tcp");
  ASSERT_EQ(r.code, 0) << r;
  r = Migrate('b', "tcp");
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_EQ(probe.Stop(SIGINT), 0) << *fs::ReadFile(work_.path() + "/probe.err");
  auto j = nlohmann::json::parse(*fs::ReadFile(out))["tcp"];
  EXPECT_GT(j["echoed"].get<uint64_t>(), 100u) << j.dump();
  EXPECT_EQ(j["echoed"], j["sent"]) << j.dump();
  EXPECT_FALSE(j["broken"].get<bool>()) << j.dump();
  EXPECT_FALSE(j["corrupt"].get<bool>()) << j.dump();
  std::printf("client across two migrations: max gap %.1f ms, p99 %.2f ms, retransmissions %d\n",
              j["max_gap_ms"].get<double>(), j["gap_ms"]["p99"].get<double>(),
              j["tcp_info"]["total_retrans"].get<int>());
}

// The frames that come out of the hosts onto the segment, in the order the segment got them:
// captured in its namespace by one packet socket (made before, drained after what is watched).
class SegmentCapture {
 public:
  struct Frame {
    char host;  // 'a' or 'b': the port it came in by
    std::string bytes;
  };
  explicit SegmentCapture(int br_netns_fd) {
    std::thread t([&] {
      if (setns(br_netns_fd, CLONE_NEWNET) < 0) return;
      fd_.reset(socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC | SOCK_NONBLOCK, htons(ETH_P_ALL)));
      int big = 16 << 20;
      setsockopt(fd_.get(), SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof(big));
      for (char h : {'a', 'b'})
        port_[h] = static_cast<int>(if_nametoindex(StrFormat("to-%c", h).c_str()));
      if (!port_['a'] || !port_['b']) fd_.reset();
    });
    t.join();
  }
  bool ok() const { return static_cast<bool>(fd_); }
  // More frames into *out until one satisfies pred or timeout_ms pass (true: it came).
  bool WaitFor(std::vector<Frame>* out, const std::function<bool(const Frame&)>& pred,
               int timeout_ms) {
    for (const Frame& f : *out)
      if (pred(f)) return true;
    auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(timeout_ms);
    for (;;) {
      int left = static_cast<int>(std::chrono::duration_cast<std::chrono::milliseconds>(
                                      end - std::chrono::steady_clock::now())
                                      .count());
      pollfd p{fd_.get(), POLLIN, 0};
      if (left <= 0 || ::poll(&p, 1, left) != 1) return false;
      size_t had = out->size();
      for (Frame& f : Drain()) out->push_back(std::move(f));
      for (size_t i = had; i < out->size(); ++i)
        if (pred((*out)[i])) return true;
    }
  }
  std::vector<Frame> Drain() {
    std::vector<Frame> out;
    char buf[2048];
    for (;;) {
      sockaddr_ll from{};
      socklen_t fl = sizeof(from);
      ssize_t n = recvfrom(fd_.get(), buf, sizeof(buf), 0, reinterpret_cast<sockaddr*>(&from), &fl);
      if (n < 0) break;
      if (from.sll_pkttype == PACKET_OUTGOING || n < ETH_HLEN) continue;
      for (char h : {'a', 'b'})
        if (from.sll_ifindex == port_[h]) out.push_back({h, std::string(buf, n)});
    }
    return out;
  }

 private:
  UniqueFd fd_;
  std::map<char, int> port_;
};

// Around each switch, seen from the segment: the destination says nothing before the commit,
// with or without TCP connections (the first frame with the container's MAC out of the
// destination host is the commit's gratuitous ARP): its link's IPv6 chatter (MLD reports, router
// solicitations) would teach the segment the container's MAC there while the source still holds
// the clients' frames. And the source says nothing after it: its copy is silenced, and taken off
// the segment before it is deleted (a dying namespace loses its nftables hooks before its links,
// and an ARP or a RST from it would take the clients' frames back there: migrate/packet_hold.h,
// Unplug). No lock, quiet or silence table is left in the container or on either host.
TEST_F(MigrateTest, NothingSpeaksForTheContainerButItsLiveCopy) {
  StartDaemon('a');
  StartDaemon('b');
  RunCounter("quiet", 18);  // a listening nc only: no connection, nothing for the dump to lock
  const std::string ip = NetnsHosts::ContainerIp(18);
  std::unique_ptr<Proc> probe;
  for (char from : {'a', 'b'}) {
    char to = from == 'a' ? 'b' : 'a';
    SCOPED_TRACE(StrFormat("%c -> %c, %s TCP connections", from, to, probe ? "with" : "without"));
    SegmentCapture cap(hosts_.Fd("br"));
    ASSERT_TRUE(cap.ok());
    CliRun r = Migrate(from, "quiet");
    ASSERT_EQ(r.code, 0) << r;
    std::vector<SegmentCapture::Frame> frames = cap.Drain();
    // The container's MAC: the sender of the gratuitous ARP for its address from the destination.
    size_t arp_at = frames.size();
    std::string mac;
    for (size_t i = 0; i < frames.size() && arp_at == frames.size(); ++i) {
      const std::string& f = frames[i].bytes;
      in_addr sender{};
      if (frames[i].host != to || f.size() < 42 || f.compare(12, 2, "\x08\x06") != 0) continue;
      memcpy(&sender, f.data() + 28, 4);
      if (inet_ntoa(sender) != ip) continue;
      arp_at = i;
      mac = f.substr(22, 6);
    }
    ASSERT_LT(arp_at, frames.size()) << "no gratuitous ARP for " << ip << " out of host " << to;
    auto type = [](const std::string& f) {
      return StrFormat("EtherType %#x",
                       (static_cast<uint8_t>(f[12]) << 8) | static_cast<uint8_t>(f[13]));
    };
    // After the ARP, its IPv6 addresses (the link-local one at least) are announced too: an
    // unsolicited neighbour advertisement from the same MAC, out of the destination.
    // They go right after Done, while the source deletes its copy: waited for.
    auto is_na = [&](const SegmentCapture::Frame& fr) {
      const std::string& f = fr.bytes;
      return fr.host == to && f.substr(6, 6) == mac && f.size() >= 14 + 40 + 32 &&
             f.compare(12, 2, "\x86\xdd", 2) == 0 && static_cast<uint8_t>(f[14 + 6]) == 58 &&
             static_cast<uint8_t>(f[14 + 40]) == 136;
    };
    EXPECT_TRUE(cap.WaitFor(&frames, is_na, 5000))
        << "no unsolicited neighbour advertisement out of host " << to;
    for (size_t i = 0; i < frames.size(); ++i) {
      if (frames[i].bytes.substr(6, 6) != mac) continue;
      if (i < arp_at) {
        EXPECT_EQ(frames[i].host, from) << "frame " << i << " (" << type(frames[i].bytes)
                                        << ") left the destination before the commit";
      }
      if (i > arp_at) {
        EXPECT_EQ(frames[i].host, to) << "frame " << i << " (" << type(frames[i].bytes)
                                      << ") left the source after the commit";
      }
    }
    // Nothing of the switch is left: no godwit_ table in either host nor in the container.
    for (char h : {'a', 'b'}) {
      auto t = netns::NftRunIn(hosts_.Fd(HostNs(h)), "list tables\n");
      ASSERT_TRUE(t.ok()) << t.error().to_string();
      EXPECT_EQ(t->find("godwit_"), std::string::npos) << "host " << h << ": " << *t;
    }
    auto st = nlohmann::json::parse(Gw(to, {"state", "quiet"}).out, nullptr, false);
    ASSERT_FALSE(st.is_discarded());
    auto t = netns::NftRun(st["pid"].get<pid_t>(), "list tables\n");
    ASSERT_TRUE(t.ok()) << t.error().to_string();
    EXPECT_EQ(t->find("godwit_"), std::string::npos) << "in the container: " << *t;
    // The way back with a connection to lock.
    if (!probe) {
      std::string ready = work_.path() + "/probe.ready";
      probe = std::make_unique<Proc>(
          std::vector<std::string>{GODWIT_BIN, "probe", "--tcp", ip + ":8081", "--interval",
                                   "5ms", "--ready-file", ready, "--json"},
          hosts_.Fd("c"), work_.path() + "/probe.json", work_.path() + "/probe.err");
      ASSERT_TRUE(WaitForFile(ready, 10000)) << *fs::ReadFile(work_.path() + "/probe.err");
    }
  }
  EXPECT_EQ(probe->Stop(SIGINT), 0) << *fs::ReadFile(work_.path() + "/probe.err");
}

// A client pinging the container every millisecond and sending it UDP datagrams, through a
// migration there and back: the pings that arrive while it is frozen are held and answered by
// the destination, none is lost; the UDP server, which receives while frozen (datagrams queued in
// its socket go with it), migrates, and its echoes carry on intact.
TEST_F(MigrateTest, PingAndUdpClientsThroughMigration) {
  StartDaemon('a');
  StartDaemon('b');
  ASSERT_OK(container::testing::Sh("cp " + std::string(GODWIT_HELPERS) + "/udp_echo " + rootfs_ +
                                   "/bin/"));
  RunCounter("ping", 19, "/bin/udp_echo 8082 & ");
  const std::string ip = NetnsHosts::ContainerIp(19);
  std::string out = work_.path() + "/probe.json", ready = work_.path() + "/probe.ready";
  Proc probe({GODWIT_BIN, "probe", "--icmp", ip, "--udp", ip + ":8082", "--interval", "1ms",
              "--ready-file", ready, "--json"},
             hosts_.Fd("c"), out, work_.path() + "/probe.err");
  ASSERT_TRUE(WaitForFile(ready, 10000)) << *fs::ReadFile(work_.path() + "/probe.err");
  CliRun r = Migrate('a', "ping");
  ASSERT_EQ(r.code, 0) << r;
  r = Migrate('b', "ping");
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_EQ(probe.Stop(SIGINT), 0) << *fs::ReadFile(work_.path() + "/probe.err");
  auto j = nlohmann::json::parse(*fs::ReadFile(out));
  const auto& icmp = j["icmp"];
  EXPECT_GT(icmp["echoed"].get<uint64_t>(), 100u) << icmp.dump();
  EXPECT_EQ(icmp["lost"].get<uint64_t>(), 0u) << icmp.dump();
  EXPECT_FALSE(icmp["corrupt"].get<bool>()) << icmp.dump();
  const auto& udp = j["udp"];
  EXPECT_GT(udp["echoed"].get<uint64_t>(), 100u) << udp.dump();
  EXPECT_FALSE(udp["corrupt"].get<bool>()) << udp.dump();
  std::printf("ping across two migrations: %llu sent, %llu lost, %llu answered twice, max gap "
              "%.1f ms; UDP: %llu sent, %llu lost, %llu duplicates, max gap %.1f ms\n",
              icmp["sent"].get<unsigned long long>(), icmp["lost"].get<unsigned long long>(),
              icmp["duplicates"].get<unsigned long long>(), icmp["max_gap_ms"].get<double>(),
              udp["sent"].get<unsigned long long>(), udp["lost"].get<unsigned long long>(),
              udp["duplicates"].get<unsigned long long>(), udp["max_gap_ms"].get<double>());
}

TEST_F(MigrateTest, TwoMigrationsAtOnceIntoOneDaemon) {
  StartDaemon('b');
  // Each its own rootfs: a restore checks that the rootfs is the one checkpointed, and one
  // container's restore changes a shared one (docs/migration.md, not covered).
  for (const char* id : {"one", "two"})
    ASSERT_OK(container::testing::Sh("cp -a " + rootfs_ + " " + rootfs_ + "-" + id));
  RunCounter("one", 13, "", rootfs_ + "-one");
  RunCounter("two", 14, "", rootfs_ + "-two");
  CliRun r1, r2;
  std::thread t([&] { r1 = Migrate('a', "one"); });
  r2 = Migrate('a', "two");
  t.join();
  EXPECT_EQ(r1.code, 0) << r1;
  EXPECT_EQ(r2.code, 0) << r2;
  for (const char* id : {"one", "two"}) {
    EXPECT_FALSE(Exists('a', id)) << id;
    EXPECT_GT(WaitCount('b', id, 0), 0) << id;
  }
}

// Each fault leaves the container running on a exactly as before, and nothing on b.
TEST_F(MigrateTest, DestinationFailuresRollBack) {
  // The sleeper's own nice: the blackout's raised priority (common/priority.h) must not stick
  // to a tree that resumes here.
  RunCounter("fault", 15, "sleep 100000 & renice -n 7 -p $! >/dev/null; ");
  std::string out = work_.path() + "/probe.json", ready = work_.path() + "/probe.ready";
  Proc probe({GODWIT_BIN, "probe", "--tcp", NetnsHosts::ContainerIp(15) + ":8081", "--interval",
              "2ms", "--ready-file", ready, "--json"},
             hosts_.Fd("c"), out, work_.path() + "/probe.err");
  ASSERT_TRUE(WaitForFile(ready, 10000));
  for (std::string fault :
       {"welcome:kill", "round:kill", "round:close", "round:corrupt", "final:kill", "final:close",
        "restored:kill", "restored:close"}) {
    SCOPED_TRACE(fault);
    StartDaemon('b', {"--fault", fault});
    int before = Count('a', "fault");
    CliRun r = Migrate('a', "fault", {"--timeout", "10s"});
    EXPECT_EQ(r.code, 8) << r;
    EXPECT_NE(r.err.find("still runs here"), std::string::npos) << r;
    std::string logs = StopDaemons();
    EXPECT_FALSE(Exists('b', "fault")) << logs;
    ASSERT_TRUE(Exists('a', "fault"));
    EXPECT_GT(WaitCount('a', "fault", before), before) << "the container runs on after " << fault;
  }
  EXPECT_EQ(probe.Stop(SIGINT), 0) << *fs::ReadFile(work_.path() + "/probe.err");
  auto j = nlohmann::json::parse(*fs::ReadFile(out))["tcp"];
  EXPECT_EQ(j["echoed"], j["sent"]) << "the TCP connection survived every rollback: " << j.dump();
  EXPECT_FALSE(j["broken"].get<bool>()) << j.dump();
  CliRun nice = Gw('a', {"exec", "fault", "--", "sh", "-c",
                         "cut -d' ' -f19 /proc/1/stat; cut -d' ' -f19 /proc/$(pidof sleep)/stat"});
  EXPECT_EQ(nice.out, "0\n7\n") << nice;
}

TEST_F(MigrateTest, RefusedPeers) {
  StartDaemon('b');
  RunCounter("ref", 16);
  // A source from another CA: refused in the TLS handshake.
  std::vector<std::string> args = {"migrate", "ref", "--to", Addr('b') + ":7070"};
  auto bad = Tls("intruder");
  args.insert(args.end(), bad.begin(), bad.end());
  CliRun r = Gw('a', args);
  EXPECT_EQ(r.code, 8) << r;
  // Plain TCP against a TLS daemon.
  r = Gw('a', {"migrate", "ref", "--to", Addr('b') + ":7070", "--insecure"});
  EXPECT_EQ(r.code, 8) << r;
  // Another protocol version, a CPU feature this host lacks, no room: refused with the reason.
  struct Case {
    std::function<void(mig::Hello*)> edit;
    const char* why;
  };
  std::vector<Case> cases = {
      {[](mig::Hello* h) { h->set_protocol_version(99); }, "protocol version 99"},
      {[](mig::Hello* h) { h->add_cpu_features("avx9000"); }, "avx9000"},
      {[](mig::Hello* h) { h->set_memory_bytes(1ull << 50); }, "no room"},
      {[](mig::Hello* h) { h->set_rootfs("/nonexistent"); }, "/nonexistent"},
  };
  for (auto& c : cases) {
    // The test is the source here, from host a's namespace.
    int self = open("/proc/self/ns/net", O_RDONLY | O_CLOEXEC);
    ASSERT_EQ(setns(hosts_.Fd("a"), CLONE_NEWNET), 0);
    auto tls = Tls("host-a");
    auto ch = Channel::Connect(Addr('b') + ":7070", {tls[1], tls[3], tls[5], false}, 5);
    ASSERT_EQ(setns(self, CLONE_NEWNET), 0);
    close(self);
    ASSERT_TRUE(ch.ok()) << ch.error().to_string();
    mig::Frame f;
    mig::Hello* h = f.mutable_hello();
    h->set_protocol_version(mig::VERSION_CURRENT);
    h->set_image_format_version(1);
    h->set_container_id("ref");
    h->set_rootfs(rootfs_);
    c.edit(h);
    ASSERT_TRUE((*ch)->Send(f).ok());
    std::string p;
    ASSERT_TRUE((*ch)->Recv(&f, &p).ok());
    ASSERT_TRUE(f.has_welcome());
    EXPECT_FALSE(f.welcome().accepted());
    EXPECT_NE(f.welcome().reason().find(c.why), std::string::npos) << f.welcome().reason();
  }
  std::string logs = StopDaemons();
  EXPECT_NE(logs.find("refused"), std::string::npos) << logs;
  EXPECT_TRUE(Exists('a', "ref"));
  EXPECT_FALSE(Exists('b', "ref"));
}

// Auto-converge: a container rewriting its memory as fast as its CPU allows never lets a round
// shrink. Each round takes more of its CPU away (the report says how much), and whatever ends
// the migration gives the container its own CPU limit back: here (a --strict abort) and there
// (restored with its configured limit, not the throttle). Without auto-converge no round is
// throttled. Every page checks out at both ends.
TEST_F(MigrateTest, AutoConvergeThrottlesAWriterAndGivesItsCpuBack) {
  StartDaemon('b');
  RunDirty("spin", 21, "256M", {"64", "5", "-1", "/dev/shm"}, {"--cpus", "1.5"});
  if (HasFatalFailure()) return;
  auto limit = [&](char h) -> runtime::CpuBandwidth {
    auto cg = runtime::OpenCgroup("spin", Parent(h));
    if (!cg.ok()) return {};
    auto b = (*cg)->CpuLimit();
    return b.ok() ? *b : runtime::CpuBandwidth{};
  };
  const runtime::CpuBandwidth own{150000, 100000};
  ASSERT_EQ(limit('a'), own);
  auto throttled_rounds = [](const nlohmann::json& j) {
    int n = 0;
    for (const auto& r : j["rounds"]) {
      if (r["cpu_throttle_pct"].get<int>() == 0) continue;
      ++n;
      // What the throttle left: at least the kernel's floor, at most the container's own 1.5.
      EXPECT_GE(r["cpu_quota_pct"].get<double>(), 5) << r;
      EXPECT_LE(r["cpu_quota_pct"].get<double>(), 150) << r;
    }
    return n;
  };
  CliRun r = Migrate('a', "spin", {"--strict", "--max-downtime", "1ms", "--max-rounds", "4",
                                   "--no-auto-converge", "--json"});
  ASSERT_EQ(r.code, 6) << r;
  EXPECT_EQ(throttled_rounds(nlohmann::json::parse(r.out)), 0) << r.out;
  r = Migrate('a', "spin", {"--strict", "--max-downtime", "1ms", "--max-rounds", "4", "--json"});
  ASSERT_EQ(r.code, 6) << r;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["outcome"], "rolled back");
  ASSERT_GE(throttled_rounds(j), 1) << j["rounds"].dump(2);
  for (const auto& round : j["rounds"]) {  // the first step
    if (round["cpu_throttle_pct"].get<int>() == 0) continue;
    EXPECT_NE(round["decision"].get<std::string>().find("throttled by 30%"), std::string::npos)
        << round;
    break;
  }
  EXPECT_EQ(limit('a'), own) << "the rolled-back container keeps a throttle";
  std::string v = VerifyDirty('a', "spin");
  EXPECT_EQ(v.rfind("OK ", 0), 0u) << v;
  r = Migrate('a', "spin", {"--max-downtime", "1ms", "--max-rounds", "4", "--json"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_GE(throttled_rounds(nlohmann::json::parse(r.out)), 1) << r.out;
  EXPECT_EQ(limit('b'), own) << "restored with the throttle instead of its own limit";
  v = VerifyDirty('b', "spin");
  EXPECT_EQ(v.rfind("OK ", 0), 0u) << v;
}

// An operator stopping a migration (SIGTERM, SIGINT: Ctrl-C) during its pre-copy rounds: the
// stream is cut, the migration rolls back and exits 128 + the signal, the container runs here
// as before (every page intact) and nothing of it is left at the destination (TearDown checks
// both hosts' staging). Before, the signal killed the command where it stood.
TEST_F(MigrateTest, SignalDuringPreCopyRollsBack) {
  StartDaemon('b');
  RunDirty("sig", 22, "256M", {"64", "20", "10", "/dev/shm"});
  if (HasFatalFailure()) return;
  for (int sig : {SIGTERM, SIGINT}) {
    std::string err = StrFormat("%s/migrate-%d.err", work_.path().c_str(), sig);
    std::string rep = StrFormat("%s/migrate-%d.json", work_.path().c_str(), sig);
    std::vector<std::string> args = {GODWIT_BIN, "--root", Root('a'), "--cgroup-parent",
                                     Parent('a'), "migrate", "sig", "--to", Addr('b') + ":7070",
                                     "--max-downtime", "1ms", "--max-rounds", "50", "--strict",
                                     "--report", rep};
    auto tls = Tls("host-a");
    args.insert(args.end(), tls.begin(), tls.end());
    Proc m(args, hosts_.Fd(HostNs('a')), "/dev/null", err);
    ASSERT_TRUE(WaitForText(err, "round 1:", 60000)) << *fs::ReadFile(err);
    EXPECT_EQ(m.Stop(sig), 128 + sig) << *fs::ReadFile(err);
    auto j = nlohmann::json::parse(*fs::ReadFile(rep));
    EXPECT_EQ(j["outcome"], "rolled back") << j.dump(2);
    EXPECT_NE(j["reason"].get<std::string>().find(std::string("interrupted (SIG") +
                                                   sigabbrev_np(sig) + ")"),
              std::string::npos)
        << j["reason"];
    EXPECT_NE(fs::ReadFile(err)->find("the container still runs here"), std::string::npos)
        << *fs::ReadFile(err);
    CliRun st = Gw('a', {"state", "sig"});
    EXPECT_NE(st.out.find("running"), std::string::npos) << st;
    EXPECT_FALSE(Exists('b', "sig"));
  }
  std::string v = VerifyDirty('a', "sig");
  EXPECT_EQ(v.rfind("OK ", 0), 0u) << v;
  // The daemon took the cut streams as aborted migrations and still serves.
  CliRun r = Migrate('a', "sig", {"--max-downtime", "1ms", "--max-rounds", "2"});
  ASSERT_EQ(r.code, 0) << r;
  EXPECT_TRUE(Exists('b', "sig"));
}

// A TCP connection inside the container, over its loopback (both ends restored there): the
// environment made ahead locks the namespace whole but for loopback, so the restore locks this
// connection in that table (files::FdRestoreOptions::netns_locked) until the commit. Its byte
// stream (a counter echoed back) carries on without a gap or a reconnect, there and back.
TEST_F(MigrateTest, ALoopbackConnectionInsideTheContainerCarriesOn) {
  StartDaemon('a', {"--log-level", "debug"});
  StartDaemon('b', {"--log-level", "debug"});
  RunCounter("lo", 20,
             "nc -ll -p 7001 -e cat & "
             "(j=0; while true; do j=$((j+1)); echo $j; usleep 20000; done) | "
             "(until nc 127.0.0.1 7001; do usleep 20000; done) > /dev/shm/lo & ");
  // The echoed counter: 1, 2, ... N with no gap (else minus where it broke).
  auto lo = [&](char h) -> int {
    CliRun r = Gw(h, {"exec", "lo", "--", "cat", "/dev/shm/lo"});
    if (r.code != 0) return -1;
    int n = 0;
    for (const auto& line : fs::Split(r.out, '\n')) {
      if (line.empty()) continue;
      if (atoi(line.c_str()) != n + 1) return -2 - n;
      n++;
    }
    return n;
  };
  auto wait_lo = [&](char h, int above) {  // bounded: the counter ticks every 20 ms
    int c = -1;
    for (int i = 0; i < 500 && (c = lo(h)) <= above && c >= 0; ++i) {
    }
    return c;
  };
  ASSERT_GT(wait_lo('a', 2), 2);
  char at = 'a';
  for (int i = 0; i < 2; ++i) {
    char to = at == 'a' ? 'b' : 'a';
    int before = lo(at);
    ASSERT_GT(before, 0);
    std::string rep = work_.path() + StrFormat("/lo-%d.json", i);
    CliRun r = Migrate(at, "lo", {"--report", rep});
    ASSERT_EQ(r.code, 0) << "migration " << i << ": " << r;
    auto j = nlohmann::json::parse(*fs::ReadFile(rep));
    EXPECT_GT(j["restore_phases"].value("restore.ahead_ms", 0.0), 0.0) << j["restore_phases"];
    int after = wait_lo(to, before + 2);
    EXPECT_GT(after, before + 2) << "migration " << i
                                 << ": the loopback stream carries on (negative: a gap)";
    at = to;
  }
  CliRun st = Gw(at, {"state", "lo"});
  auto sj = nlohmann::json::parse(st.out, nullptr, false);
  ASSERT_FALSE(sj.is_discarded()) << st;
  auto tables =
      container::testing::Sh(StrFormat("nsenter -t %d -n nft list tables", sj.value("pid", 0)));
  ASSERT_OK(tables);
  EXPECT_EQ(tables->find("godwit_"), std::string::npos) << *tables;
  // The restores locked the connection's two ends in the environment's table (their debug
  // lines reach the daemons' logs with the session's end: at least the first one's is there).
  std::string logs = StopDaemons();
  EXPECT_NE(logs.find("2 of 2 connection(s) over loopback"), std::string::npos)
      << logs.substr(0, 4000);
}

TEST_F(MigrateTest, StrictAbortsAboveTheTarget) {
  StartDaemon('b');
  ids_.push_back("strict");
  CliRun r = Gw('a', {"run", "--rootfs", rootfs_, "--name", "strict", "--detach", "--bridge",
                      "br0", "--ip", NetnsHosts::ContainerIp(17) + "/15", "--memory", "512M",
                      "--", "/bin/mig_dirty", "64", "20", "10", "/dev/shm"});
  ASSERT_EQ(r.code, 0) << r;
  // 20% of 64 MiB every 10 ms can never fit 1 ms.
  r = Migrate('a', "strict", {"--strict", "--max-downtime", "1ms", "--max-rounds", "3", "--json"});
  EXPECT_EQ(r.code, 6) << r;
  auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j["outcome"], "rolled back");
  EXPECT_NE(j["rounds"].back()["decision"].get<std::string>().find("--strict"), std::string::npos);
  StopDaemons();
  EXPECT_TRUE(Exists('a', "strict"));
  EXPECT_FALSE(Exists('b', "strict"));
}

}  // namespace
}  // namespace godwit::migrate
