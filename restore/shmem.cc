// Shared memory: the objects behind shared mappings (shared anonymous memory, memfds, deleted
// files mapped shared, SysV segments) and their seals. Before the fork, the coordinator makes each
// dumped object again and fills it (PrepareShmem); the "mm" step maps it into every process that
// mapped it (restore/mm.cc, through AttachSysv for SysV segments), with seals added once nothing
// needs the mappings writable any more (EarlySeals, FinishShmem).
#include "restore/shmem.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/scope_exit.h"

namespace godwit::restore {
namespace {

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

}  // namespace

const img::ShmemObject* FindShmem(const RestoreContext& ctx, uint64_t id) {
  for (const auto& o : ctx.shmem)
    if (o.id() == id) return &o;
  return nullptr;
}

bool IsMemfd(const img::ShmemObject& o) { return o.name().rfind("/memfd:", 0) == 0; }

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

Result<void> PrepareShmem(RestoreContext& ctx) {
  for (const auto& o : ctx.shmem) {
    // A memfd keeps its name ("/memfd:NAME (deleted)" in the maps): an fd on it shows the same.
    std::string name = "godwit-shmem";
    if (IsMemfd(o)) {
      name = o.name().substr(7);
      if (name.size() >= 10 && name.compare(name.size() - 10, 10, " (deleted)") == 0)
        name.resize(name.size() - 10);
      if (name.size() > 249) name.resize(249);
    }
    ASSIGN_OR_RETURN(UniqueFd ufd, NewShmemObject(o, name.c_str()));
    int fd = ufd.get();
    // hugetlbfs has no write(): a hugetlb object is filled through a mapping of it.
    char* hmap = nullptr;
    ScopeExit unmap_h([&] {
      if (hmap) munmap(hmap, o.size());
    });
    struct statfs sfs;
    bool hugefs = fstatfs(fd, &sfs) == 0 && sfs.f_type == 0x958458f6 /* HUGETLBFS_MAGIC */;
    if (hugefs && !o.runs().empty()) {
      void* m = mmap(nullptr, o.size(), PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
      if (m == MAP_FAILED)
        return Errno("mmap hugetlb shmem %lu", static_cast<unsigned long>(o.id()));
      hmap = static_cast<char*>(m);
    }
    if (!hugefs && ftruncate(fd, static_cast<off_t>(o.size())) < 0)
      return Errno("ftruncate shmem %lu", static_cast<unsigned long>(o.id()));
    if (!o.runs().empty()) {
      ASSIGN_OR_RETURN(auto blob, ctx.images->OpenBlob(o.blob()));
      std::vector<char> buf;
      for (const auto& r : o.runs()) {
        uint64_t len = r.npages() * kPage;
        if (r.vaddr() + len > ((o.size() + kPage - 1) & ~(kPage - 1)) + kPage)
          return MakeError(ErrorKind::kBadImage, 0, "%s: run past the object's end",
                           o.blob().c_str());
        buf.resize(len);
        TRY(blob->Read(r.blob_off(), buf.data(), len));
        uint64_t n = std::min<uint64_t>(len, o.size() > r.vaddr() ? o.size() - r.vaddr() : 0);
        if (hmap)
          memcpy(hmap + r.vaddr(), buf.data(), n);
        else if (pwrite(fd, buf.data(), n, static_cast<off_t>(r.vaddr())) !=
                 static_cast<ssize_t>(n))
          return Errno("fill shmem %lu", static_cast<unsigned long>(o.id()));
      }
    }
    ctx.shmem_fds[o.id()] = std::move(ufd);
  }
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
    if (v.pgoff() + len < size)
      TRY(r->Syscall(SYS_munmap, a + v.pgoff() + len, size - v.pgoff() - len));
  } else if (static_cast<uint64_t>(addr) != v.start()) {
    return Err("shmat %d landed at %#lx", id, addr);
  }
  uint32_t got = PROT_READ | (rw ? PROT_WRITE : 0) | (v.prot() & PROT_EXEC);
  if (got != v.prot())
    TRY_CTX(r->Syscall(SYS_mprotect, v.start(), v.end() - v.start(), v.prot()),
            "mprotect SysV segment %d", id);
  return true;
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

}  // namespace godwit::restore
