#include "common/kernel_features.h"

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
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>

#include "common/clone3.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/pagemap_scan.h"
#include "common/pidfd.h"
#include "common/unique_fd.h"

namespace godwit {
namespace {

// Each probe returns whether the feature works; *d says why not (or what it found).

bool ProbeClone3SetTid(std::string* d) {
  // Pick a pid well above the last one handed out; retry on EEXIST.
  auto last = fs::ReadFile("/proc/sys/kernel/ns_last_pid");
  auto maxr = fs::ReadFile("/proc/sys/kernel/pid_max");
  int pid_max = maxr.ok() ? atoi(maxr->c_str()) : 32768;
  int base = last.ok() ? atoi(last->c_str()) + 1000 : 1000;
  for (int i = 0; i < 20; ++i) {
    pid_t want = 300 + (base + i * 7 - 300) % (pid_max - 300);
    pid_t p = Clone3WithPids(0, &want, 1);
    if (p == 0) _exit(0);
    if (p < 0) {
      if (errno == EEXIST) continue;
      *d = strerror(errno);
      return false;
    }
    while (waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
    }
    return p == want;
  }
  *d = "no free pid found";
  return false;
}

bool ProbeRseqConfig(std::string* d) {
  pid_t c = fork();
  if (c < 0) {
    *d = strerror(errno);
    return false;
  }
  if (c == 0) {
    for (;;) pause();
  }
  bool ok = false;
  if (ptrace(PTRACE_SEIZE, c, nullptr, nullptr) == 0 &&
      ptrace(PTRACE_INTERRUPT, c, nullptr, nullptr) == 0) {
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
  while (waitpid(c, nullptr, __WALL) < 0 && errno == EINTR) {
  }
  return ok;
}

bool ProbeUffdWpAsync(std::string* d) {
  UniqueFd fd(static_cast<int>(syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK)));
  if (!fd) {
    *d = strerror(errno);
    return false;
  }
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = pagemap::kUffdFeatureWpAsync;
  bool ok = ioctl(fd.get(), UFFDIO_API, &api) == 0;
  if (!ok) *d = strerror(errno);
  return ok;
}

bool ProbePagemapScan(std::string* d) {
  pagemap::PmScanArg a{};
  pagemap::PageRegion vec[4];
  void* m = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    *d = strerror(errno);
    return false;
  }
  char* p = static_cast<char*>(m);
  p[0] = 1;
  a.size = sizeof(a);
  a.start = reinterpret_cast<uint64_t>(p);
  a.end = a.start + kPage;
  a.vec = reinterpret_cast<uint64_t>(vec);
  a.vec_len = 4;
  a.category_anyof_mask = pagemap::kPageIsPresent;
  a.return_mask = pagemap::kPageIsPresent;
  UniqueFd fd(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  long n = fd ? ioctl(fd.get(), pagemap::kPagemapScan, &a) : -1;
  if (n < 0) *d = strerror(errno);
  munmap(p, kPage);
  return n == 1;
}

bool ProbeSoftDirty(std::string* d) {
  void* m = mmap(nullptr, kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) {
    *d = strerror(errno);
    return false;
  }
  volatile char* p = static_cast<char*>(m);
  p[0] = 1;
  auto w = fs::WriteFile("/proc/self/clear_refs", "4");
  p[0] = 2;
  uint64_t e = 0;
  UniqueFd fd(open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (fd) (void)!pread(fd.get(), &e, 8, reinterpret_cast<uint64_t>(m) / kPage * 8);
  munmap(m, kPage);
  if (!w.ok())
    *d = w.error().to_string();
  else if (!(e & (1ULL << 55)))
    *d = "bit 55 stays 0 (CONFIG_MEM_SOFT_DIRTY off); godwit uses userfaultfd WP instead";
  return w.ok() && (e & (1ULL << 55));
}

bool ProbePidfdGetfd(std::string* d) {
  auto fd = pidfd::TakeFd(getpid(), 0);
  if (!fd.ok()) *d = fd.error().to_string();
  return fd.ok();
}

bool ProbeTcpRepair(std::string* d) {
  UniqueFd s(socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!s) {
    *d = strerror(errno);
    return false;
  }
  int one = 1;
  bool ok = setsockopt(s.get(), IPPROTO_TCP, TCP_REPAIR, &one, sizeof(one)) == 0;
  if (!ok) *d = strerror(errno);
  return ok;
}

bool ProbePrSetMmMap(std::string* d) {
  // PR_SET_MM_MAP_SIZE answers whether the PR_SET_MM_MAP interface exists
  // (CONFIG_CHECKPOINT_RESTORE).
  unsigned int size = 0;
  bool ok = syscall(SYS_prctl, 35 /*PR_SET_MM*/, 15 /*PR_SET_MM_MAP_SIZE*/, &size, 0, 0) == 0;
  if (!ok)
    *d = strerror(errno);
  else
    *d = StrFormat("struct prctl_mm_map is %u bytes", size);
  return ok;
}

bool ProbeMapFiles(std::string* d) {
  bool ok = fs::Exists("/proc/self/map_files");
  if (!ok) *d = "/proc/self/map_files missing";
  return ok;
}

struct Probe {
  const char* name;
  bool (*fn)(std::string* detail);
};

const Probe kProbes[] = {
    {"clone3_set_tid", ProbeClone3SetTid}, {"ptrace_rseq_config", ProbeRseqConfig},
    {"pr_set_mm_map", ProbePrSetMmMap},    {"map_files", ProbeMapFiles},
    {"pidfd_getfd", ProbePidfdGetfd},      {"uffd_wp_async", ProbeUffdWpAsync},
    {"pagemap_scan", ProbePagemapScan},    {"soft_dirty", ProbeSoftDirty},
    {"tcp_repair", ProbeTcpRepair},
};

std::string KernelRelease() {
  struct utsname u;
  return uname(&u) == 0 ? u.release : "";
}

std::string BootId() {
  auto b = fs::ReadFile("/proc/sys/kernel/random/boot_id");
  return b.ok() ? fs::Trim(*b) : "";
}

}  // namespace

const std::vector<KernelFeatureInfo>& KernelFeatureList() {
  static const std::vector<KernelFeatureInfo> list = {
      {"clone3_set_tid", true, "restore pids and tids (clone3 set_tid)",
       &KernelFeatures::clone3_set_tid},
      {"ptrace_rseq_config", true, "dump rseq registrations (PTRACE_GET_RSEQ_CONFIGURATION)",
       &KernelFeatures::ptrace_rseq_config},
      {"pr_set_mm_map", true, "restore mm fields (PR_SET_MM_MAP)", &KernelFeatures::pr_set_mm_map},
      {"map_files", true, "shared memory contents (/proc/PID/map_files)",
       &KernelFeatures::map_files},
      {"pidfd_getfd", true, "take fds out of a frozen process", &KernelFeatures::pidfd_getfd},
      {"uffd_wp_async", false, "pre-dump dirty tracking (userfaultfd WP_ASYNC)",
       &KernelFeatures::uffd_wp_async},
      {"pagemap_scan", false, "pre-dump dirty tracking (PAGEMAP_SCAN)",
       &KernelFeatures::pagemap_scan},
      {"soft_dirty", false, "CRIU-style dirty tracking (not needed by godwit)",
       &KernelFeatures::soft_dirty},
      {"tcp_repair", false, "established TCP connections (TCP_REPAIR)",
       &KernelFeatures::tcp_repair},
  };
  return list;
}

Result<KernelFeatures> ProbeKernelFeatures() {
  KernelFeatures f;
  f.kernel_release = KernelRelease();
  f.boot_id = BootId();
  for (const auto& info : KernelFeatureList()) {
    for (const auto& p : kProbes) {
      if (strcmp(p.name, info.name) != 0) continue;
      std::string detail;
      f.*info.field = p.fn(&detail);
      if (!detail.empty()) f.details[info.name] = detail;
    }
  }
  unsigned a, b, c, d;
  if (__get_cpuid_count(0xd, 0, &a, &b, &c, &d)) f.xsave_size = b;
  return f;
}

Result<KernelFeatures> CachedKernelFeatures(const std::string& path, bool force) {
  if (!force) {
    if (auto text = fs::ReadFile(path); text.ok()) {
      auto j = nlohmann::json::parse(*text, nullptr, false);
      if (!j.is_discarded()) {
        auto f = KernelFeaturesFromJson(j);
        if (f.ok() && f->probe_version == kKernelProbeVersion &&
            f->kernel_release == KernelRelease() && f->boot_id == BootId()) {
          f->cached = true;
          return f;
        }
      }
    }
  }
  ASSIGN_OR_RETURN(KernelFeatures f, ProbeKernelFeatures());
  std::string dir = path.substr(0, path.rfind('/') == std::string::npos ? 0 : path.rfind('/'));
  Result<void> saved = dir.empty() ? Ok() : fs::MkdirAll(dir);
  if (saved.ok()) saved = fs::WriteFile(path, KernelFeaturesToJson(f).dump(), true);
  if (!saved.ok())
    LOG_WARN("kernel features not cached: %s", saved.error().to_string().c_str());
  return f;
}

KernelFeatures RequiredKernelFeatures() {
  KernelFeatures f;
  for (const auto& info : KernelFeatureList())
    if (info.required) f.*info.field = true;
  return f;
}

std::vector<std::string> Compare(const KernelFeatures& needed, const KernelFeatures& have) {
  std::vector<std::string> missing;
  for (const auto& info : KernelFeatureList())
    if (needed.*info.field && !(have.*info.field)) missing.push_back(info.name);
  if (needed.xsave_size > have.xsave_size) missing.push_back("xsave_size");
  return missing;
}

nlohmann::json KernelFeaturesToJson(const KernelFeatures& f) {
  nlohmann::json feats = nlohmann::json::array();
  for (const auto& info : KernelFeatureList()) {
    auto d = f.details.find(info.name);
    feats.push_back({{"name", info.name},
                     {"ok", f.*info.field},
                     {"required", info.required},
                     {"what", info.what},
                     {"detail", d == f.details.end() ? "" : d->second}});
  }
  return {{"probe_version", f.probe_version}, {"kernel_release", f.kernel_release},
          {"boot_id", f.boot_id},             {"xsave_size", f.xsave_size},
          {"features", feats}};
}

Result<KernelFeatures> KernelFeaturesFromJson(const nlohmann::json& j) {
  auto bad = [](const char* what) {
    return MakeError(ErrorKind::kBadConfig, 0, "kernel features: %s", what);
  };
  if (!j.is_object()) return bad("not an object");
  KernelFeatures f;
  if (!j.contains("probe_version") || !j["probe_version"].is_number_integer())
    return bad("no probe_version");
  f.probe_version = j["probe_version"].get<int>();
  if (j.contains("kernel_release") && j["kernel_release"].is_string())
    f.kernel_release = j["kernel_release"].get<std::string>();
  if (j.contains("boot_id") && j["boot_id"].is_string())
    f.boot_id = j["boot_id"].get<std::string>();
  if (j.contains("xsave_size") && j["xsave_size"].is_number_unsigned())
    f.xsave_size = j["xsave_size"].get<uint32_t>();
  if (!j.contains("features") || !j["features"].is_array()) return bad("no features");
  for (const auto& e : j["features"]) {
    if (!e.is_object() || !e.contains("name") || !e["name"].is_string() || !e.contains("ok") ||
        !e["ok"].is_boolean())
      return bad("a feature without name or ok");
    std::string name = e["name"].get<std::string>();
    for (const auto& info : KernelFeatureList()) {
      if (name != info.name) continue;
      f.*info.field = e["ok"].get<bool>();
      if (e.contains("detail") && e["detail"].is_string() &&
          !e["detail"].get<std::string>().empty())
        f.details[name] = e["detail"].get<std::string>();
    }
  }
  return f;
}

}  // namespace godwit
