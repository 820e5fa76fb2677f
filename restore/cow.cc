#include "restore/cow.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <string>

#include "common/log.h"
#include "common/page.h"
#include "common/unique_fd.h"

namespace godwit::restore {
namespace {

// A private VMA the coordinator can map again by itself: anonymous, or of a file still at its path.
bool Premappable(const img::Vma& v) {
  if (v.end() <= v.start() || v.huge_page_shift() != 0 || v.droppable()) return false;
  if (v.flags() & MAP_GROWSDOWN) return false;
  if (v.kind() == img::VMA_ANON_PRIVATE) return true;
  return v.kind() == img::VMA_FILE_PRIVATE && !v.deleted() && !v.path().empty() &&
         v.path()[0] == '/';
}

bool SameMapping(const img::Vma& a, const img::Vma& b) {
  if (a.start() != b.start() || a.end() != b.end() || a.kind() != b.kind()) return false;
  const uint32_t mapped = MAP_GROWSDOWN | MAP_NORESERVE;  // what mmap fixes (advice comes later)
  if ((a.flags() & mapped) != (b.flags() & mapped)) return false;
  if (a.kind() == img::VMA_FILE_PRIVATE)
    return a.path() == b.path() && a.inode() == b.inode() && a.dev() == b.dev() &&
           a.pgoff() == b.pgoff();
  return true;
}

bool HasRunIn(const img::PageMap& pm, uint64_t s, uint64_t e) {
  for (const auto& run : pm.runs())
    if (run.vaddr() < e && run.vaddr() + run.npages() * kPage > s) return true;
  return false;
}

// Maps v at its own range in the coordinator (read-write, private); false if the range is taken
// here or the file is not the dumped one.
bool MapHere(const img::Vma& v) {
  const uint64_t len = v.end() - v.start();
  void* want = reinterpret_cast<void*>(v.start());
  void* got;
  if (v.kind() == img::VMA_ANON_PRIVATE) {
    got = mmap(want, len, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE | (v.flags() & MAP_NORESERVE), -1,
               0);
  } else {
    UniqueFd fd(open(v.path().c_str(), O_RDONLY | O_CLOEXEC));
    struct stat st {};
    if (!fd || fstat(fd.get(), &st) < 0 || st.st_ino != v.inode()) return false;
    got = mmap(want, len, PROT_READ | PROT_WRITE,
               MAP_PRIVATE | MAP_FIXED_NOREPLACE | (v.flags() & MAP_NORESERVE), fd.get(),
               static_cast<off_t>(v.pgoff()));
  }
  if (got == MAP_FAILED) return false;
  if (got != want) {  // an old kernel without MAP_FIXED_NOREPLACE placed it elsewhere
    munmap(got, len);
    return false;
  }
  return true;
}

}  // namespace

Result<void> PremapInherited(RestoreContext& ctx) {
  if (!ctx.opts.fill.inherit_cow || ctx.lazy || ctx.inner_level > 0 || ctx.opts.root_inside ||
      ctx.opts.root_clone_flags != 0 || ctx.opts.userns_fd >= 0)
    return Ok();
  for (const auto& p : ctx.procs)
    if (p->pagemaps.size() > 1) return Ok();  // pre-copied: the rounds' pages are layered
  // Each process's VMAs by start, and its live children.
  std::map<pid_t, std::map<uint64_t, const img::Vma*>> by_start;
  std::map<pid_t, std::vector<const ProcessRestore*>> children;
  for (const auto& p : ctx.procs) {
    for (const auto& v : p->mm.vmas()) by_start[p->pid][v.start()] = &v;
    children[p->entry->ppid()].push_back(p.get());
  }
  std::vector<RestoreContext::CowRange> chosen;
  auto overlaps = [&](uint64_t s, uint64_t e) {
    for (const auto& c : chosen)
      if (c.start < e && s < c.end) return true;
    return false;
  };
  // Tree order: a parent before its children, so a range is owned by the highest process that
  // shares it.
  for (const auto& p : ctx.procs) {
    auto kids = children.find(p->entry->pid());
    if (kids == children.end() || p->pagemaps.empty()) continue;
    for (const auto& v : p->mm.vmas()) {
      if (!Premappable(v) || overlaps(v.start(), v.end())) continue;
      if (!HasRunIn(p->pagemaps[0], v.start(), v.end())) continue;
      bool shared = false;
      for (const ProcessRestore* c : kids->second) {
        auto it = by_start[c->pid].find(v.start());
        if (it != by_start[c->pid].end() && SameMapping(v, *it->second)) shared = true;
      }
      if (shared) chosen.push_back({v.start(), v.end(), &v, p->pid});
    }
  }
  if (chosen.empty()) return Ok();
  // Map and fill, in the coordinator. Its own mappings stay out of these ranges from here on
  // (they are taken), until DropPremaps.
  std::map<pid_t, std::unique_ptr<images::BlobReader>> blobs;
  ctx.cow_mapped = true;
  for (const auto& c : chosen) {
    if (!MapHere(*c.vma)) {
      LOG_DEBUG("restore: %#lx-%#lx of pid %d is taken in the restorer: its pages are copied",
                static_cast<unsigned long>(c.start), static_cast<unsigned long>(c.end), c.owner);
      continue;
    }
    ctx.cow.push_back(c);
    const ProcessRestore* owner = ctx.by_pid.at(c.owner);
    const img::PageMap& pm = owner->pagemaps[0];
    auto& blob = blobs[c.owner];
    if (!blob) {
      ASSIGN_OR_RETURN(blob, ctx.images->OpenBlob(pm.blob()));
    }
    for (const auto& run : pm.runs()) {
      uint64_t rs = run.vaddr(), re = rs + run.npages() * kPage;
      uint64_t s = std::max(rs, c.start), e = std::min(re, c.end);
      if (s >= e) continue;
      TRY_CTX(blob->Read(run.blob_off() + (s - rs), reinterpret_cast<void*>(s), e - s),
              "pid %d: pages %#lx-%#lx", c.owner, static_cast<unsigned long>(s),
              static_cast<unsigned long>(e));
    }
  }
  return Ok();
}

void DropPremaps(RestoreContext& ctx) {
  if (!ctx.cow_mapped) return;
  for (const auto& c : ctx.cow) munmap(reinterpret_cast<void*>(c.start), c.end - c.start);
  ctx.cow_mapped = false;
}

std::vector<const img::Vma*> InheritedVmas(const RestoreContext& ctx, const ProcessRestore& p) {
  std::vector<const img::Vma*> out;
  if (ctx.cow.empty()) return out;
  for (const auto& v : p.mm.vmas())
    for (const auto& c : ctx.cow)
      if (SameMapping(*c.vma, v)) out.push_back(&v);
  return out;
}

Result<img::PageMap> FixInherited(RestoreContext& ctx, ProcessRestore& p,
                                  const std::vector<const img::Vma*>& inherited,
                                  const img::PageMap& pagemap) {
  remote::Remote* r = p.remote.get();
  // The owner's own VMAs hold exactly its pages already (the coordinator filled them from its
  // page map and nothing else touched them): nothing to compare or drop there.
  auto owned = [&](const img::Vma* v) {
    for (const auto& c : ctx.cow)
      if (c.start == v->start() && c.owner == p.pid) return true;
    return false;
  };
  img::PageMap rest = pagemap;
  rest.clear_runs();
  std::unique_ptr<images::BlobReader> blob;
  std::string want, have;
  UniqueFd mem;
  uint64_t written = 0, kept = 0;
  for (const auto& run : pagemap.runs()) {
    const uint64_t rs = run.vaddr(), re = rs + run.npages() * kPage;
    // The parts of the run outside every inherited VMA go to the ordinary fill.
    uint64_t at = rs;
    auto keep_plain = [&](uint64_t s, uint64_t e) {
      if (s >= e) return;
      img::PageRun* o = rest.add_runs();
      o->set_vaddr(s);
      o->set_npages((e - s) / kPage);
      o->set_blob_off(run.blob_off() + (s - rs));
    };
    std::vector<std::pair<uint64_t, uint64_t>> inside;
    std::vector<std::pair<uint64_t, uint64_t>> mine;  // the parts in VMAs this process owns
    for (const img::Vma* v : inherited) {
      uint64_t s = std::max(rs, v->start()), e = std::min(re, v->end());
      if (s >= e) continue;
      inside.push_back({s, e});
      if (owned(v)) mine.push_back({s, e});
    }
    auto is_owned = [&](uint64_t s) {
      for (const auto& m : mine)
        if (m.first == s) return true;
      return false;
    };
    std::sort(inside.begin(), inside.end());
    for (const auto& [s, e] : inside) {
      keep_plain(at, s);
      at = e;
      if (is_owned(s)) {
        kept += (e - s) / kPage;
        continue;
      }
      // Inside: compare with what the fork gave, write the pages that differ.
      if (!blob) {
        ASSIGN_OR_RETURN(blob, ctx.images->OpenBlob(pagemap.blob()));
      }
      want.resize(e - s);
      have.resize(e - s);
      TRY(blob->Read(run.blob_off() + (s - rs), want.data(), e - s));
      // Through /proc/PID/mem, not process_vm_readv (Remote::Read): that pins the pages, and
      // pinning an anonymous page shared copy-on-write unshares it even for reading (the
      // kernel's fix for pins across fork), the very sharing this keeps.
      if (!mem) {
        mem = UniqueFd(open(StrFormat("/proc/%d/mem", p.pid).c_str(), O_RDONLY | O_CLOEXEC));
        if (!mem) return Errno("open /proc/%d/mem", p.pid);
      }
      if (pread(mem.get(), have.data(), e - s, static_cast<off_t>(s)) !=
          static_cast<ssize_t>(e - s))
        return Errno("pid %d: read inherited pages at %#lx", p.pid, static_cast<unsigned long>(s));
      for (uint64_t o = 0; o < e - s;) {
        if (memcmp(want.data() + o, have.data() + o, kPage) == 0) {
          o += kPage;
          ++kept;
          continue;
        }
        uint64_t d = o;
        while (d < e - s && memcmp(want.data() + d, have.data() + d, kPage) != 0) d += kPage;
        TRY_CTX(r->Write(s + o, want.data() + o, d - o), "pid %d: pages at %#lx", p.pid,
                static_cast<unsigned long>(s + o));
        written += (d - o) / kPage;
        o = d;
      }
    }
    keep_plain(at, re);
  }
  // Pages of the inherited VMAs this process did not have: the fork's copies go (zeros again, or
  // the file's page), then the VMA's own protection.
  for (const img::Vma* v : inherited) {
    if (owned(v)) {
      if (v->prot() != (PROT_READ | PROT_WRITE))
        TRY_CTX(r->Syscall(SYS_mprotect, v->start(), v->end() - v->start(), v->prot()),
                "pid %d: mprotect %#lx", p.pid, static_cast<unsigned long>(v->start()));
      continue;
    }
    uint64_t at = v->start();
    auto drop = [&](uint64_t s, uint64_t e) -> Result<void> {
      if (s >= e) return Ok();
      TRY_CTX(r->Syscall(SYS_madvise, s, e - s, MADV_DONTNEED), "pid %d: drop %#lx-%#lx", p.pid,
              static_cast<unsigned long>(s), static_cast<unsigned long>(e));
      return Ok();
    };
    for (const auto& run : pagemap.runs()) {
      uint64_t s = std::max<uint64_t>(run.vaddr(), v->start());
      uint64_t e = std::min<uint64_t>(run.vaddr() + run.npages() * kPage, v->end());
      if (s >= e) continue;
      TRY(drop(at, s));
      at = e;
    }
    TRY(drop(at, v->end()));
    if (v->prot() != (PROT_READ | PROT_WRITE))
      TRY_CTX(r->Syscall(SYS_mprotect, v->start(), v->end() - v->start(), v->prot()),
              "pid %d: mprotect %#lx", p.pid, static_cast<unsigned long>(v->start()));
  }
  LOG_DEBUG("pid %d: %zu inherited VMAs: %lu pages shared, %lu written", p.pid, inherited.size(),
            static_cast<unsigned long>(kept), static_cast<unsigned long>(written));
  return rest;
}

}  // namespace godwit::restore
