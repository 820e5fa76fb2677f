// `godwit check [--force] [--json]`: which kernel features this machine offers and which godwit
// needs, like `criu check`. The probe result is cached in ROOT/kernel-features.json, keyed by the
// boot id (so a reboot into another kernel probes again); --force probes anyway.
#include <cpuid.h>
#include <fcntl.h>
#include <linux/sched.h>
#include <linux/userfaultfd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>

#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/args.h"
#include "common/fs.h"

namespace godwit::cli {
namespace {

struct Feature {
  const char* name;
  bool required;
  const char* what;
  bool (*probe)(std::string* detail);
};

bool ProbeClone3SetTid(std::string* d) {
  // Pick a pid well above the last one handed out; retry on EEXIST.
  auto last = fs::ReadFile("/proc/sys/kernel/ns_last_pid");
  int base = last.ok() ? atoi(last->c_str()) + 5000 : 30000;
  for (int i = 0; i < 20; ++i) {
    struct clone_args a;
    memset(&a, 0, sizeof(a));
    a.exit_signal = SIGCHLD;
    int64_t want = base + i * 7;
    a.set_tid = reinterpret_cast<uint64_t>(&want);
    a.set_tid_size = 1;
    long p = syscall(SYS_clone3, &a, sizeof(a));
    if (p == 0) _exit(0);
    if (p < 0) {
      if (errno == EEXIST) continue;
      *d = strerror(errno);
      return false;
    }
    waitpid(p, nullptr, 0);
    return p == want;
  }
  *d = "no free pid found";
  return false;
}

bool ProbeRseqConfig(std::string* d) {
  pid_t c = fork();
  if (c == 0) {
    for (;;) pause();
  }
  bool ok = false;
  if (ptrace(PTRACE_SEIZE, c, nullptr, nullptr) == 0 && ptrace(PTRACE_INTERRUPT, c, nullptr, nullptr) == 0) {
    int st;
    waitpid(c, &st, __WALL);
    struct {
      uint64_t p;
      uint32_t s, sig, f, pad;
    } rc{};
    ok = ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), c,
                reinterpret_cast<void*>(sizeof(rc)), &rc) > 0;
    if (!ok) *d = strerror(errno);
  } else {
    *d = strerror(errno);
  }
  kill(c, SIGKILL);
  waitpid(c, nullptr, __WALL);
  return ok;
}

bool ProbeUffdWpAsync(std::string* d) {
  int fd = syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) {
    *d = strerror(errno);
    return false;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = (1ULL << 15) /* UFFD_FEATURE_WP_ASYNC */;
  bool ok = ioctl(fd, UFFDIO_API, &api) == 0;
  if (!ok) *d = strerror(errno);
  close(fd);
  return ok;
}

bool ProbePagemapScan(std::string* d) {
  struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
        category_mask, category_anyof_mask, return_mask;
  } a{};
  struct {
    uint64_t start, end, categories;
  } vec[4];
  char* p = static_cast<char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  p[0] = 1;
  a.size = sizeof(a);
  a.start = reinterpret_cast<uint64_t>(p);
  a.end = a.start + 4096;
  a.vec = reinterpret_cast<uint64_t>(vec);
  a.vec_len = 4;
  a.category_anyof_mask = 1 << 3;  // PAGE_IS_PRESENT
  a.return_mask = 1 << 3;
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  long n = ioctl(fd, _IOWR('f', 16, struct pm_scan_arg), &a);
  if (n < 0) *d = strerror(errno);
  close(fd);
  munmap(p, 4096);
  return n == 1;
}

