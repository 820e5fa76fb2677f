// Step "mm": replace the coordinator's copy in a stopped restored process with the dumped address
// space, from outside with injected syscalls:
//   unregister glibc's rseq -> munmap everything but the scratch area, vdso/vvar, vsyscall ->
//   move [vvar][vvar_vclock][vdso] to the dumped addresses (mremap, via a free temporary spot) ->
//   mmap every dumped VMA (MAP_FIXED; writable while filling; shared memory objects from
//   restore/shmem.cc) -> advice -> fill pages (restore/pages.cc) -> mprotect to the dumped
//   protections -> guard regions, locks -> PR_SET_MM_MAP (mm fields, auxv, exe) -> seals.
#include <fcntl.h>
#include <linux/prctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <optional>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/pidfd.h"
#include "common/proc.h"
#include "common/timing.h"
#include "restore/batch.h"
#include "restore/cow.h"
#include "restore/lazy.h"
#include "restore/load.h"
#include "restore/mm.h"
#include "restore/pages.h"
#include "restore/shmem.h"
#include "restore/steps.h"

namespace godwit::restore {
namespace {

bool IsVdsoKind(img::VmaKind k) {
  return k == img::VMA_VDSO || k == img::VMA_VVAR || k == img::VMA_VVAR_VCLOCK;
}

struct Interval {
  uint64_t start, end;
};

// Moves the current vdso block (vvar, vvar_vclock, vdso) to the dumped addresses.
Result<void> MoveVdso(remote::Remote* r, SyscallBatch* b, const std::vector<proc::MapsEntry>& cur,
                      const img::MmEntry& mm) {
  std::vector<const proc::MapsEntry*> have;
  for (const auto& m : cur)
    if (m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]") have.push_back(&m);
  std::vector<const img::Vma*> want;
  for (const auto& v : mm.vmas())
    if (IsVdsoKind(v.kind())) want.push_back(&v);
  if (want.empty()) {
    for (auto* m : have) b->Add("munmap " + m->path, SYS_munmap, m->start, m->end - m->start);
    return Ok();
  }
  auto name_of = [](const img::Vma* v) {
    return v->kind() == img::VMA_VDSO ? "[vdso]" : v->kind() == img::VMA_VVAR ? "[vvar]"
                                                                              : "[vvar_vclock]";
  };
  // The process unmapped its vdso (zdtm vdso02 unmaps [vdso] and [vvar]): no code reads the data
  // pages left at fixed offsets from it, so each one left goes to its dumped address alone, and
  // what it unmapped goes.
  bool has_vdso = false;
  for (auto* v : want) has_vdso |= v->kind() == img::VMA_VDSO;
  if (!has_vdso) {
    std::vector<std::pair<const proc::MapsEntry*, const img::Vma*>> keep;
    for (auto* m : have) {
      const img::Vma* w = nullptr;
      for (auto* v : want)
        if (m->path == name_of(v) && m->end - m->start == v->end() - v->start()) w = v;
      if (w)
        keep.emplace_back(m, w);
      else
        b->Add("munmap " + m->path, SYS_munmap, m->start, m->end - m->start);
    }
    if (keep.size() != want.size())
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d: the dumped vdso data pages differ from this kernel's", r->pid());
    // Through a spot clear of both addresses, so that no move lands on another's pages.
    uint64_t tmp = std::max(r->area_end(), want.back()->end()) + (64ULL << 20);
    tmp = (tmp + (1ULL << 21) - 1) & ~((1ULL << 21) - 1);
    for (size_t i = 0; i < keep.size(); ++i) {
      const auto* m = keep[i].first;
      uint64_t len = m->end - m->start, at = tmp + (i << 24);
      b->Add("mremap " + m->path, SYS_mremap, m->start, len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
             at);
    }
    for (size_t i = 0; i < keep.size(); ++i) {
      const auto* m = keep[i].first;
      uint64_t len = m->end - m->start, at = tmp + (i << 24);
      b->Add("mremap " + m->path + " to the dumped address", SYS_mremap, at, len, len,
             MREMAP_MAYMOVE | MREMAP_FIXED, keep[i].second->start());
    }
    return Ok();
  }
  auto shape_error = [&] {
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d: the dumped vdso/vvar layout differs from this kernel's", r->pid());
  };
  if (have.size() != want.size()) return shape_error();
  int64_t delta = static_cast<int64_t>(want[0]->start()) - static_cast<int64_t>(have[0]->start);
  for (size_t i = 0; i < have.size(); ++i) {
    std::string name = want[i]->kind() == img::VMA_VDSO   ? "[vdso]"
                       : want[i]->kind() == img::VMA_VVAR ? "[vvar]"
                                                          : "[vvar_vclock]";
    if (have[i]->path != name ||
        have[i]->end - have[i]->start != want[i]->end() - want[i]->start() ||
        static_cast<int64_t>(want[i]->start()) - static_cast<int64_t>(have[i]->start) != delta)
      return shape_error();
  }
  if (delta == 0) return Ok();
  uint64_t lo = have.front()->start, hi = have.back()->end;
  uint64_t wlo = want.front()->start(), whi = want.back()->end();
  // A temporary spot clear of the old block, the new block and the scratch area.
  uint64_t tmp = std::max({hi, whi, r->area_end()}) + (64ULL << 20);
  tmp = (tmp + (1ULL << 21) - 1) & ~((1ULL << 21) - 1);
  if (tmp + (hi - lo) >= (1ULL << 47)) {
    tmp = 1ULL << 32;
    if (!(tmp + (hi - lo) <= std::min({lo, wlo, r->area_start()})))
      return Err("pid %d: no room to move the vdso", r->pid());
  }
  for (auto* m : have)
    b->Add("mremap " + m->path, SYS_mremap, m->start, m->end - m->start, m->end - m->start,
           MREMAP_MAYMOVE | MREMAP_FIXED, tmp + (m->start - lo));
  for (auto* m : have)
    b->Add("mremap " + m->path + " to the dumped address", SYS_mremap, tmp + (m->start - lo),
           m->end - m->start, m->end - m->start, MREMAP_MAYMOVE | MREMAP_FIXED, m->start + delta);
  return Ok();
}

struct MmState {
  std::map<std::string, long> file_fds;  // path -> fd in the target
  // fd passing (SCM_RIGHTS) into the target: its end in the target, ours here.
  long sock = -1;
  UniqueFd local_sock;
};

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif

// Hands the coordinator's fd to the target over a unix socket pair made inside the target (its
// other end taken with pidfd_getfd): no path is involved, so it works where the coordinator's
// /proc is not visible (a restored container's own pid and mount namespaces).
Result<long> PassFd(remote::Remote* r, MmState* st, int fd) {
  uint64_t at = r->scratch() + 4096;
  if (st->sock < 0) {
    ASSIGN_OR_RETURN(long rc,
                     r->Syscall(SYS_socketpair, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, at));
    (void)rc;
    int sv[2];
    TRY(r->Read(at, sv, sizeof(sv)));
    st->sock = sv[0];
    ASSIGN_OR_RETURN(st->local_sock, pidfd::TakeFd(r->pid(), sv[1]));
    TRY(r->Syscall(SYS_close, static_cast<uint64_t>(sv[1])));
  }
  char c = 0;
  iovec iov{&c, 1};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof(cbuf);
  cmsghdr* cm = CMSG_FIRSTHDR(&msg);
  cm->cmsg_level = SOL_SOCKET;
  cm->cmsg_type = SCM_RIGHTS;
  cm->cmsg_len = CMSG_LEN(sizeof(int));
  memcpy(CMSG_DATA(cm), &fd, sizeof(int));
  if (sendmsg(st->local_sock.get(), &msg, 0) != 1)
    return Errno("pass fd %d to pid %d", fd, r->pid());
  // The same message in the target's scratch memory: msghdr, iovec, byte, control buffer.
  struct {
    msghdr m;
    iovec v;
    alignas(cmsghdr) char ctl[CMSG_SPACE(sizeof(int))];
    char byte;
  } rm{};
  uint64_t base = at;
  rm.v.iov_base = reinterpret_cast<void*>(base + offsetof(decltype(rm), byte));
  rm.v.iov_len = 1;
  rm.m.msg_iov = reinterpret_cast<iovec*>(base + offsetof(decltype(rm), v));
  rm.m.msg_iovlen = 1;
  rm.m.msg_control = reinterpret_cast<void*>(base + offsetof(decltype(rm), ctl));
  rm.m.msg_controllen = sizeof(rm.ctl);
  TRY(r->Write(base, &rm, sizeof(rm)));
  ASSIGN_OR_RETURN(long n, r->Syscall(SYS_recvmsg, static_cast<uint64_t>(st->sock), base,
                                      MSG_CMSG_CLOEXEC | MSG_DONTWAIT));
  TRY(r->Read(base, &rm, sizeof(rm)));
  msghdr got = rm.m;
  got.msg_control = rm.ctl;
  cmsghdr* gc = CMSG_FIRSTHDR(&got);
  if (n != 1 || gc == nullptr || gc->cmsg_type != SCM_RIGHTS)
    return Err("pid %d: no fd arrived over the socket", r->pid());
  int out;
  memcpy(&out, CMSG_DATA(gc), sizeof(int));
  return out;
}

// madvise state that is not part of the mapping itself, per VMA. Before the pages are filled, so
// THP advice decides how the memory is allocated. Advice this kernel lacks (no THP, no KSM:
// EINVAL) is a warning; everything else an error.
Result<void> ApplyAdvice(remote::Remote* r, const img::Vma& v) {
  static const int kOrder[] = {MADV_HUGEPAGE,   MADV_NOHUGEPAGE, MADV_DONTFORK,   MADV_DONTDUMP,
                               MADV_WIPEONFORK, MADV_MERGEABLE,  MADV_SEQUENTIAL, MADV_RANDOM};
  for (int a : kOrder) {
    if (!(v.madv() & (1ULL << a))) continue;
    // MAP_DROPPABLE implies wipe-on-fork and no-huge-page; nothing to add.
    if (v.droppable() && (a == MADV_WIPEONFORK || a == MADV_NOHUGEPAGE)) continue;
    auto res = r->Syscall(SYS_madvise, v.start(), v.end() - v.start(), static_cast<uint64_t>(a));
    if (res.ok()) continue;
    bool optional = a == MADV_HUGEPAGE || a == MADV_NOHUGEPAGE || a == MADV_MERGEABLE;
    if (optional && res.error().sys_errno() == EINVAL) {
      LOG_WARN("pid %d: madvise(%#lx, %d) not supported here: advice lost", r->pid(),
               static_cast<unsigned long>(v.start()), a);
      continue;
    }
    return std::move(
        res.error().wrap(StrFormat("madvise(%#lx-%#lx, %d)", static_cast<unsigned long>(v.start()),
                                   static_cast<unsigned long>(v.end()), a)));
  }
  return Ok();
}

// A mapping of a deleted regular file that a process of the tree also has open: files/ restored
// that fd as a ghost file ("PATH (deleted)" again); mapping the same file keeps the fd and the
// mapping one object (unlink_mmap02: writes through the fd show in the mapping). Invalid: none,
// the engine's copy of the contents is mapped.
Result<UniqueFd> OpenGhostOf(const RestoreContext& ctx, const img::Vma& v) {
  const std::string& path = v.path();
  if (!v.deleted() || path.rfind("/memfd:", 0) == 0 || path.rfind("/SYSV", 0) == 0 ||
      path.rfind("/dev/zero", 0) == 0 || path.rfind("/anon_hugepage", 0) == 0)
    return UniqueFd();
  const img::ShmemObject* obj = FindShmem(ctx, v.shmem_id());
  if (obj == nullptr) return UniqueFd();
  for (const auto& q : ctx.procs) {
    std::string dir = StrFormat("/proc/%d/fd", q->pid);
    auto names = fs::ListDir(dir);
    if (!names.ok()) continue;
    for (const auto& n : *names) {
      std::string link = dir + "/" + n;
      char buf[4096];
      ssize_t len = readlink(link.c_str(), buf, sizeof(buf));
      if (len <= 0 || std::string(buf, len) != path) continue;
      UniqueFd fd(open(link.c_str(), O_RDWR | O_CLOEXEC));
      if (!fd.valid()) fd.reset(open(link.c_str(), O_RDONLY | O_CLOEXEC));
      struct stat sb;
      if (!fd.valid() || fstat(fd.get(), &sb) != 0 || !S_ISREG(sb.st_mode) ||
          static_cast<uint64_t>(sb.st_size) != obj->size())
        continue;
      return fd;
    }
  }
  return UniqueFd();
}

// Queues the mmap in b (its fd, if any, opened now); what must run first (a SysV attach, an fd
// passed over a socket) flushes b.
Result<void> MapVma(RestoreContext& ctx, remote::Remote* r, SyscallBatch* b, const img::Vma& v,
                    MmState* st, bool will_fill) {
  uint64_t len = v.end() - v.start();
  uint64_t prot = v.prot() | (will_fill ? PROT_WRITE : 0);
  uint64_t flags =
      (v.flags() & (MAP_SHARED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN | MAP_NORESERVE)) |
      MAP_FIXED;
  if (v.huge_page_shift() != 0 && v.kind() == img::VMA_ANON_PRIVATE)
    flags |= MAP_HUGETLB | (static_cast<uint64_t>(v.huge_page_shift()) << MAP_HUGE_SHIFT);
  if (v.droppable() && v.kind() == img::VMA_ANON_PRIVATE)
    flags = (flags & ~static_cast<uint64_t>(MAP_PRIVATE)) | MAP_DROPPABLE;
  long fd = -1;
  uint64_t pgoff = 0;
  switch (v.kind()) {
    case img::VMA_ANON_PRIVATE:
      break;
    case img::VMA_FILE_PRIVATE:
    case img::VMA_FILE_SHARED: {
      // Read-write also for a read-only shared mapping that may become writable (maps_file_prot).
      bool rw = v.kind() == img::VMA_FILE_SHARED && ((v.prot() & PROT_WRITE) || v.maywrite());
      std::string key = v.path() + (rw ? "\x01rw" : "");
      auto it = st->file_fds.find(key);
      if (it == st->file_fds.end()) {
        ASSIGN_OR_RETURN(fd, OpenInTarget(r, v.path(), rw ? O_RDWR : O_RDONLY));
        st->file_fds[key] = fd;
      } else {
        fd = it->second;
      }
      pgoff = v.pgoff();
      break;
    }
    case img::VMA_SHMEM: {
      TRY(b->Flush());  // the unmaps before an attach at a fixed address
      // MAP_PRIVATE: a private memfd / deleted-file mapping (its written pages are filled after).
      bool priv = (v.flags() & MAP_PRIVATE) != 0;
      if (!priv) {
        ASSIGN_OR_RETURN(bool attached, AttachSysv(ctx, r, v));
        if (attached) return Ok();
      }
      auto it = ctx.shmem_fds.find(v.shmem_id());
      std::string key = StrFormat("\x01shmem-%lu", static_cast<unsigned long>(v.shmem_id()));
      if (!st->file_fds.count(key)) {
        ASSIGN_OR_RETURN(UniqueFd ghost, OpenGhostOf(ctx, v));
        if (ghost.valid()) {
          ASSIGN_OR_RETURN(fd, PassFd(r, st, ghost.get()));
          st->file_fds[key] = fd;
        }
      }
      if (it == ctx.shmem_fds.end())
        return MakeError(ErrorKind::kBadImage, 0, "vma %#lx: unknown shared memory object %lu",
                         static_cast<unsigned long>(v.start()),
                         static_cast<unsigned long>(v.shmem_id()));
      auto f = st->file_fds.find(key);
      if (f == st->file_fds.end()) {
        ASSIGN_OR_RETURN(fd, PassFd(r, st, it->second.get()));
        st->file_fds[key] = fd;
      } else {
        fd = f->second;
      }
      flags = (priv ? MAP_PRIVATE : MAP_SHARED) | MAP_FIXED | (v.flags() & MAP_NORESERVE);
      pgoff = v.pgoff();
      break;
    }
    case img::VMA_PACKET_RING:
      // The process's own fd of the packet socket, installed with its rings by now (the files
      // are in place before the memory; files/kind_packet.cc).
      fd = v.ring_fd();
      flags &= ~static_cast<uint64_t>(MAP_NORESERVE);
      break;
    default:
      return Ok();
  }
  b->Add(StrFormat("map %#lx-%#lx %s", static_cast<unsigned long>(v.start()),
                   static_cast<unsigned long>(v.end()), v.path().c_str()),
         SYS_mmap, v.start(), len, prot, flags, static_cast<uint64_t>(fd), pgoff, v.start());
  return Ok();
}

struct PrctlMmMap {
  uint64_t start_code, end_code, start_data, end_data, start_brk, brk, start_stack, arg_start,
      arg_end, env_start, env_end;
  uint64_t auxv;
  uint32_t auxv_size;
  uint32_t exe_fd;
};

Result<void> SetMmMap(remote::Remote* r, const img::MmEntry& mm) {
  PrctlMmMap m{};
  m.start_code = mm.start_code();
  m.end_code = mm.end_code();
  m.start_data = mm.start_data();
  m.end_data = mm.end_data();
  m.start_brk = mm.start_brk();
  m.brk = mm.brk();
  m.start_stack = mm.start_stack();
  m.arg_start = mm.arg_start();
  m.arg_end = mm.arg_end();
  m.env_start = mm.env_start();
  m.env_end = mm.env_end();
  uint64_t auxv_at = r->scratch() + 4096;
  if (mm.auxv().size() > 4096) return MakeError(ErrorKind::kBadImage, 0, "auxv too large");
  TRY(r->Write(auxv_at, mm.auxv().data(), mm.auxv().size()));
  m.auxv = auxv_at;
  m.auxv_size = mm.auxv().size();
  long exe_fd = -1;
  if (!mm.exe_path().empty()) {
    auto fd = OpenInTarget(r, mm.exe_path(), O_RDONLY);
    if (fd.ok())
      exe_fd = *fd;
    else
      LOG_WARN("pid %d: exe %s: %s", r->pid(), mm.exe_path().c_str(),
               fd.error().to_string().c_str());
  }
  m.exe_fd = static_cast<uint32_t>(exe_fd);
  uint64_t at = r->scratch() + 2048;
  TRY(r->Write(at, &m, sizeof(m)));
  auto res = r->Syscall(SYS_prctl, PR_SET_MM, PR_SET_MM_MAP, at, sizeof(m), 0);
  if (exe_fd >= 0) TRY(r->Syscall(SYS_close, static_cast<uint64_t>(exe_fd)));
  if (!res.ok()) return std::move(res.error().wrap("PR_SET_MM_MAP"));
  return Ok();
}

// Lazy restore (restore/lazy.h): the anonymous private VMAs that get pages are registered with
// the pager, so FillPages records their pages instead of copying them. Left to the eager fill:
// VMAs advised MADV_HUGEPAGE (UFFDIO_COPY installs small pages), locked ones (mlock would fault
// every page in anyway, inside the restore), and those the program marked MADV_DONTFORK or
// MADV_WIPEONFORK (a child made while pages are owed would be owed pages it must not have).
// The most of a lazily restored process's last pre-copy blob installed before it runs
// (LazyPager::FillNow): ~1 ms of page creation here.
constexpr uint64_t kHotSetBytes = 2 << 20;
// A process that owes at most this is filled whole before it runs, while the tree's fills stay
// under kEagerTreeBytes: a server's helpers (a shell, cat, a worker that sleeps) cost the pager
// a fault each time they wake, and each fault can wait behind a background copy; filling their
// few pages now costs microseconds.
constexpr uint64_t kSmallLazyBytes = 1 << 20;
constexpr uint64_t kEagerTreeBytes = 8 << 20;

template <typename HasPages>
Result<void> RegisterLazy(RestoreContext& ctx, ProcessRestore& p, const HasPages& has_pages) {
  constexpr uint64_t kNotLazy = (uint64_t{1} << MADV_HUGEPAGE) | (uint64_t{1} << MADV_DONTFORK) |
                                (uint64_t{1} << MADV_WIPEONFORK);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  for (const auto& v : p.mm.vmas()) {
    if (v.kind() != img::VMA_ANON_PRIVATE || v.locked() || (v.madv() & kNotLazy)) continue;
    if (!has_pages(v.start(), v.end())) continue;
    ranges.push_back({v.start(), v.end()});
  }
  std::sort(ranges.begin(), ranges.end());
  ASSIGN_OR_RETURN(bool lazy, ctx.lazy->AddProcess(*p.remote, ranges));
  (void)lazy;  // false: FillPages fills this process now
  return Ok();
}

}  // namespace

Result<long> OpenInTarget(remote::Remote* r, const std::string& path, int flags, int dirfd) {
  ASSIGN_OR_RETURN(uint64_t a, r->WriteString(0, path));
  auto fd = r->Syscall(SYS_openat, static_cast<uint64_t>(dirfd), a, flags | O_CLOEXEC, 0);
  if (!fd.ok())
    return std::move(fd.error().wrap(StrFormat("open %s in pid %d", path.c_str(), r->pid())));
  return fd;
}

Result<void> RestoreMm(RestoreContext& ctx, ProcessRestore& p) {
  auto t0 = timing::Clock::now();
  timing::PhaseTimer mt(t0);
  remote::Remote* r = p.remote.get();
  // glibc in the coordinator registered rseq for this thread; its area is about to go away.
  struct {
    uint64_t ptr;
    uint32_t size, sig, flags, pad;
  } rc{};
  if (ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), p.pid,
             reinterpret_cast<void*>(sizeof(rc)), &rc) < 0)
    return Errno("PTRACE_GET_RSEQ_CONFIGURATION %d", p.pid);
  // The calls that take the coordinator's copy apart and map the dumped VMAs go in one batch
  // (restore/batch.h): ~20-40 calls a process, one stop.
  SyscallBatch batch(r);
  if (rc.ptr != 0) batch.Add("rseq unregister", SYS_rseq, rc.ptr, rc.size, 1 /*UNREGISTER*/, rc.sig);

  ASSIGN_OR_RETURN(auto cur, proc::ReadMaps(p.pid));
  // Unmap everything but the scratch area, the vdso block and vsyscall, in coalesced ranges.
  std::vector<Interval> keep;
  for (const auto& m : cur) {
    bool k = m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]" ||
             m.path == "[vsyscall]" || (m.start < r->area_end() && m.end > r->area_start());
    if (!k) {
      if (!keep.empty() && keep.back().end == m.start && keep.back().start != 0) {
        keep.back().end = m.end;
      } else {
        keep.push_back({m.start, m.end});
      }
    } else {
      keep.push_back({0, 0});  // separator
    }
  }
  // Private VMAs inherited through the fork (restore/cow.h) stay where they are.
  const std::vector<const img::Vma*> inherited = InheritedVmas(ctx, p);
  for (const auto& iv : keep) {
    uint64_t at = iv.start;
    for (const img::Vma* v : inherited) {  // sorted by start, as the dump wrote them
      if (v->end() <= at || v->start() >= iv.end) continue;
      if (v->start() > at) batch.Add("munmap", SYS_munmap, at, v->start() - at);
      at = v->end();
    }
    if (iv.end > at) batch.Add("munmap", SYS_munmap, at, iv.end - at);
  }
  TRY(MoveVdso(r, &batch, cur, p.mm));

  MmState st;
  // Which VMAs get pages: those a run (of any round) falls in.
  // Their union: each pagemap's runs are sorted (load.cc checks), rounds may overlap; merged map
  // by map (a sort of every run of every round cost ~10 ms at 1 GiB after pre-copy).
  std::vector<Interval> uni, one, merged;
  auto push = [](std::vector<Interval>& v, uint64_t s, uint64_t e) {
    if (!v.empty() && s <= v.back().end)
      v.back().end = std::max(v.back().end, e);
    else
      v.push_back({s, e});
  };
  // A migration's earlier rounds resolved while the restore waited (restore/load.h): only the
  // final dump's page map is walked here. Not with COW-inherited VMAs (their fill is per page).
  std::optional<LazyPager::Prepared> ahead;
  if (ctx.lazy && inherited.empty() && p.pagemaps.size() >= 2)
    ahead = TakeLazyAhead(p.entry->pid(), p.pagemaps);
  size_t first_map = 0;  // the final dump's page maps (one, or two for a large delta) from here
  if (ahead) {
    for (const auto& [s, e] : ahead->covered) uni.push_back({s, e});
    first_map = ahead->blobs.size();
  }
  for (size_t i = first_map; i < p.pagemaps.size(); ++i) {
    const auto& pm = p.pagemaps[i];
    one.clear();
    for (const auto& run : pm.runs()) push(one, run.vaddr(), run.vaddr() + run.npages() * kPage);
    merged.clear();
    size_t a = 0, b = 0;
    while (a < uni.size() || b < one.size()) {
      const Interval& iv =
          (b >= one.size() || (a < uni.size() && uni[a].start < one[b].start)) ? uni[a++] : one[b++];
      push(merged, iv.start, iv.end);
    }
    uni.swap(merged);
  }
  auto has_pages = [&](uint64_t s, uint64_t e) {
    auto it = std::upper_bound(uni.begin(), uni.end(), s,
                               [](uint64_t x, const Interval& iv) { return x < iv.start; });
    if (it != uni.end() && it->start < e) return true;
    return it != uni.begin() && std::prev(it)->end > s;
  };
  TRY_CTX(EarlySeals(ctx, p), "pid %d", p.pid);
  for (const auto& v : p.mm.vmas()) {
    if (std::find(inherited.begin(), inherited.end(), &v) != inherited.end()) continue;
    bool fill = has_pages(v.start(), v.end());
    TRY_CTX(MapVma(ctx, r, &batch, v, &st, fill), "pid %d: map %#lx-%#lx %s", p.pid,
            static_cast<unsigned long>(v.start()), static_cast<unsigned long>(v.end()),
            v.path().c_str());
  }
  for (auto& [path, fd] : st.file_fds)
    batch.Add("close " + path, SYS_close, static_cast<uint64_t>(fd));
  if (st.sock >= 0) batch.Add("close the fd passing socket", SYS_close, static_cast<uint64_t>(st.sock));
  TRY_CTX(batch.Flush(), "pid %d", p.pid);
  mt.Lap("map");
  // The vdso block and vsyscall come from the kernel with their own flags: no advice, locks or
  // seals of ours on them.
  auto kernel_made = [](const img::Vma& v) {
    return IsVdsoKind(v.kind()) || v.kind() == img::VMA_VSYSCALL;
  };
  for (const auto& v : p.mm.vmas())
    if (v.madv() != 0 && !kernel_made(v)) TRY_CTX(ApplyAdvice(r, v), "pid %d", p.pid);
  if (ctx.lazy) TRY_CTX(RegisterLazy(ctx, p, has_pages), "pid %d: lazy pages", p.pid);
  mt.Lap("register");
  if (ahead) {
    // The earlier rounds' pages outside the pager's ranges (a binary's data in its private file
    // mapping, a locked or MADV_HUGEPAGE VMA, a range the kernel refused): taken out of the
    // record and filled now, round by round (each page from the newest round that holds it), before
    // the final dump's pages.
    auto ranges = ctx.lazy->Ranges(p.pid);
    std::vector<img::PageMap> eager(ahead->blobs.size());
    LazyPager::Outside(ahead->covered, ranges, [&](uint64_t s, uint64_t e) {
      for (const auto& g : LazyPager::Take(ahead->pending, s, e)) {
        img::PageRun* run = eager[g.source].add_runs();
        run->set_vaddr(g.va);
        run->set_npages((g.end - g.va) / kPage);
        run->set_blob_off(g.off);
        ahead->bytes -= g.end - g.va;
      }
    });
    for (size_t k = 0; k < eager.size(); ++k) {
      if (eager[k].runs_size() == 0) continue;
      eager[k].set_pid(p.entry->pid());
      eager[k].set_blob(ahead->blobs[k]);
      TRY_CTX(FillPages(ctx, p, eager[k]), "pid %d: pages", p.pid);
    }
    mt.Lap("eager_rounds");
    if (ranges.empty()) {
      // The pager took no range of this process (no userfaultfd for it, every VMA locked...):
      // the rounds were all filled just now, as it is.
      ahead.reset();
    } else {
      ctx.stats.lazy_prepared_bytes += ahead->bytes;
      TRY_CTX(ctx.lazy->AdoptPrepared(
                  p.pid, ctx.images->dir(), &*ahead,
                  [&](const std::string& n) { return ctx.images->Verified(n); }),
              "pid %d: lazy pages", p.pid);
    }
    mt.Lap("adopt");
    for (size_t i = first_map; i < p.pagemaps.size(); ++i)
      TRY_CTX(FillPages(ctx, p, p.pagemaps[i]), "pid %d: pages", p.pid);
  } else if (inherited.empty() && p.pagemaps.size() >= 2) {
    // Pre-copied: each page from the newest map that holds it, written once.
    for (const auto& pm : NewestOnly(p.pagemaps))
      TRY_CTX(FillPages(ctx, p, pm), "pid %d: pages", p.pid);
  } else if (inherited.empty()) {
    for (const auto& pm : p.pagemaps) TRY_CTX(FillPages(ctx, p, pm), "pid %d: pages", p.pid);
  } else {
    // Inherited VMAs first: their pages are corrected in place, the rest filled as usual (one
    // page map: premapping is off for pre-copied images).
    const img::PageMap none;
    ASSIGN_OR_RETURN(img::PageMap rest,
                     FixInherited(ctx, p, inherited, p.pagemaps.empty() ? none : p.pagemaps[0]));
    TRY_CTX(FillPages(ctx, p, rest), "pid %d: pages", p.pid);
  }
  mt.Lap("fill");
  if (!p.lazy_sources.empty() || ahead) {
    timing::PhaseTimer lt;
    size_t nruns = 0;
    for (const auto& src : p.lazy_sources) nruns += src.runs.size();
    if (!p.lazy_sources.empty())
      TRY_CTX(ctx.lazy->AddPagesBatch(p.pid, p.lazy_sources), "pid %d: lazy pages", p.pid);
    double record_ms = lt.Lap("record");
    // After pre-copy rounds, the last blob holds what the program wrote in the last moments
    // before its freeze: its working set, which it touches first when it runs (a migrated
    // server's next reply). Installed now, up to a bound that keeps this out of the blackout's
    // growth; the rest stays lazy.
    bool precopied = ahead.has_value();
    uint64_t owed = ahead ? ahead->bytes : 0;
    for (const auto& src : p.lazy_sources) {
      if (src.name.find("-pre") != std::string::npos) precopied = true;
      for (const auto& run : src.runs) owed += run.len;
    }
    if (owed <= kSmallLazyBytes && ctx.stats.hot_bytes + owed <= kEagerTreeBytes) {
      std::vector<std::vector<LazyPager::Run>> all;
      if (ahead) {
        all.emplace_back();
        for (const auto& [s, e] : ahead->covered) all.back().push_back({s, e - s, 0});
      }
      for (const auto& src : p.lazy_sources) all.push_back(src.runs);
      for (const auto& runs : all) {
        auto n = ctx.lazy->FillNow(p.pid, runs, kSmallLazyBytes);
        if (!n.ok()) return std::move(n.error().wrap(StrFormat("pid %d: lazy pages", p.pid)));
        ctx.stats.hot_bytes += *n;
      }
    } else if (precopied && !p.lazy_sources.empty() &&
               (ahead || p.lazy_sources.size() > 1)) {
      auto n = ctx.lazy->FillNow(p.pid, p.lazy_sources.back().runs, kHotSetBytes);
      if (!n.ok()) return std::move(n.error().wrap(StrFormat("pid %d: lazy pages", p.pid)));
      ctx.stats.hot_bytes += *n;
    }
    LOG_DEBUG("pid %d: lazy pages: %zu runs of %zu sources recorded in %.2f ms, filled now in "
              "%.2f ms", p.pid, nruns, p.lazy_sources.size(), record_ms, lt.Lap("fill"));
    p.lazy_sources.clear();
  }
  // AIO rings into the ranges MapVma left free for them (restore/aio.cc).
  for (const auto& v : p.mm.vmas())
    if (v.kind() == img::VMA_AIO_RING)
      TRY_CTX(RestoreAioRing(r, v), "pid %d: AIO ring %#lx", p.pid,
              static_cast<unsigned long>(v.start()));
  // Final protections where the fill needed PROT_WRITE.
  for (const auto& v : p.mm.vmas()) {
    bool filled = has_pages(v.start(), v.end());
    if (filled && !(v.prot() & PROT_WRITE))
      TRY(r->Syscall(SYS_mprotect, v.start(), v.end() - v.start(), v.prot()));
  }
  // Guard regions, after the pages around them are filled (never stored: nothing to fill).
  for (const auto& g : p.mm.guards()) {
    if (g.end() <= g.start()) continue;
    TRY_CTX(r->Syscall(SYS_madvise, g.start(), g.end() - g.start(), 102 /* MADV_GUARD_INSTALL */),
            "pid %d: guard region %#lx-%#lx", p.pid, static_cast<unsigned long>(g.start()),
            static_cast<unsigned long>(g.end()));
  }
  // Locks after the contents are in place (mlock faults in what is not there yet, as it did).
  for (const auto& v : p.mm.vmas()) {
    if (!v.locked() || v.kind() == img::VMA_VSYSCALL) continue;
    TRY_CTX(r->Syscall(SYS_mlock2, v.start(), v.end() - v.start(),
                       v.lock_onfault() ? MLOCK_ONFAULT : 0),
            "pid %d: mlock %#lx-%#lx (RLIMIT_MEMLOCK without CAP_IPC_LOCK?)", p.pid,
            static_cast<unsigned long>(v.start()), static_cast<unsigned long>(v.end()));
  }
  TRY_CTX(SetMmMap(r, p.mm), "pid %d", p.pid);
  TRY_CTX(FinishShmem(ctx, p), "pid %d", p.pid);
  // Seals last: nothing may change these VMAs from here on.
  for (const auto& v : p.mm.vmas())
    if (v.sealed() && !kernel_made(v))
      TRY_CTX(r->Syscall(462 /* SYS_mseal */, v.start(), v.end() - v.start(), 0),
              "pid %d: mseal %#lx-%#lx", p.pid, static_cast<unsigned long>(v.start()),
              static_cast<unsigned long>(v.end()));
  if (p.mm.mlockall() & MCL_FUTURE)
    TRY_CTX(r->Syscall(SYS_mlockall, p.mm.mlockall() & (MCL_FUTURE | MCL_ONFAULT)),
            "pid %d: mlockall(%#x)", p.pid, p.mm.mlockall());
  ctx.stats.vmas += p.mm.vmas_size();
  ctx.stats.memory_ms += timing::MsSince(t0);
  if (ctx.lazy) {
    mt.Lap("rest");
    std::string parts;
    for (const auto& [name, ms] : mt.phases()) parts += StrFormat(" %s %.2f", name.c_str(), ms);
    LOG_DEBUG("pid %d: mm step (ms):%s", p.pid, parts.c_str());
  }
  return Ok();
}

}  // namespace godwit::restore
