// Step "mm": the address space. VMAs from /proc/PID/maps, mm fields from /proc/PID/stat plus an
// injected brk(0), auxv, the exe link; private pages into pages-<pid>.img (indexed by
// pagemap-<pid>.img); shared memory objects (shared anonymous, memfd, SysV shm) once per object
// into shmem-<id>.img, listed in shmem.img at the end of the dump.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <map>
#include <string_view>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "dump/aio.h"
#include "dump/capture.h"
#include "dump/dirty.h"
#include "dump/pages.h"
#include "dump/pagemap_scan.h"
#include "dump/precopy.h"
#include "dump/steps.h"
#include "dump/vmflags.h"
#include "proto/mm.pb.h"
#include "proto/pagemap.pb.h"

namespace godwit::dump {
namespace {

// Splitting the pages over two files and writers (DumpTuning::split_pages): in stretches of this
// size.
constexpr uint64_t kSplitStretch = 4ULL << 20;
// Kill mode captures a process's pages (dump/capture.h) from this many bytes on.
constexpr uint64_t kCaptureMin = 4ULL << 20;

bool StartsWith(const std::string& s, const char* p) { return s.rfind(p, 0) == 0; }

bool IsDeleted(const std::string& path) {
  static const std::string kDeleted = " (deleted)";
  return path.size() > kDeleted.size() &&
         path.compare(path.size() - kDeleted.size(), kDeleted.size(), kDeleted) == 0;
}

// Shared memory objects (VMA_SHMEM: contents saved once per inode through map_files) are the
// shared anonymous / memfd / SysV mappings, and also whatever cannot be opened again by path on
// restore: mappings of deleted files, shared or private. A private VMA_SHMEM (MAP_PRIVATE in
// flags: a private memfd or deleted-file mapping) is restored as a private mapping of the object,
// with its written (copied-on-write) pages on top, like a private file mapping.
Result<img::VmaKind> Classify(const proc::MapsEntry& m, pid_t pid) {
  if (StartsWith(m.path, "socket:[")) return img::VMA_PACKET_RING;
  if (m.path == "[vdso]") return img::VMA_VDSO;
  if (m.path == "[vvar]") return img::VMA_VVAR;
  if (m.path == "[vvar_vclock]") return img::VMA_VVAR_VCLOCK;
  if (m.path == "[vsyscall]") return img::VMA_VSYSCALL;
  bool shm_like = StartsWith(m.path, "/dev/zero") || StartsWith(m.path, "/SYSV") ||
                  StartsWith(m.path, "/memfd:");
  bool file = m.inode != 0 && !m.path.empty() && m.path[0] == '/';
  if (m.shared) {
    if (shm_like || (file && IsDeleted(m.path))) return img::VMA_SHMEM;
    if (m.inode == 0)
      return MakeError(ErrorKind::kUnsupported, 0, "pid %d: shared mapping %#lx-%#lx of %s", pid,
                       static_cast<unsigned long>(m.start), static_cast<unsigned long>(m.end),
                       m.path.c_str());
    return img::VMA_FILE_SHARED;
  }
  // Private hugetlb memory (MAP_HUGETLB, or a private map of hugetlbfs shm) is anonymous memory
  // with huge pages: mapped with MAP_HUGETLB again (huge_page_shift), its pages stored as usual.
  if (StartsWith(m.path, "/anon_hugepage")) return img::VMA_ANON_PRIVATE;
  if (file) {
    if (StartsWith(m.path, "/SYSV"))
      return MakeError(ErrorKind::kUnsupported, 0, "pid %d: private mapping of %s at %#lx", pid,
                       m.path.c_str(), static_cast<unsigned long>(m.start));
    if (shm_like || IsDeleted(m.path)) return img::VMA_SHMEM;
    return img::VMA_FILE_PRIVATE;
  }
  return img::VMA_ANON_PRIVATE;
}

// Guard regions (MADV_GUARD_INSTALL) in [start, end), sorted, from one PAGEMAP_SCAN walk
// (PAGE_IS_GUARD, Linux 6.14+; an older kernel has none to find: empty). Their pagemap entries
// look swapped out (bit 62) but cannot be read: the page dump must skip them.
Result<std::vector<PageRange>> ReadGuards(pid_t pid, uint64_t start, uint64_t end) {
  std::vector<PageRange> out;
  if (start >= end) return out;
  ASSIGN_OR_RETURN(UniqueFd pm, fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY));
  pagemap_scan::Query q;
  q.category_anyof_mask = pagemap::kPageIsGuard;
  q.return_mask = pagemap::kPageIsGuard;
  auto r = pagemap_scan::Scan(pm.get(), start, end, q, &out);
  if (!r.ok()) {
    int e = r.error().sys_errno();
    if (e == EINVAL || e == ENOTTY) return std::vector<PageRange>{};  // no PAGE_IS_GUARD here
    return std::move(r.error().wrap(StrFormat("pid %d: guard regions", pid)));
  }
  return out;
}

// ranges minus guards (both sorted, non-overlapping).
std::vector<PageRange> Subtract(const std::vector<PageRange>& ranges,
                                const std::vector<PageRange>& guards) {
  if (guards.empty()) return ranges;
  std::vector<PageRange> out;
  size_t g = 0;
  for (const auto& r : ranges) {
    uint64_t s = r.addr, e = r.addr + r.npages * kPage;
    while (g < guards.size() && guards[g].addr + guards[g].npages * kPage <= s) ++g;
    for (size_t k = g; k < guards.size() && guards[k].addr < e; ++k) {
      uint64_t gs = guards[k].addr, ge = gs + guards[k].npages * kPage;
      if (gs > s) out.push_back({s, (gs - s) / kPage});
      s = std::max(s, ge);
    }
    if (s < e) out.push_back({s, (e - s) / kPage});
  }
  return out;
}

// A mapping of a socket (zdtm packet_sock_mmap: PACKET_RX_RING / PACKET_TX_RING rings mapped
// into memory): only a packet socket's rings are mapped again (from the process's fd of that
// socket, after the files restored the socket with its rings); their frames are not stored (the
// kernel owns what it writes there, as for the queued packets files/kind_packet.cc drops).
// Refused when no fd of the process holds the socket (it closed the fd after mmap): restore has
// no socket to map.
Result<void> DumpSocketMapping(pid_t pid, const proc::MapsEntry& m, img::Vma* v) {
  const std::string ino = std::to_string(m.inode);
  bool packet = false;
  if (auto net = fs::ReadFile(StrFormat("/proc/%d/net/packet", pid)); net.ok()) {
    // sk RefCnt Type Proto Iface R Rmem User Inode: the inode is the last column.
    for (std::string_view rest = *net; !rest.empty();) {
      size_t nl = rest.find('\n');
      std::string_view line = rest.substr(0, nl);
      rest = nl == std::string_view::npos ? std::string_view() : rest.substr(nl + 1);
      size_t sp = line.find_last_of(' ');
      if (sp != std::string_view::npos && line.substr(sp + 1) == ino) packet = true;
    }
  }
  if (!packet)
    return MakeError(ErrorKind::kUnsupported, 0,
                     "pid %d: mapping %#lx-%#lx of %s: only a packet socket's rings can be mapped "
                     "again",
                     pid, static_cast<unsigned long>(m.start), static_cast<unsigned long>(m.end),
                     m.path.c_str());
  auto fds = fs::ListDir(StrFormat("/proc/%d/fd", pid));
  if (fds.ok()) {
    for (const auto& n : *fds) {
      char buf[64];
      ssize_t len =
          readlink(StrFormat("/proc/%d/fd/%s", pid, n.c_str()).c_str(), buf, sizeof(buf) - 1);
      if (len > 0 && std::string_view(buf, len) == m.path) {
        v->set_ring_fd(atoi(n.c_str()));
        return Ok();
      }
    }
  }
  return MakeError(ErrorKind::kUnsupported, 0,
                   "pid %d: packet ring %#lx-%#lx of %s is mapped but no fd of the process holds "
                   "the socket",
                   pid, static_cast<unsigned long>(m.start), static_cast<unsigned long>(m.end),
                   m.path.c_str());
}

}  // namespace

