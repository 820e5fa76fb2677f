// /proc/PID/smaps' VmFlags lines (dump/vmflags.h).
#include "dump/vmflags.h"

#include <sys/mman.h>

#include <cctype>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/fs.h"
#include "common/log.h"

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

std::optional<VmFlagsSnapshot> TakeVmFlagsSnapshot(pid_t pid) {
  const VmaIter* it = VmaIter::Shared();
  if (it == nullptr) return std::nullopt;
  auto before = it->Read(pid);
  if (!before.ok()) {
    LOG_DEBUG("pid %d: %s", pid, before.error().to_string().c_str());
    return std::nullopt;
  }
  auto flags = ReadVmFlags(pid);
  if (!flags.ok()) return std::nullopt;
  auto after = it->Read(pid);
  // smaps shows the vsyscall gate (a kernel address) too: it is no VMA of the process.
  size_t listed = 0;
  for (const auto& [start, f] : *flags) listed += start < (1ULL << 63) ? 1 : 0;
  if (!after.ok() || *after != *before || listed != before->size()) {
    LOG_DEBUG("pid %d: its VMAs changed while smaps was read (%zu VMAs, %zu in smaps)", pid,
              before->size(), listed);
    return std::nullopt;
  }
  for (const auto& v : *before) {
    auto f = flags->find(v.start);
    if (f == flags->end()) return std::nullopt;
    if (((v.flags & kVmLocked) != 0) != f->second.locked ||
        ((v.flags & kVmLockOnFault) != 0) != f->second.onfault) {
      LOG_DEBUG("pid %d: VMA %#lx: raw lock bits %#lx disagree with smaps: not reused", pid,
                static_cast<unsigned long>(v.start), static_cast<unsigned long>(v.flags));
      return std::nullopt;
    }
  }
  return VmFlagsSnapshot{std::move(*before), std::move(*flags)};
}

std::optional<std::map<uint64_t, VmFlags>> ReuseVmFlags(pid_t pid, const VmFlagsSnapshot& snap,
                                                        uint64_t skip_start, uint64_t skip_end) {
  const VmaIter* it = VmaIter::Shared();
  if (it == nullptr) return std::nullopt;
  auto now = it->Read(pid);
  if (!now.ok()) return std::nullopt;
  std::map<uint64_t, VmFlags> out = snap.flags;
  size_t j = 0;
  for (const auto& v : *now) {
    if (v.start < skip_end && v.end > skip_start) {
      if (v.start != skip_start || v.end != skip_end) return std::nullopt;  // merged: smaps
      VmFlags f;
      f.locked = (v.flags & kVmLocked) != 0;
      f.onfault = (v.flags & kVmLockOnFault) != 0;
      out[v.start] = f;
      continue;
    }
    if (j >= snap.raw.size() || !(snap.raw[j] == v)) {
      LOG_DEBUG("pid %d: VMA %#lx-%#lx (flags %#lx) changed since the last round: smaps read",
                pid, static_cast<unsigned long>(v.start), static_cast<unsigned long>(v.end),
                static_cast<unsigned long>(v.flags));
      return std::nullopt;
    }
    ++j;
  }
  if (j != snap.raw.size()) return std::nullopt;
  LOG_DEBUG("pid %d: VMA flags unchanged since the last round: smaps not read", pid);
  return out;
}

}  // namespace godwit::dump
