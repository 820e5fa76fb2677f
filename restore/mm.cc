// Step "mm": replace the coordinator's copy in a stopped restored process with the dumped address
// space, from outside with injected syscalls:
//   unregister glibc's rseq -> munmap everything but the scratch area, vdso/vvar, vsyscall ->
//   move [vvar][vvar_vclock][vdso] to the dumped addresses (mremap, via a free temporary spot) ->
//   mmap every dumped VMA (MAP_FIXED; writable while filling) -> fill pages (preadv in the target
//   straight from a raw page file, or process_vm_writev from the coordinator for compressed ones)
//   -> mprotect to the dumped protections -> PR_SET_MM_MAP (mm fields, auxv, exe).
#include <fcntl.h>
#include <linux/prctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/socket.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <cstring>
#include <set>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "restore/pages.h"
#include "restore/steps.h"

namespace godwit::restore {
namespace {

constexpr uint64_t kPage = 4096;
constexpr size_t kMaxIov = 1024;

bool IsVdsoKind(img::VmaKind k) {
  return k == img::VMA_VDSO || k == img::VMA_VVAR || k == img::VMA_VVAR_VCLOCK;
}

struct Interval {
  uint64_t start, end;
};

// Moves the current vdso block (vvar, vvar_vclock, vdso) to the dumped addresses.
Result<void> MoveVdso(remote::Remote* r, const std::vector<proc::MapsEntry>& cur,
                      const img::MmEntry& mm) {
  std::vector<const proc::MapsEntry*> have;
  for (const auto& m : cur)
    if (m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]") have.push_back(&m);
  std::vector<const img::Vma*> want;
  for (const auto& v : mm.vmas())
    if (IsVdsoKind(v.kind())) want.push_back(&v);
  if (want.empty()) {
    for (auto* m : have) TRY(r->Syscall(SYS_munmap, m->start, m->end - m->start));
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
    TRY_CTX(r->Syscall(SYS_mremap, m->start, m->end - m->start, m->end - m->start,
                       MREMAP_MAYMOVE | MREMAP_FIXED, tmp + (m->start - lo)),
            "mremap %s", m->path.c_str());
  for (auto* m : have)
    TRY_CTX(r->Syscall(SYS_mremap, tmp + (m->start - lo), m->end - m->start, m->end - m->start,
                       MREMAP_MAYMOVE | MREMAP_FIXED, m->start + delta),
            "mremap %s to the dumped address", m->path.c_str());
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
    UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, r->pid(), 0)));
    if (!pidfd.valid()) return Errno("pidfd_open %d", r->pid());
    int got = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), sv[1], 0));
    if (got < 0) return Errno("pidfd_getfd pid %d fd %d", r->pid(), sv[1]);
    st->local_sock.reset(got);
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

Result<long> OpenInTarget(remote::Remote* r, const std::string& path, int flags,
                          int dirfd = AT_FDCWD) {
  ASSIGN_OR_RETURN(uint64_t a, r->WriteString(0, path));
  auto fd = r->Syscall(SYS_openat, static_cast<uint64_t>(dirfd), a, flags | O_CLOEXEC, 0);
  if (!fd.ok())
    return std::move(fd.error().wrap(StrFormat("open %s in pid %d", path.c_str(), r->pid())));
  return fd;
}

const img::ShmemObject* FindShmem(const RestoreContext& ctx, uint64_t id) {
  for (const auto& o : ctx.shmem)
    if (o.id() == id) return &o;
  return nullptr;
}

bool SameIpcNs(pid_t pid) {
  struct stat a, b;
  return stat("/proc/self/ns/ipc", &a) == 0 &&
         stat(StrFormat("/proc/%d/ns/ipc", pid).c_str(), &b) == 0 && a.st_ino == b.st_ino;
}