// A SysV segment's key, permissions and IPC_RMID state, read inside the process (its IPC
// namespace): restore needs them to create the segment again when it is gone.
Result<void> DumpSysvInfo(remote::Remote* r, int shmid, img::ShmemObject* obj) {
  struct shmid_ds ds;
  uint64_t at = r->scratch() + 4096;
  auto st = r->Syscall(SYS_shmctl, static_cast<uint64_t>(shmid), IPC_STAT, at);
  if (!st.ok()) {
    LOG_WARN("pid %d: IPC_STAT of SysV segment %d: %s", r->pid(), shmid,
             st.error().to_string().c_str());
    return Ok();
  }
  TRY(r->Read(at, &ds, sizeof(ds)));
  obj->set_sysv_valid(true);
  obj->set_sysv_key(ds.shm_perm.__key);
  obj->set_sysv_mode(ds.shm_perm.mode & 0777);
  obj->set_sysv_uid(ds.shm_perm.uid);
  obj->set_sysv_gid(ds.shm_perm.gid);
  obj->set_sysv_destroyed((ds.shm_perm.mode & SHM_DEST) != 0);
  obj->set_sysv_locked((ds.shm_perm.mode & SHM_LOCKED) != 0);
  obj->set_sysv_size(ds.shm_segsz);
  return Ok();
}

