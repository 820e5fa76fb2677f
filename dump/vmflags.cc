// /proc/PID/smaps' VmFlags lines (dump/vmflags.h).
#include "dump/vmflags.h"

#include <sys/mman.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/fs.h"

namespace godwit::dump {

namespace {

VmFlags ParseVmFlags(const char* s) {
  VmFlags f;
  struct Bool {
    const char* name;
    bool VmFlags::*field;
  };
  static const Bool kBools[] = {{"gd", &VmFlags::growsdown}, {"nr", &VmFlags::noreserve},
                                {"lo", &VmFlags::locked},    {"lf", &VmFlags::onfault},
                                {"sl", &VmFlags::sealed},    {"dp", &VmFlags::droppable},
                                {"mw", &VmFlags::maywrite},  {"ht", &VmFlags::hugetlb},
                                {"um", &VmFlags::uffd_missing}};
  static const std::pair<const char*, int> kAdvice[] = {
      {"rr", MADV_RANDOM},    {"sr", MADV_SEQUENTIAL}, {"dc", MADV_DONTFORK},
      {"mg", MADV_MERGEABLE}, {"hg", MADV_HUGEPAGE},   {"nh", MADV_NOHUGEPAGE},
      {"dd", MADV_DONTDUMP},  {"wf", MADV_WIPEONFORK}};
  for (const char* p = s; *p;) {
    while (*p == ' ' || *p == '\n') ++p;
    const char* e = p;
    while (*e && *e != ' ' && *e != '\n') ++e;
    std::string_view tok(p, e - p);
    for (const auto& b : kBools)
      if (tok == b.name) f.*b.field = true;
    for (const auto& [name, advice] : kAdvice)
      if (tok == name) f.madv |= 1ULL << advice;
    p = e;
  }
  return f;
}

}  // namespace

// VmFlags of every VMA by start address. smaps is the only interface that shows them
// (PROCMAP_QUERY reports r/w/x/shared only); reading it costs a page-table walk per VMA, which the
// flags are worth (mlock, madvise and growsdown state is otherwise lost).
Result<std::map<uint64_t, VmFlags>> ReadVmFlags(pid_t pid) {
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(StrFormat("/proc/%d/smaps", pid)));
  std::map<uint64_t, VmFlags> out;
  uint64_t cur = 0, kernel_page_kb = 0;
  bool have = false;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t eol = text.find('\n', pos);
    if (eol == std::string::npos) eol = text.size();
    const char* line = text.c_str() + pos;
    if (text.compare(pos, 15, "KernelPageSize:") == 0) {
      kernel_page_kb = strtoull(line + 15, nullptr, 10);
    } else if (text.compare(pos, 8, "VmFlags:") == 0) {
      if (have) {
        VmFlags f = ParseVmFlags(std::string(line + 8, eol - pos - 8).c_str());
        f.kernel_page_kb = kernel_page_kb;
        out[cur] = f;
      }
    } else if (isxdigit(static_cast<unsigned char>(line[0]))) {
      // A VMA header "start-end perms ..." (field lines start with a capital letter name).
      char* end = nullptr;
      unsigned long long s = strtoull(line, &end, 16);
      if (end && *end == '-') {
        cur = s;
        have = true;
      }
    }
    pos = eol + 1;
  }
  return out;
}

}  // namespace godwit::dump