// A SysV segment that is gone (IPC_RMID'd before, or never on this machine): created again from
// the coordinator with the same id (shm_next_id), key, size, permissions and the dumped contents.
// Only in the coordinator's own IPC namespace (a container's segments come back with its IPC
// namespace, container/ipc.cc).
Result<void> RecreateSysv(RestoreContext& ctx, pid_t pid, const img::ShmemObject& o) {
  int id = o.sysv_shmid();
  if (!o.sysv_valid())
    return MakeError(ErrorKind::kUnsupported, 0,
                     "SysV segment %d is gone and the image lacks its key and mode", id);
  if (!SameIpcNs(pid))
    return MakeError(ErrorKind::kUnsupported, 0,
                     "SysV segment %d is gone and pid %d is in another IPC namespace", id, pid);
  const char* next = "/proc/sys/kernel/shm_next_id";
  TRY_CTX(fs::WriteFile(next, StrFormat("%d", id), false), "%s", next);
  key_t key = o.sysv_destroyed() ? IPC_PRIVATE : static_cast<key_t>(o.sysv_key());
  int huge = o.huge_page_shift() ? SHM_HUGETLB | static_cast<int>(o.huge_page_shift() << 26) : 0;
  uint64_t segsz = o.sysv_size() ? o.sysv_size() : o.size();
  int got = shmget(key, segsz,
                   static_cast<int>(o.sysv_mode() & 0777) | IPC_CREAT | IPC_EXCL | huge);
  if (got < 0) {
    int e = errno;
    (void)fs::WriteFile(next, "-1", false);
    errno = e;
    if (e == EEXIST)
      return MakeError(ErrorKind::kExists, e,
                       "SysV segment %d: key %#x is taken by another segment", id,
                       static_cast<unsigned>(o.sysv_key()));
    return Errno("shmget key %#x size %lu for SysV segment %d", static_cast<unsigned>(key),
                 static_cast<unsigned long>(segsz), id);
  }
  if (got != id) {
    shmctl(got, IPC_RMID, nullptr);
    return MakeError(ErrorKind::kExists, 0,
                     "SysV segment %d: created as id %d (another process took the id)", id, got);
  }
  auto fd = ctx.shmem_fds.find(o.id());
  if (fd != ctx.shmem_fds.end() && segsz > 0) {
    void* at = shmat(id, nullptr, 0);
    if (at == reinterpret_cast<void*>(-1)) return Errno("shmat SysV segment %d", id);
    ssize_t n = pread(fd->second.get(), at, segsz, 0);
    int e = errno;
    shmdt(at);
    errno = e;
    if (n != static_cast<ssize_t>(segsz)) return Errno("fill SysV segment %d", id);
  }
  struct shmid_ds ds = {};
  if (shmctl(id, IPC_STAT, &ds) < 0) return Errno("IPC_STAT SysV segment %d", id);
  ds.shm_perm.uid = o.sysv_uid();
  ds.shm_perm.gid = o.sysv_gid();
  ds.shm_perm.mode = o.sysv_mode() & 0777;
  if (shmctl(id, IPC_SET, &ds) < 0) return Errno("IPC_SET SysV segment %d", id);
  if (o.sysv_locked() && shmctl(id, SHM_LOCK, nullptr) < 0)
    return Errno("SHM_LOCK SysV segment %d", id);
  LOG_INFO("SysV segment %d (key %#x) created again with its dumped contents", id,
           static_cast<unsigned>(o.sysv_key()));
  return Ok();
}