Result<void> DumpShmemObject(DumpContext& ctx, pid_t pid, const proc::MapsEntry& m, img::Vma* vma,
                             remote::Remote* r) {
  uint64_t dev = (static_cast<uint64_t>(m.dev_major) << 32) | m.dev_minor;
  auto key = std::make_pair(dev, m.inode);
  auto it = ctx.shmem_ids.find(key);
  if (it != ctx.shmem_ids.end()) {
    vma->set_shmem_id(it->second);
    return Ok();
  }
  uint64_t id = ctx.next_shmem_id++;
  ctx.shmem_ids[key] = id;
  vma->set_shmem_id(id);
  std::string link =
      StrFormat("/proc/%d/map_files/%lx-%lx", pid, static_cast<unsigned long>(m.start),
                static_cast<unsigned long>(m.end));
  ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(link, O_RDONLY));
  struct stat st;
  if (fstat(fd.get(), &st) < 0) return Errno("stat %s", link.c_str());
  img::ShmemObject obj;
  obj.set_id(id);
  obj.set_size(st.st_size);
  obj.set_dev(dev);
  obj.set_inode(m.inode);
  obj.set_name(m.path);
  // A SysV segment's inode number is its shmid: restore re-attaches the segment when it exists.
  obj.set_sysv_shmid(StartsWith(m.path, "/SYSV") ? static_cast<int32_t>(m.inode) : -1);
  if (obj.sysv_shmid() >= 0 && r != nullptr) TRY(DumpSysvInfo(r, obj.sysv_shmid(), &obj));
  // Seals: shmem objects not made by memfd_create(MFD_ALLOW_SEALING) report F_SEAL_SEAL alone.
  if (int seals = fcntl(fd.get(), F_GET_SEALS); seals >= 0 && seals != F_SEAL_SEAL) {
    obj.set_sealing(true);
    obj.set_seals(seals);
  }
  obj.set_blob(StrFormat("shmem-%lu.img", static_cast<unsigned long>(id)));
  // Allocated ranges only (SEEK_DATA/SEEK_HOLE on shmem).
  std::vector<PageRange> ranges;
  off_t size = st.st_size;
  for (off_t off = 0; off < size;) {
    off_t d = lseek(fd.get(), off, SEEK_DATA);
    if (d < 0) break;  // ENXIO: no more data
    off_t h = lseek(fd.get(), d, SEEK_HOLE);
    if (h < 0) h = size;
    d &= ~static_cast<off_t>(kPage - 1);
    h = std::min<off_t>((h + kPage - 1) & ~static_cast<off_t>(kPage - 1),
                        (size + kPage - 1) & ~static_cast<off_t>(kPage - 1));
    ranges.push_back({static_cast<uint64_t>(d), static_cast<uint64_t>(h - d) / kPage});
    off = h;
  }
  uint64_t total = 0;
  for (auto& r : ranges) total += r.npages * kPage;
  ASSIGN_OR_RETURN(
      images::BlobWriter blob,
      images::BlobWriter::Create(*ctx.sink, obj.blob(), ctx.opts.compression, ctx.opts.zstd_level));
  {
    // An object whose size is not a page multiple (a SysV segment or memfd of any size) cannot
    // be read whole pages at a time through its fd (short read at the end): read it through a
    // mapping of it here instead (the tail of the last page reads as zeros, as it does mapped).
    uint64_t rounded = (static_cast<uint64_t>(size) + kPage - 1) & ~(kPage - 1);
    void* self_map = nullptr;
    if (static_cast<uint64_t>(size) % kPage != 0) {
      self_map = mmap(nullptr, rounded, PROT_READ, MAP_SHARED, fd.get(), 0);
      if (self_map == MAP_FAILED) return Errno("mmap %s (%lu bytes)", link.c_str(), rounded);
    }
    ScopeExit unmap([&] {
      if (self_map) munmap(self_map, rounded);
    });
    PageWriter w(&blob, self_map ? getpid() : pid, fd.get(), total);
    for (auto& r : ranges) {
      uint64_t src = self_map ? reinterpret_cast<uint64_t>(self_map) + r.addr : r.addr;
      TRY(w.Add(src, r.addr, r.npages, self_map == nullptr));
    }
    TRY(w.Finish());
    for (const auto& r : w.runs()) *obj.add_runs() = r;
    ctx.stats.shmem_pages += w.pages();
  }
  TRY(blob.Close());
  ctx.stats.bytes_logical += blob.logical_size();
  ctx.stats.bytes_stored += blob.stored_size();
  ctx.shmem.push_back(std::move(obj));
  return Ok();
}

std::string SecondPageBlobName(pid_t pid) { return StrFormat("pages-%d.2.img", pid); }

Result<images::BlobWriter> OpenPageBlob(DumpContext& ctx, pid_t pid, bool raw) {
  images::Compression c = raw ? images::Compression::kNone : ctx.opts.compression;
  ASSIGN_OR_RETURN(images::BlobWriter b,
                   images::BlobWriter::Create(*ctx.sink, StrFormat("pages-%d.img", pid), c,
                                              ctx.opts.zstd_level));
  // zstd is the bottleneck of a compressed dump: a second compressing thread.
  if (c == images::Compression::kZstd) TRY(b.SetThreads(2));
  return b;
}

