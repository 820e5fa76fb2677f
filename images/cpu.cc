// CPU features and the inventory's machine description. A restored thread's xstate only fits a
// CPU that saves at least the same register states, so restore compares features and XCR0.
#include <cpuid.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "images/image.h"

namespace godwit::images {
namespace {

struct Feature {
  const char* name;
  unsigned leaf, subleaf;
  char reg;  // 'b', 'c', 'd'
  int bit;
};

// Names as in /proc/cpuinfo. The ones that matter to restore are those that change the register
// state (x87/SSE/AVX/AVX-512/AMX, xsave variants); the others are recorded because a program
// may have chosen code paths by them (glibc's ifuncs do).
// clang-format off
constexpr Feature kFeatures[] = {
    {"fpu", 1, 0, 'd', 0},         {"mmx", 1, 0, 'd', 23},
    {"fxsr", 1, 0, 'd', 24},       {"sse", 1, 0, 'd', 25},
    {"sse2", 1, 0, 'd', 26},       {"pni", 1, 0, 'c', 0},
    {"pclmulqdq", 1, 0, 'c', 1},   {"ssse3", 1, 0, 'c', 9},
    {"fma", 1, 0, 'c', 12},        {"cx16", 1, 0, 'c', 13},
    {"sse4_1", 1, 0, 'c', 19},     {"sse4_2", 1, 0, 'c', 20},
    {"movbe", 1, 0, 'c', 22},      {"popcnt", 1, 0, 'c', 23},
    {"aes", 1, 0, 'c', 25},        {"xsave", 1, 0, 'c', 26},
    {"osxsave", 1, 0, 'c', 27},    {"avx", 1, 0, 'c', 28},
    {"f16c", 1, 0, 'c', 29},       {"rdrand", 1, 0, 'c', 30},
    {"fsgsbase", 7, 0, 'b', 0},    {"bmi1", 7, 0, 'b', 3},
    {"avx2", 7, 0, 'b', 5},        {"bmi2", 7, 0, 'b', 8},
    {"erms", 7, 0, 'b', 9},        {"avx512f", 7, 0, 'b', 16},
    {"avx512dq", 7, 0, 'b', 17},   {"rdseed", 7, 0, 'b', 18},
    {"adx", 7, 0, 'b', 19},        {"avx512ifma", 7, 0, 'b', 21},
    {"clflushopt", 7, 0, 'b', 23}, {"clwb", 7, 0, 'b', 24},
    {"avx512cd", 7, 0, 'b', 28},   {"sha_ni", 7, 0, 'b', 29},
    {"avx512bw", 7, 0, 'b', 30},   {"avx512vl", 7, 0, 'b', 31},
    {"avx512vbmi", 7, 0, 'c', 1},  {"pku", 7, 0, 'c', 3},
    {"avx512_vbmi2", 7, 0, 'c', 6}, {"gfni", 7, 0, 'c', 8},
    {"vaes", 7, 0, 'c', 9},        {"vpclmulqdq", 7, 0, 'c', 10},
    {"avx512_vnni", 7, 0, 'c', 11}, {"avx512_bitalg", 7, 0, 'c', 12},
    {"avx512_vpopcntdq", 7, 0, 'c', 14}, {"rdpid", 7, 0, 'c', 22},
    {"avx512_4vnniw", 7, 0, 'd', 2}, {"avx512_4fmaps", 7, 0, 'd', 3},
    {"fsrm", 7, 0, 'd', 4},        {"avx512_vp2intersect", 7, 0, 'd', 8},
    {"amx_bf16", 7, 0, 'd', 22},   {"avx512_fp16", 7, 0, 'd', 23},
    {"amx_tile", 7, 0, 'd', 24},   {"amx_int8", 7, 0, 'd', 25},
    {"avx_vnni", 7, 1, 'a', 4},    {"avx512_bf16", 7, 1, 'a', 5},
    {"xsaveopt", 0xd, 1, 'a', 0},  {"xsavec", 0xd, 1, 'a', 1},
    {"xgetbv1", 0xd, 1, 'a', 2},   {"xsaves", 0xd, 1, 'a', 3},
};
// clang-format on

bool HasOsxsave() {
  unsigned a, b, c, d;
  return __get_cpuid(1, &a, &b, &c, &d) && (c & (1u << 27));
}

}  // namespace

uint64_t Xcr0() {
  if (!HasOsxsave()) return 0;
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

std::vector<std::string> CpuFeatures() {
  // Once per process, one CPUID per leaf: in a VM every CPUID is a trap to the hypervisor
  // (tens of microseconds under nested virtualization), and each image set's inventory asks.
  static const std::vector<std::string> features = [] {
    std::vector<std::string> out;
    unsigned max_leaf = __get_cpuid_max(0, nullptr);
    unsigned leaf = ~0u, subleaf = ~0u, a = 0, b = 0, c = 0, d = 0;
    for (const Feature& f : kFeatures) {  // grouped by leaf
      if (f.leaf > max_leaf) continue;
      if (f.leaf != leaf || f.subleaf != subleaf) {
        leaf = f.leaf;
        subleaf = f.subleaf;
        __cpuid_count(leaf, subleaf, a, b, c, d);
      }
      unsigned r = f.reg == 'a' ? a : f.reg == 'b' ? b : f.reg == 'c' ? c : d;
      if (r & (1u << f.bit)) out.push_back(f.name);
    }
    return out;
  }();
  return features;
}

Result<void> CheckCpuFeatures(const img::Inventory& inv) {
  std::vector<std::string> have = CpuFeatures();
  std::set<std::string> here(have.begin(), have.end());
  std::string missing;
  for (const auto& f : inv.cpu_features())
    if (!here.count(f)) missing += (missing.empty() ? "" : ", ") + f;
  uint64_t xcr0 = Xcr0();
  uint64_t lacking = inv.xcr0() & ~xcr0;
  if (missing.empty() && lacking == 0) return Ok();
  std::string msg = "this CPU lacks features the checkpoint was made with";
  if (!missing.empty()) msg += ": " + missing;
  if (lacking)
    msg += StrFormat("%sxsave states 0x%llx (image xcr0 0x%llx, here 0x%llx)",
                     missing.empty() ? ": " : "; ", static_cast<unsigned long long>(lacking),
                     static_cast<unsigned long long>(inv.xcr0()),
                     static_cast<unsigned long long>(xcr0));
  return MakeError(ErrorKind::kUnsupported, 0, "%s", msg.c_str());
}

img::Inventory NewInventory() {
  img::Inventory inv;
  inv.set_format_version(kFormatVersion);
  inv.set_godwit_version(GODWIT_VERSION);
  struct utsname u;
  if (uname(&u) == 0) {
    inv.set_kernel_release(u.release);
    inv.set_machine(u.machine);
    inv.set_hostname(u.nodename);
  }
  for (auto& f : CpuFeatures()) inv.add_cpu_features(f);
  inv.set_xcr0(Xcr0());
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  inv.set_created_unix_ns(static_cast<uint64_t>(ts.tv_sec) * 1000000000ull + ts.tv_nsec);
  return inv;
}

}  // namespace godwit::images