// A SysV shm mapping is attached with shmat: the segment itself (same shmid, same size) when it
// still exists in the process's IPC namespace (its contents are its own), else after creating it
// again (RecreateSysv). false: not a SysV mapping.
Result<bool> AttachSysv(RestoreContext& ctx, remote::Remote* r, const img::Vma& v) {
  const img::ShmemObject* obj = FindShmem(ctx, v.shmem_id());
  if (obj == nullptr || obj->sysv_shmid() < 0) return false;
  int id = obj->sysv_shmid();
  uint64_t size = (obj->size() + kPage - 1) & ~(kPage - 1);
  uint64_t len = v.end() - v.start();
  if (v.pgoff() > size || len > size - v.pgoff())
    return MakeError(ErrorKind::kBadImage, 0, "vma %#lx: past the end of SysV segment %d",
                     static_cast<unsigned long>(v.start()), id);
  bool part = v.pgoff() != 0 || len != size;
  struct shmid_ds ds;
  uint64_t at = r->scratch() + 4096;
  auto st = r->Syscall(SYS_shmctl, static_cast<uint64_t>(id), IPC_STAT, at);
  if (!st.ok()) {
    TRY_CTX(RecreateSysv(ctx, r->pid(), *obj), "pid %d", r->pid());
    TRY_CTX(r->Syscall(SYS_shmctl, static_cast<uint64_t>(id), IPC_STAT, at),
            "SysV segment %d after creating it", id);
  }
  TRY(r->Read(at, &ds, sizeof(ds)));
  uint64_t segsz = obj->sysv_size() ? obj->sysv_size() : obj->size();
  if (ds.shm_segsz != segsz)
    return MakeError(
        ErrorKind::kExists, 0, "SysV segment %d exists with size %lu, the dumped one had %lu", id,
        static_cast<unsigned long>(ds.shm_segsz), static_cast<unsigned long>(segsz));
  // Attached read-write when it was (it may be mprotect'ed writable again), then the dumped
  // protection.
  bool rw = (v.prot() & PROT_WRITE) || v.maywrite();
  uint64_t flags = rw ? 0 : SHM_RDONLY;
  if (v.prot() & PROT_EXEC) flags |= SHM_EXEC;
  // A part of a segment (the rest was unmapped): attached whole wherever the kernel likes, the
  // part moved into place, the rest unmapped (each VMA counts in shm_nattch).
  ASSIGN_OR_RETURN(long addr, r->Syscall(SYS_shmat, static_cast<uint64_t>(id),
                                         part ? 0 : v.start(), flags));
  if (part) {
    uint64_t a = static_cast<uint64_t>(addr);
    TRY_CTX(r->Syscall(SYS_mremap, a + v.pgoff(), len, len, MREMAP_MAYMOVE | MREMAP_FIXED,
                       v.start()),
            "move part %#lx+%lu of SysV segment %d", static_cast<unsigned long>(v.pgoff()),
            static_cast<unsigned long>(len), id);
    if (v.pgoff() > 0) TRY(r->Syscall(SYS_munmap, a, v.pgoff()));
    if (v.pgoff() + len < size) TRY(r->Syscall(SYS_munmap, a + v.pgoff() + len, size - v.pgoff() - len));
  } else if (static_cast<uint64_t>(addr) != v.start()) {
    return Err("shmat %d landed at %#lx", id, addr);
  }
  uint32_t got = PROT_READ | (rw ? PROT_WRITE : 0) | (v.prot() & PROT_EXEC);
  if (got != v.prot())
    TRY_CTX(r->Syscall(SYS_mprotect, v.start(), v.end() - v.start(), v.prot()),
            "mprotect SysV segment %d", id);
  return true;
}

// True when no process after p in the tree maps shared memory object id: p is its last user.
bool LastUser(const RestoreContext& ctx, const ProcessRestore& p, uint64_t id) {
  bool after = false;
  for (const auto& q : ctx.procs) {
    if (q.get() == &p) {
      after = true;
      continue;
    }
    if (!after) continue;
    for (const auto& v : q->mm.vmas())
      if (v.kind() == img::VMA_SHMEM && v.shmem_id() == id) return false;
  }
  return true;
}

// Adds the seals in `want` an object does not have yet.
Result<void> AddSeals(RestoreContext& ctx, const img::ShmemObject& o, uint32_t want) {
  auto fd = ctx.shmem_fds.find(o.id());
  if (fd == ctx.shmem_fds.end()) return Ok();
  int have = fcntl(fd->second.get(), F_GET_SEALS);
  if (have < 0) return Errno("F_GET_SEALS on %s", o.name().c_str());
  uint32_t add = want & ~static_cast<uint32_t>(have);
  if (add != 0 && fcntl(fd->second.get(), F_ADD_SEALS, add) < 0)
    return Errno("F_ADD_SEALS %#x on %s", add, o.name().c_str());
  return Ok();
}

