// memfd: name, contents, size and seals. Descriptions of one memfd share it (keyed by inode).
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/fs.h"
#include "files/kind.h"

namespace godwit::files {

Result<void> DumpMemfd(FdDumpContext& ctx, const Probe& p, img::FileEntry& e) {
  img::MemfdFile* m = e.mutable_memfd();
  std::string name = p.link.substr(strlen("/memfd:"));
  const char kDel[] = " (deleted)";
  if (name.size() >= strlen(kDel) && name.compare(name.size() - strlen(kDel), strlen(kDel), kDel) == 0)
    name.resize(name.size() - strlen(kDel));
  m->set_name(name);
  m->set_size(p.st.st_size);
  m->set_ino(p.st.st_ino);
  m->set_mode(p.st.st_mode);
  int seals = fcntl(p.local, F_GET_SEALS);
  m->set_seals(seals < 0 ? 0 : seals);
  if (seals < 0) m->set_seals(F_SEAL_SEAL);  // created without MFD_ALLOW_SEALING
  UniqueFd rd(open(StrFormat("/proc/%d/fd/%d", p.pid, p.fd).c_str(), O_RDONLY | O_CLOEXEC));
  if (!rd) return Errno("open memfd for reading");
  std::string data(p.st.st_size, '\0');
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = pread(rd.get(), data.data() + done, data.size() - done, done);
    if (n < 0) return Errno("pread memfd");
    if (n == 0) break;
    done += n;
  }
  // Trailing zeros are holes: store only up to the last non-zero byte.
  size_t used = done;
  while (used > 0 && data[used - 1] == 0) used--;
  ASSIGN_OR_RETURN(*m->mutable_data(), ctx.Blob(data.data(), used));
  return Ok();
}

Result<UniqueFd> OpenMemfd(FdRestoreContext& ctx, const img::FileEntry& e) {
  const img::MemfdFile& m = e.memfd();
  std::string key = StrFormat("memfd:%llu", static_cast<unsigned long long>(m.ino()));
  auto it = ctx.named_fds.find(key);
  if (it != ctx.named_fds.end()) return Reopen(it->second, e.flags());
  auto mapped = ctx.opts().memfds.find(m.ino());
  if (mapped != ctx.opts().memfds.end()) {
    // Also mapped: the engine restored its contents with the mapping; share that object.
    ASSIGN_OR_RETURN(UniqueFd fd, Reopen(mapped->second, e.flags()));
    if (ftruncate(fd.get(), m.size()) < 0 && (e.flags() & O_ACCMODE) != O_RDONLY)
      return Errno("ftruncate memfd %s", m.name().c_str());
    if (lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET) < 0) return Errno("lseek memfd");
    return fd;
  }
  bool sealing = m.seals() != F_SEAL_SEAL;
  UniqueFd fd(memfd_create(m.name().c_str(), MFD_CLOEXEC | (sealing ? MFD_ALLOW_SEALING : 0)));
  if (!fd) return Errno("memfd_create %s", m.name().c_str());
  ASSIGN_OR_RETURN(std::string data, ctx.ReadBlob(m.data()));
  TRY(fs::WriteAll(fd.get(), data.data(), data.size()));
  if (ftruncate(fd.get(), m.size()) < 0) return Errno("ftruncate memfd %s", m.name().c_str());
  fchmod(fd.get(), m.mode() & 07777);
  if (sealing && m.seals() && fcntl(fd.get(), F_ADD_SEALS, m.seals()) < 0)
    return Errno("F_ADD_SEALS %#x", m.seals());
  if ((e.flags() & O_ACCMODE) != O_RDWR) {
    // The description was reopened with another access mode: keep the memfd around for more.
    ASSIGN_OR_RETURN(UniqueFd ro, Reopen(fd.get(), e.flags()));
    ASSIGN_OR_RETURN(int keep, ctx.Park(std::move(fd)));
    ctx.KeepUntilPrepared(UniqueFd(keep));
    ctx.named_fds[key] = keep;
    fd = std::move(ro);
  } else {
    int keep = fcntl(fd.get(), F_DUPFD_CLOEXEC, 0);
    ASSIGN_OR_RETURN(int parked, ctx.Park(UniqueFd(keep)));
    ctx.KeepUntilPrepared(UniqueFd(parked));
    ctx.named_fds[key] = parked;
  }
  if (lseek(fd.get(), static_cast<off_t>(e.pos()), SEEK_SET) < 0) return Errno("lseek memfd");
  return fd;
}

}  // namespace godwit::files