Result<void> DumpMm(DumpContext& ctx, ProcessDump& p) {
  pid_t pid = p.pid;
  ASSIGN_OR_RETURN(remote::Remote * r, ctx.RemoteFor(p));
  timing::PhaseTimer pt;
  // smaps costs ~4 us per VMA (16 ms for 4000 VMAs, ten times /proc/PID/maps) in the kernel:
  // read it on a second thread while this one injects, reads maps and walks the pagemap. The
  // flags are filled into the VMAs once both are done.
  Result<std::map<uint64_t, VmFlags>> vmflags_res = std::map<uint64_t, VmFlags>{};
  // After pre-copy, the last round's smaps flags when no VMA changed since (a BPF iterator
  // compares them in microseconds; dump/vma_iter.h): no smaps walk while frozen.
  std::optional<std::map<uint64_t, VmFlags>> reused;
  if (ctx.opts.precopy && ctx.opts.precopy->Tracker(pid) != nullptr) {
    if (const VmFlagsSnapshot* snap = ctx.opts.precopy->VmFlagsOf(pid))
      reused = ReuseVmFlags(pid, *snap, r->area_start(), r->area_end());
  } else if (auto it = ctx.vmflags.find(pid); it != ctx.vmflags.end()) {
    reused = ReuseVmFlags(pid, it->second, r->area_start(), r->area_end());
  }
  // The maps first (brk(0), the stat, auxv and exe below change no mapping): with few VMAs smaps
  // is read in line after the pagemap walk, as cheap as starting a thread (~4 us per VMA), and no
  // hand-off (on a busy machine the join waited for the thread to get a core: up to 3 ms for an
  // idle busybox's 11 VMAs).
  ASSIGN_OR_RETURN(auto maps0, proc::ReadMaps(pid));
  constexpr size_t kSmapsThreadMin = 64;
  std::thread smaps_thread;
  if (!reused && maps0.size() >= kSmapsThreadMin)
    smaps_thread = std::thread([&] { vmflags_res = ReadVmFlags(pid); });
  ScopeExit join_smaps([&] {
    if (smaps_thread.joinable()) smaps_thread.join();
  });
  ASSIGN_OR_RETURN(long brk, r->Syscall(SYS_brk, 0));
  ASSIGN_OR_RETURN(proc::Stat st, proc::ReadStat(pid));
  img::MmEntry mm;
  mm.set_pid(pid);
  mm.set_start_code(st.start_code);
  mm.set_end_code(st.end_code);
  mm.set_start_data(st.start_data);
  mm.set_end_data(st.end_data);
  mm.set_start_brk(st.start_brk);
  mm.set_brk(brk);
  mm.set_start_stack(st.start_stack);
  mm.set_arg_start(st.arg_start);
  mm.set_arg_end(st.arg_end);
  mm.set_env_start(st.env_start);
  mm.set_env_end(st.env_end);
  ASSIGN_OR_RETURN(std::string auxv, fs::ReadFile(StrFormat("/proc/%d/auxv", pid)));
  mm.set_auxv(auxv);
  char exe[4096];
  ssize_t n = readlink(StrFormat("/proc/%d/exe", pid).c_str(), exe, sizeof(exe) - 1);
  if (n > 0) mm.set_exe_path(std::string(exe, n));

  pt.Lap("head");
  auto maps = WithoutRange(maps0, r->area_start(), r->area_end());
  uint64_t lo = ~0ULL, hi = 0;
  for (const auto& m : maps) {
    if (m.path == "[vsyscall]") continue;
    lo = std::min(lo, m.start);
    hi = std::max(hi, m.end);
  }
  ASSIGN_OR_RETURN(std::vector<PageRange> guards, ReadGuards(pid, lo, hi));
  for (const auto& g : guards) {
    img::AddrRange* a = mm.add_guards();
    a->set_start(g.addr);
    a->set_end(g.addr + g.npages * kPage);
  }
  pt.Lap("maps+guards");
  ASSIGN_OR_RETURN(auto source, PresentPages::Open(pid, ctx.zero_pfn));
  std::vector<PageRange> readable, unreadable;
  // After pre-copy rounds, the present pages of VMAs tracked since: only the ones written since
  // the last round are stored now.
  std::vector<PageRange> r_cov, u_cov;
  std::vector<PageRange> dirty_cov;  // of those, the ones written since the last round
  std::vector<PageRange> swapped_pf;  // of those in private file mappings, "swapped" ones
  DirtyTracker* tracker = ctx.opts.precopy ? ctx.opts.precopy->Tracker(pid) : nullptr;
  std::vector<PageRange> tracked;
  if (tracker) {
    ASSIGN_OR_RETURN(tracked, tracker->Tracked(maps));
  }
  PageCounts counts;
  UniqueFd scan_fd;
  bool use_scan = true;
  pt.Lap("tracked");
  for (const auto& m : maps) {
    ASSIGN_OR_RETURN(img::VmaKind kind, Classify(m, pid));
    img::Vma* v = mm.add_vmas();
    v->set_start(m.start);
    v->set_end(m.end);
    v->set_prot(m.prot);
    v->set_kind(kind);
    v->set_path(m.path);
    v->set_pgoff(m.pgoff);
    v->set_dev((static_cast<uint64_t>(m.dev_major) << 32) | m.dev_minor);
    v->set_inode(m.inode);
    v->set_deleted(IsDeleted(m.path));
    uint32_t flags = m.shared ? MAP_SHARED : MAP_PRIVATE;
    if (kind == img::VMA_ANON_PRIVATE) flags |= MAP_ANONYMOUS;
    v->set_flags(flags);  // + the VmFlags ones below
    if (IsAioRing(m)) {  // dump/aio.cc: io_setup again on restore, not shared memory
      TRY(DumpAioRing(pid, r, m, v));
      continue;
    }
    if (kind == img::VMA_PACKET_RING) {
      TRY(DumpSocketMapping(pid, m, v));
      continue;
    }
    if (kind == img::VMA_SHMEM) {
      TRY_CTX(DumpShmemObject(ctx, pid, m, v, r), "pid %d: shared memory %s", pid, m.path.c_str());
      if (m.shared) continue;
      // Private: its written pages too, below (the unwritten ones are the object's).
    } else if (kind != img::VMA_ANON_PRIVATE && kind != img::VMA_FILE_PRIVATE) {
      continue;
    }
    bool covered = tracker && Contains(tracked, m.start, m.end);
    auto& dst =
        (m.prot & PROT_READ) ? (covered ? r_cov : readable) : (covered ? u_cov : unreadable);
    if (covered) {
      // Only the dirty ones among these are read: ranges from one PAGEMAP_SCAN walk suffice
      // (reading an entry per page cost ~50 ms per GiB while frozen), the same walk that says
      // which were written since the last round (a second walk for those, re-protecting them,
      // cost ~1-2 ms per GiB more, frozen).
      if (!scan_fd) {
        ASSIGN_OR_RETURN(scan_fd, fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY));
      }
      TRY_CTX(pagemap_scan::ContentAndWritten(scan_fd.get(), m.start, m.end,
                                              kind != img::VMA_ANON_PRIVATE, &dst, &dirty_cov,
                                              &swapped_pf),
              "pid %d: pages of %#lx-%#lx", pid, static_cast<unsigned long>(m.start),
              static_cast<unsigned long>(m.end));
      continue;
    }
    if (use_scan) {
      // One PAGEMAP_SCAN walk returning ranges instead of an entry per page (2 GiB: ~100 ->
      // ~15 ms frozen); the kernel lacks it before 6.7: the pagemap then.
      if (!scan_fd) {
        ASSIGN_OR_RETURN(scan_fd, fs::Open(StrFormat("/proc/%d/pagemap", pid), O_RDONLY));
      }
      size_t had = dst.size();
      PageCounts before = counts;
      auto sc = pagemap_scan::ContentPagesCounted(scan_fd.get(), m.start, m.end,
                                                  kind != img::VMA_ANON_PRIVATE, &dst, &counts);
      if (sc.ok()) continue;
      if (sc.error().sys_errno() != EINVAL && sc.error().sys_errno() != ENOTTY)
        return std::move(sc.error().wrap(StrFormat("pid %d: pages", pid)));
      use_scan = false;
      dst.resize(had);
      counts = before;
    }
    TRY(source->Collect(m.start, m.end, kind != img::VMA_ANON_PRIVATE, &dst, &counts));
  }
  if (!swapped_pf.empty()) {
    // Write-protect markers are no pages: one where a protected copy of a file page was zapped
    // since (MADV_DONTNEED: the file's page shows again there) must not keep a round's copy
    // (present below decides which earlier pages stay), and the untouched pages of a file
    // mapping all hold one.
    ASSIGN_OR_RETURN(std::vector<PageRange> markers,
                     pagemap_scan::PteMarkers(scan_fd.get(), swapped_pf));
    r_cov = Subtract(r_cov, markers);
    u_cov = Subtract(u_cov, markers);
  }
  if (!guards.empty()) {
    readable = Subtract(readable, guards);
    unreadable = Subtract(unreadable, guards);
    r_cov = Subtract(r_cov, guards);
    u_cov = Subtract(u_cov, guards);
  }
  pt.Lap("collect");
  if (smaps_thread.joinable()) {
    smaps_thread.join();
  } else if (!reused) {
    vmflags_res = ReadVmFlags(pid);
  }
  pt.Lap("smaps_wait");
  if (reused) vmflags_res = std::move(*reused);
  ASSIGN_OR_RETURN(auto vmflags, std::move(vmflags_res));
  // The scratch area was mmap'ed by us just now: mm->def_flags (mlockall(MCL_FUTURE)) shows there.
  if (auto it = vmflags.find(r->area_start()); it != vmflags.end() && it->second.locked)
    mm.set_mlockall(MCL_FUTURE | (it->second.onfault ? MCL_ONFAULT : 0));
  for (img::Vma& v : *mm.mutable_vmas()) {
    auto it = vmflags.find(v.start());
    if (it == vmflags.end()) {
      if (v.path() == "[stack]") v.set_flags(v.flags() | MAP_GROWSDOWN);
      continue;
    }
    const VmFlags& f = it->second;
    if (v.kind() == img::VMA_AIO_RING) continue;  // the kernel's flags, made again by io_setup
    bool shared = (v.flags() & MAP_SHARED) != 0;
    v.set_flags(v.flags() | (f.growsdown ? MAP_GROWSDOWN : 0) | (f.noreserve ? MAP_NORESERVE : 0));
    v.set_madv(f.madv);
    v.set_locked(f.locked);
    v.set_lock_onfault(f.onfault);
    v.set_sealed(f.sealed);
    v.set_droppable(f.droppable);
    v.set_maywrite(shared && f.maywrite);
    if (f.hugetlb && f.kernel_page_kb > 4) {
      v.set_huge_page_shift(10 + 63 - __builtin_clzll(f.kernel_page_kb));
      if (v.kind() == img::VMA_SHMEM)
        for (auto& o : ctx.shmem)
          if (o.id() == v.shmem_id()) o.set_huge_page_shift(v.huge_page_shift());
    }
  }
  // MAP_DROPPABLE memory (zdtm maps11): the kernel may drop its content at any time, and a
  // restore drops it (CRIU's choice): its pages are not saved; restored, it reads zeros.
  std::vector<PageRange> droppable;
  for (const img::Vma& v : mm.vmas())
    if (v.droppable() && v.end() > v.start())
      droppable.push_back({v.start(), (v.end() - v.start()) / kPage});
  if (!droppable.empty()) {
    readable = Subtract(readable, droppable);
    unreadable = Subtract(unreadable, droppable);
    r_cov = Subtract(r_cov, droppable);
    u_cov = Subtract(u_cov, droppable);
  }
  ctx.stats.vmas += mm.vmas_size();
  ctx.stats.pages_zero += counts.zero;
  ctx.stats.pages_file += counts.file;
  TRY(images::WriteImage(*ctx.sink, StrFormat("mm-%d.img", pid), mm));

  // Pages. Earlier pre-copy rounds' pages stay valid where the page is still present now (and was
  // not written since: those are in this round's set, which restore applies last).
  auto t0 = std::chrono::steady_clock::now();
  std::vector<img::PageMap> earlier;
  if (tracker) {
    std::vector<PageRange> present =
        MergeRanges(MergeRanges(readable, r_cov), MergeRanges(unreadable, u_cov));
    pt.Lap("mm_img");
    readable = MergeRanges(readable, Intersect(r_cov, dirty_cov));
    unreadable = MergeRanges(unreadable, Intersect(u_cov, dirty_cov));
    pt.Lap("dirty");
    earlier = ctx.opts.precopy->EarlierMaps(pid, present);
    pt.Lap("earlier");
  }
  img::PageMap pm;
  pm.set_pid(pid);
  pm.set_blob(StrFormat("pages-%d.img", pid));
  pm.set_zero_pages_skipped(counts.zero);
  pm.set_file_pages_skipped(counts.file);
  uint64_t total = 0;
  for (auto& x : readable) total += x.npages * kPage;
  for (auto& x : unreadable) total += x.npages * kPage;
  std::unique_ptr<images::BlobWriter> blob_owner;
  if (auto it = ctx.page_blobs.find(pid); it != ctx.page_blobs.end()) {
    blob_owner = std::move(it->second);
    ctx.page_blobs.erase(it);
  } else {
    ASSIGN_OR_RETURN(images::BlobWriter b, OpenPageBlob(ctx, pid));
    blob_owner = std::make_unique<images::BlobWriter>(std::move(b));
  }
  images::BlobWriter& blob = *blob_owner;
  pt.Lap("blob");
  UniqueFd mem;
  if (!unreadable.empty()) {
    ASSIGN_OR_RETURN(mem, fs::Open(StrFormat("/proc/%d/mem", pid), O_RDONLY));
  }
  // Both cores: with a raw page file in a directory and enough pages, a second thread copies
  // part of them into a second file (its own pagemap record) while the process writes its own
  // share into the first: two writers into one file would serialize on its inode. The pages are
  // cut into stretches taken in address order by whichever writer is ready (each file's runs
  // stay sorted): the faster one takes more.
  std::unique_ptr<images::BlobWriter> blob2;
  const bool target_write = ctx.opts.tuning.target_write;
  if (auto it = ctx.page_blobs2.find(pid); it != ctx.page_blobs2.end()) {
    blob2 = std::move(it->second);
    ctx.page_blobs2.erase(it);
  }
  if (!blob2 && ctx.opts.tuning.split_pages && !blob.compressed() && blob.fd() >= 0 &&
      total >= kSplitPagesMin && std::thread::hardware_concurrency() >= 2) {
    auto b = images::BlobWriter::Create(*ctx.sink, SecondPageBlobName(pid),
                                        images::Compression::kNone, ctx.opts.zstd_level);
    if (b.ok()) blob2 = std::make_unique<images::BlobWriter>(std::move(*b));
  }
  img::PageMap pm2;
  pm2.set_pid(pid);
  // Kill mode: the pages captured by reference now, copied once the whole tree is captured
  // (dump/capture.h). Only where the image has room for all of them (the tree cannot run on once
  // its memory is released) and enough fds remain for the holder pipes; otherwise copied now.
  // Small processes are copied at once: for a few MiB the capture's set-up (a pipe made in the
  // process, drain threads, the release) costs more than the copy (an idle busybox container's
  // memory step: ~4 vs ~1.5 ms, medians of 6).
  if (ctx.capture && !tracker && total >= kCaptureMin) {
    int64_t room = blob.available();
    int64_t fds = static_cast<int64_t>(PageCapture::FdsFor(total));
    if (room >= 0 && static_cast<uint64_t>(room) >= total + total / 64 + (1 << 20) &&
        fds <= ctx.capture_fds) {
      if (!blob2 && total >= kSplitPagesMin && blob.fd() >= 0 &&
          std::thread::hardware_concurrency() >= 2) {
        // A second file with its own drain: two writers into one file serialize on its inode.
        auto b = images::BlobWriter::Create(
            *ctx.sink, SecondPageBlobName(pid),
            blob.compressed() ? ctx.opts.compression : images::Compression::kNone,
            ctx.opts.zstd_level);
        if (b.ok()) blob2 = std::make_unique<images::BlobWriter>(std::move(*b));
      }
      if (!mem) {
        ASSIGN_OR_RETURN(mem, fs::Open(StrFormat("/proc/%d/mem", pid), O_RDONLY));
      }
      std::vector<images::BlobWriter*> blobs{&blob};
      if (blob2) blobs.push_back(blob2.get());
      auto cap = PageCapture::Start(r, mem.get(), blobs, total);
      if (cap.ok()) {
        auto& c = *cap;
        for (size_t i = 0, j = 0; i < readable.size() || j < unreadable.size();) {
          bool take_r = j >= unreadable.size() ||
                        (i < readable.size() && readable[i].addr < unreadable[j].addr);
          const PageRange& x = take_r ? readable[i++] : unreadable[j++];
          TRY_CTX(c->Add(x.addr, x.npages, !take_r), "pid %d: capture pages", pid);
        }
        TRY_CTX(c->EndCapture(), "pid %d: capture pages", pid);
        ctx.capture_fds -= fds;
        if (blob2) {
          ctx.second_page_blobs.push_back({pid, SecondPageBlobName(pid)});
          pm2.set_blob(SecondPageBlobName(pid));
        }
        DumpContext::Captured d;
        d.pid = pid;
        d.blob = std::move(blob_owner);
        d.blob2 = std::move(blob2);
        d.pm = std::move(pm);
        d.pm2 = std::move(pm2);
        d.mem = std::move(mem);
        d.capture = std::move(c);
        ctx.captured.push_back(std::move(d));
        ctx.stats.memdump_ms += timing::MsSince(t0);
        pt.Lap("capture");
        std::string laps;
        for (const auto& [k, ms] : pt.phases()) laps += StrFormat(" %s %.1f", k.c_str(), ms);
        LOG_DEBUG("pid %d: mm step (ms):%s", pid, laps.c_str());
        return Ok();
      }
      LOG_DEBUG("pid %d: pages not captured (%s): copied while frozen", pid,
                cap.error().to_string().c_str());
    }
  }
  {
    // r: pid writes its own pages.
    PageWriter w(&blob, pid, mem.get(), total, target_write ? r : nullptr);
    std::unique_ptr<PageWriter> w2;
    if (blob2) {
      ctx.second_page_blobs.push_back({pid, SecondPageBlobName(pid)});
      pm2.set_blob(SecondPageBlobName(pid));
      // Read by this process (process_vm_readv) into buffers, appended by its writer thread.
      w2 = std::make_unique<PageWriter>(blob2.get(), pid, mem.get(), total / 2, nullptr);
    }
    ReleaseQueue released;
    // Only where the image has room for all of it: a dump failing on a full file system must
    // leave the tree intact (a stream's room is unknown: nothing released). Not after pre-copy
    // (tracker): the rounds already hold the tree's memory in the image, so its peak is behind
    // us, and releasing the whole hull of the delta's runs freed most of the tree inside the
    // freeze (2 GiB: ~175 ms frozen for an 8 MiB delta); the kill frees it after the freeze.
    int64_t room = blob.available();
    if (ctx.release && !tracker && room >= 0 &&
        static_cast<uint64_t>(room) >= total + total / 64 + (1 << 20)) {
      ctx.MarkReleased();  // from the first batch on, the tree cannot run again
      w.SetRelease(r, w2 ? &released : nullptr, /*hull=*/!w2);
      if (w2) w2->SetRelease(nullptr, &released, false);
    } else if (ctx.release && !tracker) {
      LOG_INFO("pid %d: %lld bytes free for %lu bytes of pages: its memory is kept until the end",
               pid, static_cast<long long>(room), static_cast<unsigned long>(total));
    }
    // Runs must be added in address order so the pagemap is sorted: merge both lists, cut into
    // stretches.
    struct Stretch {
      uint64_t addr, npages;
      bool use_fd;
    };
    std::vector<Stretch> work;
    const uint64_t per = w2 ? kSplitStretch / kPage : ~0ULL;
    for (size_t i = 0, j = 0; i < readable.size() || j < unreadable.size();) {
      bool take_r =
          j >= unreadable.size() || (i < readable.size() && readable[i].addr < unreadable[j].addr);
      const PageRange& x = take_r ? readable[i++] : unreadable[j++];
      for (uint64_t k = 0; k < x.npages; k += per)
        work.push_back({x.addr + k * kPage, std::min(per, x.npages - k), !take_r});
    }
    std::atomic<size_t> next{0};
    std::atomic<uint64_t> done{0};
    auto feed = [&](PageWriter& pw, bool main) -> Result<void> {
      for (;;) {
        size_t i = next.fetch_add(1);
        if (i >= work.size()) return Ok();
        const Stretch& x = work[i];
        auto a = pw.Add(x.addr, x.addr, x.npages, x.use_fd);
        if (!a.ok()) {
          next = work.size();  // the other writer stops too
          return a;
        }
        uint64_t d = done.fetch_add(x.npages * kPage) + x.npages * kPage;
        if (main && ctx.opts.progress) ctx.opts.progress("memory", d, total);
      }
    };
    Result<void> second;
    std::thread helper;
    if (w2) {
      helper = std::thread([&] {
        second = feed(*w2, false);
        if (second.ok()) second = w2->Finish();
      });
    }
    Result<void> first = feed(w, true);
    if (first.ok()) first = w.Finish();
    if (!first.ok()) next = work.size();
    if (helper.joinable()) helper.join();
    pt.Lap("pages");
    // What the second writer released last (the first one releases the queue as it goes).
    if (ctx.released) ReleaseRanges(r, released.Take());
    TRY_CTX(std::move(first), "pid %d: pages", pid);
    TRY_CTX(std::move(second), "pid %d: pages (second file)", pid);
    for (const auto& run : w.runs()) *pm.add_runs() = run;
    ctx.stats.pages_dumped += w.pages();
    ctx.stats.released_bytes += w.released_bytes();
    if (w2) {
      for (const auto& run : w2->runs()) *pm2.add_runs() = run;
      ctx.stats.pages_dumped += w2->pages();
      ctx.stats.released_bytes += w2->released_bytes();
    }
  }
  if (blob2) {
    TRY(blob2->Close());
    ctx.stats.bytes_logical += blob2->logical_size();
    ctx.stats.bytes_stored += blob2->stored_size();
  }
  TRY(blob.Close());
  ctx.stats.bytes_logical += blob.logical_size();
  ctx.stats.bytes_stored += blob.stored_size();
  ctx.stats.memdump_ms += timing::MsSince(t0);
  pt.Lap("close");
  // Rounds in order; restore applies them in order, so later pages win.
  ASSIGN_OR_RETURN(images::ImageWriter pw,
                   images::ImageWriter::Create(*ctx.sink, StrFormat("pagemap-%d.img", pid)));
  for (const auto& e : earlier) TRY(pw.Write(e));
  TRY(pw.Write(pm));
  if (blob2) TRY(pw.Write(pm2));  // disjoint from pm: the order between them does not matter
  TRY(pw.Close());
  pt.Lap("pagemap");
  std::string laps;
  for (const auto& [k, ms] : pt.phases()) laps += StrFormat(" %s %.1f", k.c_str(), ms);
  LOG_DEBUG("pid %d: mm step (ms):%s", pid, laps.c_str());
  return Ok();
}