// Seals that must be in place before an object is mapped: with F_SEAL_WRITE the original's
// shared mappings are all read-only and the kernel made them unable to become writable (no
// VM_MAYWRITE), which only a mapping made after the seal gets. F_SEAL_FUTURE_WRITE (writable
// mappings from before it exist) and F_SEAL_SEAL wait for the last user (FinishShmem).
Result<void> EarlySeals(RestoreContext& ctx, const ProcessRestore& p) {
  for (const auto& v : p.mm.vmas()) {
    if (v.kind() != img::VMA_SHMEM) continue;
    const img::ShmemObject* o = FindShmem(ctx, v.shmem_id());
    if (o == nullptr || !o->sealing()) continue;
    uint32_t early = o->seals() & ~static_cast<uint32_t>(F_SEAL_FUTURE_WRITE | F_SEAL_SEAL);
    if (early != 0) TRY(AddSeals(ctx, *o, early));
  }
  return Ok();
}

// Once every process of the tree maps an object: a SysV segment that was IPC_RMID'd is removed
// again (it lives on while attached), a memfd gets its seals back (F_SEAL_WRITE and
// F_SEAL_FUTURE_WRITE would have refused the writable mappings before).
Result<void> FinishShmem(RestoreContext& ctx, ProcessRestore& p) {
  remote::Remote* r = p.remote.get();
  std::set<uint64_t> done;
  for (const auto& v : p.mm.vmas()) {
    if (v.kind() != img::VMA_SHMEM || !done.insert(v.shmem_id()).second) continue;
    if (!LastUser(ctx, p, v.shmem_id())) continue;
    const img::ShmemObject* o = FindShmem(ctx, v.shmem_id());
    if (o == nullptr) continue;
    if (o->sysv_shmid() >= 0 && o->sysv_destroyed()) {
      uint64_t at = r->scratch() + 4096;
      struct shmid_ds ds;
      auto st = r->Syscall(SYS_shmctl, static_cast<uint64_t>(o->sysv_shmid()), IPC_STAT, at);
      if (st.ok()) {
        TRY(r->Read(at, &ds, sizeof(ds)));
        if (!(ds.shm_perm.mode & SHM_DEST))
          TRY_CTX(r->Syscall(SYS_shmctl, static_cast<uint64_t>(o->sysv_shmid()), IPC_RMID, 0),
                  "IPC_RMID SysV segment %d", o->sysv_shmid());
      }
    }
    if (o->sealing() && o->seals() != 0) TRY(AddSeals(ctx, *o, o->seals()));
  }
  return Ok();
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

Result<void> MapVma(RestoreContext& ctx, remote::Remote* r, const img::Vma& v, MmState* st,
                    bool will_fill) {
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
    default:
      return Ok();
  }
  ASSIGN_OR_RETURN(long addr, r->Syscall(SYS_mmap, v.start(), len, prot, flags,
                                         static_cast<uint64_t>(fd), pgoff));
  if (static_cast<uint64_t>(addr) != v.start())
    return Err("mmap %#lx landed at %#lx", static_cast<unsigned long>(v.start()), addr);
  return Ok();
}