bool ProbeSoftDirty(std::string* d) {
  char* p = static_cast<char*>(mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
  p[0] = 1;
  auto w = fs::WriteFile("/proc/self/clear_refs", "4");
  p[0] = 2;
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t e = 0;
  pread(fd, &e, 8, reinterpret_cast<uint64_t>(p) / 4096 * 8);
  close(fd);
  munmap(p, 4096);
  if (!w.ok()) *d = w.error().to_string();
  else if (!(e & (1ULL << 55))) *d = "bit 55 stays 0 (CONFIG_MEM_SOFT_DIRTY off); godwit uses userfaultfd WP instead";
  return w.ok() && (e & (1ULL << 55));
}

bool ProbePidfdGetfd(std::string* d) {
  int pfd = syscall(SYS_pidfd_open, getpid(), 0);
  if (pfd < 0) {
    *d = strerror(errno);
    return false;
  }
  int fd = syscall(SYS_pidfd_getfd, pfd, 0, 0);
  if (fd < 0) *d = strerror(errno);
  else close(fd);
  close(pfd);
  return fd >= 0;
}

bool ProbeTcpRepair(std::string* d) {
  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  bool ok = setsockopt(s, IPPROTO_TCP, 19 /* TCP_REPAIR */, &one, sizeof(one)) == 0;
  if (!ok) *d = strerror(errno);
  close(s);
  return ok;
}

bool ProbePrSetMmMap(std::string* d) {
  // PR_SET_MM_MAP_SIZE answers whether the PR_SET_MM_MAP interface exists (CONFIG_CHECKPOINT_RESTORE).
  unsigned int size = 0;
  bool ok = syscall(SYS_prctl, 35 /*PR_SET_MM*/, 15 /*PR_SET_MM_MAP_SIZE*/, &size, 0, 0) == 0;
  if (!ok) *d = strerror(errno);
  else *d = StrFormat("struct prctl_mm_map is %u bytes", size);
  return ok;
}

bool ProbeMapFiles(std::string* d) {
  bool ok = fs::Exists("/proc/self/map_files");
  if (!ok) *d = "/proc/self/map_files missing";
  return ok;
}

const Feature kFeatures[] = {
    {"clone3_set_tid", true, "restore pids and tids (clone3 set_tid)", ProbeClone3SetTid},
    {"ptrace_rseq_config", true, "dump rseq registrations (PTRACE_GET_RSEQ_CONFIGURATION)", ProbeRseqConfig},
    {"pr_set_mm_map", true, "restore mm fields (PR_SET_MM_MAP)", ProbePrSetMmMap},
    {"map_files", true, "shared memory contents (/proc/PID/map_files)", ProbeMapFiles},
    {"pidfd_getfd", true, "take fds out of a frozen process", ProbePidfdGetfd},
    {"uffd_wp_async", false, "pre-dump dirty tracking (userfaultfd WP_ASYNC)", ProbeUffdWpAsync},
    {"pagemap_scan", false, "pre-dump dirty tracking (PAGEMAP_SCAN)", ProbePagemapScan},
    {"soft_dirty", false, "CRIU-style dirty tracking (not needed by godwit)", ProbeSoftDirty},
    {"tcp_repair", false, "established TCP connections (TCP_REPAIR)", ProbeTcpRepair},
};

// Bump when a probe changes, so old cached answers are not trusted.
constexpr int kProbeVersion = 3;

int CheckCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{}, {"force"}, {}};
  auto pa = ParseArgs(args, spec);
  if (!pa.ok()) return ReportError(g, "check", pa.error());
  auto boot_r = fs::ReadFile("/proc/sys/kernel/random/boot_id");
  std::string boot = boot_r.ok() ? fs::Trim(*boot_r) : "";
  std::string cache = g.root + "/kernel-features.json";
  nlohmann::json out;
  bool cached = false;
  if (!pa->has("force")) {
    auto c = fs::ReadFile(cache);
    if (c.ok()) {
      auto j = nlohmann::json::parse(*c, nullptr, false);
      if (!j.is_discarded() && j.value("boot_id", "") == boot &&
          j.value("probe_version", 0) == kProbeVersion) {
        out = j;
        cached = true;
      }
    }
  }
  if (!cached) {
    out["boot_id"] = boot;
    out["probe_version"] = kProbeVersion;
    nlohmann::json feats = nlohmann::json::array();
    for (const auto& f : kFeatures) {
      std::string detail;
      bool ok = f.probe(&detail);
      feats.push_back({{"name", f.name}, {"ok", ok}, {"required", f.required}, {"what", f.what},
                       {"detail", detail}});
    }
    unsigned a, b, c, d;
    uint32_t xsave = 0;
    if (__get_cpuid_count(0xd, 0, &a, &b, &c, &d)) xsave = b;
    out["xsave_size"] = xsave;
    out["features"] = feats;
    if (fs::MkdirAll(g.root).ok()) (void)fs::WriteFile(cache, out.dump(), true);
  }
  out["cached"] = cached;
  bool all_required = true;
  for (const auto& f : out["features"])
    if (f["required"].get<bool>() && !f["ok"].get<bool>()) all_required = false;
  out["ok"] = all_required;
  if (g.json) {
    printf("%s\n", out.dump().c_str());
  } else {
    for (const auto& f : out["features"]) {
      printf("%-20s %-4s %s%s%s\n", f["name"].get<std::string>().c_str(),
             f["ok"].get<bool>() ? "yes" : "NO", f["what"].get<std::string>().c_str(),
             f["detail"].get<std::string>().empty() ? "" : ": ",
             f["detail"].get<std::string>().c_str());
    }
    printf("xsave area: %u bytes\n", out["xsave_size"].get<uint32_t>());
    printf("%s%s\n", all_required ? "godwit can checkpoint and restore on this kernel"
                                  : "MISSING features godwit needs",
           cached ? " (cached; --force to probe again)" : "");
  }
  return all_required ? 0 : static_cast<int>(ErrorKind::kUnsupported);
}

}  // namespace

GODWIT_COMMAND(check, "check", "check [--force] [--json]",
               "which kernel features godwit needs and this machine offers", CheckCmd);

}  // namespace godwit::cli