DumpContext::Captured::Captured() = default;
DumpContext::Captured::Captured(Captured&&) = default;
DumpContext::Captured::~Captured() = default;

Result<void> FinishCapturedPages(DumpContext& ctx) {
  auto t0 = std::chrono::steady_clock::now();
  ctx.MarkReleased();  // from the first release on, the tree cannot run again
  // Released in order, each batch's drain starting as soon as its range is released: the page
  // files' new pages come from the pages the drains just let go of.
  for (auto& c : ctx.captured) c.capture->Release();
  for (auto& c : ctx.captured) {
    TRY_CTX(c.capture->Finish(), "pid %d: pages", c.pid);
    for (const auto& run : c.capture->runs(0)) *c.pm.add_runs() = run;
    if (c.blob2)
      for (const auto& run : c.capture->runs(1)) *c.pm2.add_runs() = run;
    ctx.stats.pages_dumped += c.capture->pages();
    ctx.stats.released_bytes += c.capture->released_bytes();
    ctx.stats.captured_bytes += c.capture->captured_bytes();
    c.capture.reset();
    if (c.blob2) {
      TRY(c.blob2->Close());
      ctx.stats.bytes_logical += c.blob2->logical_size();
      ctx.stats.bytes_stored += c.blob2->stored_size();
    }
    TRY(c.blob->Close());
    ctx.stats.bytes_logical += c.blob->logical_size();
    ctx.stats.bytes_stored += c.blob->stored_size();
    ASSIGN_OR_RETURN(images::ImageWriter pw,
                     images::ImageWriter::Create(*ctx.sink, StrFormat("pagemap-%d.img", c.pid)));
    TRY(pw.Write(c.pm));
    if (c.blob2) TRY(pw.Write(c.pm2));
    TRY(pw.Close());
  }
  ctx.captured.clear();
  ctx.stats.drain_ms = timing::MsSince(t0);
  return Ok();
}

}  // namespace godwit::dump