// Fills the dumped private pages. Anonymous private VMAs: UFFDIO_COPY from the coordinator
// (restore/pages.h), from buffers a second thread reads the page file into (decompressing zstd
// chunks) ahead of the copy; no page fault, no zeroing. The rest (private file mappings, or
// without userfaultfd): raw chunks are preadv()'d by the target itself, straight from the page
// file into place (one call for up to 1024 runs contiguous in the file), after one
// MADV_POPULATE_WRITE per big run (no fault per page). With much raw data, the coordinator copies
// the second half at the same time on a second thread (process_vm_writev from a mapping of the
// page file: one copy too). The thread is joined before FillPages returns (the coordinator forks
// nothing while it runs). Compressed chunks: the coordinator decompresses and
// process_vm_writev()s them.
Result<void> FillPages(RestoreContext& ctx, ProcessRestore& p, const img::PageMap& pagemap) {
  remote::Remote* r = p.remote.get();
  const auto& runs = pagemap.runs();
  if (runs.empty()) return Ok();
  ASSIGN_OR_RETURN(std::unique_ptr<images::BlobReader> blob, ctx.images->OpenBlob(pagemap.blob()));
  uint64_t total = 0;
  for (const auto& run : runs) total += run.npages() * kPage;
  // The anonymous private VMAs this pagemap writes to: filled with UFFDIO_COPY.
  std::vector<std::pair<uint64_t, uint64_t>> anon;
  for (const auto& v : p.mm.vmas()) {
    if (v.kind() != img::VMA_ANON_PRIVATE) continue;
    // UFFDIO_COPY installs small pages only: a VMA advised MADV_HUGEPAGE is filled through
    // faults instead, so its pages come back as transparent huge pages as they were.
    if (v.madv() & (uint64_t{1} << MADV_HUGEPAGE)) continue;
    bool hit = std::any_of(runs.begin(), runs.end(), [&](const img::PageRun& run) {
      return run.vaddr() < v.end() && run.vaddr() + run.npages() * kPage > v.start();
    });
    if (hit) anon.push_back({v.start(), v.end()});
  }
  std::sort(anon.begin(), anon.end());
  std::unique_ptr<UffdFiller> uffd;
  if (ctx.opts.fill.uffd) {
    ASSIGN_OR_RETURN(uffd, UffdFiller::Open(r, anon));
  }
  struct Piece {
    uint64_t va, off, len;
  };
  std::vector<Piece> raw;  // for the target's preadv (below)
  uint64_t raw_total = 0, done = 0;
  constexpr uint64_t kBatch = 8ULL << 20;
  // What goes through the coordinator: compressed runs, and with a uffd the raw parts it covers.
  // A second thread reads them (pread into a buffer that stays in the cache, or decompresses)
  // ahead of this one, which copies them into place. Copying straight from a mapping of the page
  // file was slower: mapping and unmapping 2 GiB of file pages costs more here than the copy.
  std::vector<ReadAhead::Piece> pieces;
  auto add_pieces = [&](uint64_t va, uint64_t blob_off, uint64_t len) {
    for (uint64_t o = 0; o < len; o += kBatch)
      pieces.push_back({va + o, blob_off + o, std::min(kBatch, len - o)});
  };
  for (const auto& run : runs) {
    uint64_t len = run.npages() * kPage;
    auto ext = blob->RawExtents(run.blob_off(), len);
    if (!ext.ok()) {
      add_pieces(run.vaddr(), run.blob_off(), len);
      continue;
    }
    // The parts of [va, va + n) as file extents, for the target's preadv.
    auto add_raw = [&](uint64_t va, uint64_t n) {
      uint64_t eva = run.vaddr();
      for (const auto& e : *ext) {
        uint64_t s0 = std::max(va, eva), e0 = std::min(va + n, eva + e.len);
        if (s0 < e0) {
          raw.push_back({s0, e.file_off + (s0 - eva), e0 - s0});
          raw_total += e0 - s0;
        }
        eva += e.len;
      }
    };
    if (!uffd) {
      add_raw(run.vaddr(), len);
      continue;
    }
    uffd->Split(run.vaddr(), len, [&](uint64_t va, uint64_t n, bool registered) {
      if (registered)
        add_pieces(va, run.blob_off() + (va - run.vaddr()), n);
      else
        add_raw(va, n);
    });
  }
  ReadAhead ahead(blob.get(), std::move(pieces), kBatch);
  Result<void> copied;
  // Copy what the second thread has read.
  while (true) {
    ReadAhead::Piece pc;
    const char* data = nullptr;
    ASSIGN_OR_RETURN(bool more, ahead.Next(&pc, &data));
    if (!more) break;
    auto put = [&](uint64_t sva, uint64_t slen, bool registered) {
      if (!copied.ok()) return;
      const char* src = data + (sva - pc.va);
      copied = registered ? uffd->Copy(sva, src, slen) : r->Write(sva, src, slen);
    };
    if (uffd)
      uffd->Split(pc.va, pc.len, put);
    else
      put(pc.va, pc.len, false);
    TRY(std::move(copied));
    done += pc.len;
    if (ctx.opts.progress) ctx.opts.progress("memory", done, total);
  }
  if (uffd)
    LOG_DEBUG("pid %d: %s: %lu bytes by UFFDIO_COPY, %lu pages present already", p.pid,
              pagemap.blob().c_str(), static_cast<unsigned long>(uffd->bytes()),
              static_cast<unsigned long>(uffd->present_pages()));
  // Unregisters everything: the pieces left are filled the ordinary way.
  uffd.reset();
  if (raw.empty()) {
    ctx.stats.pages += total / kPage;
    ctx.stats.bytes += total;
    return Ok();
  }

  // The second thread's share: the pieces after split.
  constexpr uint64_t kSplitMin = 64ULL << 20;
  size_t split = raw.size();
  char* map = nullptr;
  size_t map_len = 0;
  if (raw_total >= kSplitMin && std::thread::hardware_concurrency() >= 2 && ctx.opts.fill.split) {
    struct stat st;
    if (fstat(blob->fd(), &st) == 0 && st.st_size > 0) {
      void* m = mmap(nullptr, st.st_size, PROT_READ, MAP_SHARED, blob->fd(), 0);
      if (m != MAP_FAILED) {
        map = static_cast<char*>(m);
        map_len = st.st_size;
        uint64_t acc = 0;
        split = 0;
        while (split < raw.size() && acc < raw_total / 2) acc += raw[split++].len;
      }
    }
  }
  ScopeExit unmap([&] {
    if (map) munmap(map, map_len);
  });
  Result<void> helper_result;
  std::thread helper;
  if (split < raw.size()) {
    helper = std::thread([&, pid = r->pid()] {
      iovec local[kMaxIov], remote[kMaxIov];
      for (size_t i = split; i < raw.size();) {
        size_t k = 0;
        uint64_t want = 0;
        for (; i < raw.size() && k < kMaxIov; ++i, ++k) {
          if (raw[i].off + raw[i].len > map_len) {
            helper_result = MakeError(ErrorKind::kBadImage, 0, "%s: extent beyond the file",
                                      pagemap.blob().c_str());
            return;
          }
          local[k] = {map + raw[i].off, raw[i].len};
          remote[k] = {reinterpret_cast<void*>(raw[i].va), raw[i].len};
          want += raw[i].len;
        }
        ssize_t n = process_vm_writev(pid, local, k, remote, k, 0);
        if (n < 0 || static_cast<uint64_t>(n) != want) {
          helper_result = n < 0 ? Errno("process_vm_writev pid %d", pid)
                                : MakeError(ErrorKind::kGeneric, 0,
                                            "process_vm_writev pid %d: short write", pid);
          return;
        }
      }
    });
  }

  // This thread: the target preadv()s the pieces before split.
  auto fill = [&]() -> Result<void> {
    // In a container the images are not in the tree's mount ns: open through the inherited fd.
    ASSIGN_OR_RETURN(long fd,
                     ctx.images_fd >= 0
                         ? OpenInTarget(r, pagemap.blob(), O_RDONLY, ctx.images_fd)
                         : OpenInTarget(r, ctx.images->dir() + "/" + pagemap.blob(), O_RDONLY));
    uint64_t iov_base = r->scratch() + 8192;
    size_t max_iov = std::min(kMaxIov, (r->scratch_size() - 8192) / sizeof(iovec));
    std::vector<iovec> iov;
    uint64_t batch_off = 0, next_off = 0;
    auto flush = [&]() -> Result<void> {
      if (iov.empty()) return Ok();
      uint64_t want = 0;
      for (auto& x : iov) want += x.iov_len;
      TRY(r->Write(iov_base, iov.data(), iov.size() * sizeof(iovec)));
      ASSIGN_OR_RETURN(long n, r->Syscall(SYS_preadv, static_cast<uint64_t>(fd), iov_base,
                                          iov.size(), batch_off, 0));
      if (static_cast<uint64_t>(n) != want)
        return MakeError(ErrorKind::kBadImage, 0, "%s: short read at file offset %lu",
                         pagemap.blob().c_str(), static_cast<unsigned long>(batch_off));
      done += want;
      if (ctx.opts.progress) ctx.opts.progress("memory", done, total);
      iov.clear();
      return Ok();
    };
    constexpr uint64_t kPopulateMin = 256 * 1024;
    bool populate = ctx.opts.fill.populate;
    for (size_t i = 0; i < split; ++i) {
      // Fault the destination in with one call per contiguous stretch of pieces instead of a
      // page fault per 4 KiB inside preadv.
      if (populate && (i == 0 || raw[i - 1].va + raw[i - 1].len != raw[i].va)) {
        uint64_t end = raw[i].va + raw[i].len;
        for (size_t j = i + 1; j < split && raw[j].va == end; ++j) end += raw[j].len;
        if (end - raw[i].va >= kPopulateMin) {
          auto pr = r->Syscall(SYS_madvise, raw[i].va, end - raw[i].va,
                               23 /* MADV_POPULATE_WRITE */);
          if (!pr.ok()) populate = false;  // older kernel: fall back to faulting
        }
      }
      if (iov.empty() || raw[i].off != next_off || iov.size() >= max_iov) {
        TRY(flush());
        batch_off = raw[i].off;
      }
      iov.push_back({reinterpret_cast<void*>(raw[i].va), raw[i].len});
      next_off = raw[i].off + raw[i].len;
    }
    TRY(flush());
    TRY(r->Syscall(SYS_close, static_cast<uint64_t>(fd)));
    return Ok();
  };
  Result<void> res = split > 0 ? fill() : Result<void>();
  if (helper.joinable()) helper.join();
  TRY(std::move(res));
  TRY(std::move(helper_result));
  ctx.stats.pages += total / kPage;
  ctx.stats.bytes += total;
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

}  // namespace

Result<UniqueFd> NewShmemObject(const img::ShmemObject& o, const char* memfd_name) {
  uint64_t size = (o.size() + kPage - 1) & ~(kPage - 1);
  bool huge = o.huge_page_shift() != 0 && o.name().rfind("/anon_hugepage", 0) == 0;
  if ((huge || o.name().rfind("/dev/zero", 0) == 0) && size > 0 && o.size() == size) {
    // Shared anonymous memory: the kernel's own object (a shmem file named "dev/zero"), through
    // a mapping of it and its map_files link; the mapping goes again at once.
    // Shared hugetlb memory likewise ("/anon_hugepage (deleted)", huge pages of its size).
    int hflags = huge ? MAP_HUGETLB | static_cast<int>(o.huge_page_shift() << MAP_HUGE_SHIFT) : 0;
    void* at = mmap(nullptr, size, PROT_NONE, MAP_SHARED | MAP_ANONYMOUS | hflags, -1, 0);
    if (at == MAP_FAILED && huge) return Errno("mmap shared hugetlb memory, %lu bytes", size);
    if (at == MAP_FAILED) return Errno("mmap shared anonymous %lu bytes", size);
    auto base = reinterpret_cast<unsigned long>(at);
    UniqueFd fd(open(StrFormat("/proc/self/map_files/%lx-%lx", base, base + size).c_str(),
                     O_RDWR | O_CLOEXEC));
    int e = errno;
    munmap(at, size);
    if (fd.valid()) return fd;
    errno = e;
    PLOG_WARN("open the shared anonymous object through map_files: a memfd instead");
  }
  // Sealable when the original was; FinishShmem adds the seals once everything is mapped.
  int fd = memfd_create(memfd_name, MFD_CLOEXEC | (o.sealing() ? MFD_ALLOW_SEALING : 0));
  if (fd < 0) return Errno("memfd_create %s", memfd_name);
  return UniqueFd(fd);
}

Result<void> RestoreMm(RestoreContext& ctx, ProcessRestore& p) {
  auto t0 = std::chrono::steady_clock::now();
  remote::Remote* r = p.remote.get();
  // glibc in the coordinator registered rseq for this thread; its area is about to go away.
  struct {
    uint64_t ptr;
    uint32_t size, sig, flags, pad;
  } rc{};
  if (ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), p.pid,
             reinterpret_cast<void*>(sizeof(rc)), &rc) < 0)
    return Errno("PTRACE_GET_RSEQ_CONFIGURATION %d", p.pid);
  if (rc.ptr != 0)
    TRY_CTX(r->Syscall(SYS_rseq, rc.ptr, rc.size, 1 /*UNREGISTER*/, rc.sig), "rseq unregister");

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
  for (const auto& iv : keep)
    if (iv.end > iv.start) TRY_CTX(r->Syscall(SYS_munmap, iv.start, iv.end - iv.start), "munmap");
  TRY(MoveVdso(r, cur, p.mm));

  MmState st;
  // Which VMAs get pages: those a run (of any round) falls in.
  std::vector<Interval> runs;
  for (const auto& pm : p.pagemaps)
    for (const auto& run : pm.runs())
      runs.push_back({run.vaddr(), run.vaddr() + run.npages() * kPage});
  std::sort(runs.begin(), runs.end(),
            [](const Interval& a, const Interval& b) { return a.start < b.start; });
  // Their union: rounds may overlap.
  std::vector<Interval> uni;
  for (const auto& iv : runs) {
    if (!uni.empty() && iv.start <= uni.back().end)
      uni.back().end = std::max(uni.back().end, iv.end);
    else
      uni.push_back(iv);
  }
  auto has_pages = [&](uint64_t s, uint64_t e) {
    auto it = std::upper_bound(uni.begin(), uni.end(), s,
                               [](uint64_t x, const Interval& iv) { return x < iv.start; });
    if (it != uni.end() && it->start < e) return true;
    return it != uni.begin() && std::prev(it)->end > s;
  };
  TRY_CTX(EarlySeals(ctx, p), "pid %d", p.pid);
  for (const auto& v : p.mm.vmas()) {
    bool fill = has_pages(v.start(), v.end());
    TRY_CTX(MapVma(ctx, r, v, &st, fill), "pid %d: map %#lx-%#lx %s", p.pid,
            static_cast<unsigned long>(v.start()), static_cast<unsigned long>(v.end()),
            v.path().c_str());
  }
  for (auto& [path, fd] : st.file_fds) TRY(r->Syscall(SYS_close, static_cast<uint64_t>(fd)));
  if (st.sock >= 0) TRY(r->Syscall(SYS_close, static_cast<uint64_t>(st.sock)));
  // The vdso block and vsyscall come from the kernel with their own flags: no advice, locks or
  // seals of ours on them.
  auto kernel_made = [](const img::Vma& v) {
    return IsVdsoKind(v.kind()) || v.kind() == img::VMA_VSYSCALL;
  };
  for (const auto& v : p.mm.vmas())
    if (v.madv() != 0 && !kernel_made(v)) TRY_CTX(ApplyAdvice(r, v), "pid %d", p.pid);
  for (const auto& pm : p.pagemaps) TRY_CTX(FillPages(ctx, p, pm), "pid %d: pages", p.pid);
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
  ctx.stats.memory_ms +=
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  return Ok();
}

}  // namespace godwit::restore
