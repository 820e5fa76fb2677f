// Helpers every fd kind uses: /proc/PID/fdinfo parsing, reopening through /proc/self/fd, status
// flags, the F_SETOWN owner and lease, kind names. The contexts' methods are in fd_context.cc.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include "common/fs.h"
#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

std::string FdInfo::Get(const std::string& key) const {
  for (const auto& [k, v] : lines)
    if (k == key) return v;
  return "";
}

std::vector<std::string> FdInfo::All(const std::string& key) const {
  std::vector<std::string> out;
  for (const auto& [k, v] : lines)
    if (k == key) out.push_back(v);
  return out;
}

Result<FdInfo> ReadFdInfo(pid_t pid, int fd) {
  std::string path = StrFormat("/proc/%d/fdinfo/%d", pid, fd);
  ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
  FdInfo info;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    if (nl == std::string::npos) nl = text.size();
    std::string line = text.substr(start, nl - start);
    start = nl + 1;
    size_t colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string key = line.substr(0, colon);
    std::string val = fs::Trim(line.substr(colon + 1));
    if (key == "pos") info.pos = strtoull(val.c_str(), nullptr, 10);
    else if (key == "flags") info.flags = strtoul(val.c_str(), nullptr, 8);
    else if (key == "mnt_id") info.mnt_id = atoi(val.c_str());
    info.lines.emplace_back(std::move(key), std::move(val));
  }
  return info;
}

Result<UniqueFd> Reopen(int fd, int flags) {
  std::string path = StrFormat("/proc/self/fd/%d", fd);
  int nfd = ::open(path.c_str(), (flags & ~(O_CREAT | O_TRUNC | O_EXCL)) | O_CLOEXEC);
  if (nfd < 0) return Errno("reopen %s", path.c_str());
  return UniqueFd(nfd);
}

Result<void> SetStatusFlags(int fd, uint32_t flags) {
  constexpr uint32_t kSettable = O_APPEND | O_NONBLOCK | O_ASYNC | O_DIRECT | O_NOATIME;
  int cur = fcntl(fd, F_GETFL);
  if (cur < 0) return Errno("fcntl F_GETFL fd %d", fd);
  int want = (cur & ~kSettable) | (flags & kSettable);
  if (want != cur && fcntl(fd, F_SETFL, want) < 0) return Errno("fcntl F_SETFL %#x fd %d", want, fd);
  return Ok();
}

Result<void> DumpOwner(const Probe& p, img::FileEntry& e) {
  struct f_owner_ex ox = {};
  if (fcntl(p.local, F_GETOWN_EX, &ox) < 0) return Errno("pid %d fd %d: F_GETOWN_EX", p.pid, p.fd);
  int sig = fcntl(p.local, F_GETSIG);
  if (sig < 0) return Errno("pid %d fd %d: F_GETSIG", p.pid, p.fd);
  if (S_ISREG(p.st.st_mode)) {
    int lease = fcntl(p.local, F_GETLEASE);
    if (lease == F_RDLCK || lease == F_WRLCK) e.set_lease_plus1(lease + 1);
    // A lease being broken: F_GETLEASE says what it is going to (UNLCK, or READ for a write
    // lease), fdinfo says BREAKING.
    for (const auto& line : p.info.All("lock")) {
      auto b = line.find("BREAKING");
      if (line.find("LEASE") == std::string::npos || b == std::string::npos) continue;
      bool to_read = line.compare(line.find_first_not_of(' ', b + 8), 4, "READ") == 0;
      // Going to UNLCK: a read lease, or a write lease (broken by a writer) when the
      // description is open for writing (a read lease needs a read-only description).
      int acc = fcntl(p.local, F_GETFL);
      bool writable = acc >= 0 && (acc & O_ACCMODE) != O_RDONLY;
      e.set_lease_plus1((to_read || writable ? F_WRLCK : F_RDLCK) + 1);
      e.set_lease_breaking(true);
      e.set_lease_break_to_unlck(!to_read && writable);
    }
  }
  if (ox.pid == 0 && sig == 0) return Ok();
  img::FileOwner* o = e.mutable_owner();
  o->set_type(ox.type);
  o->set_pid(ox.pid);
  o->set_signum(sig);
  return Ok();
}

Result<void> BreakLease(int fd, const img::FileEntry& e) {
  if (!e.lease_breaking()) return Ok();
  // A conflicting open starts the break and fails (O_NONBLOCK): a writer breaks a read lease to
  // UNLCK, a reader a write lease to READ, a writer a write lease to UNLCK.
  int want = e.lease_plus1() - 1 == F_WRLCK && !e.lease_break_to_unlck() ? O_RDONLY : O_WRONLY;
  // Its holder had its SIGIO before the dump: none now (the process has no handlers yet, and
  // SIGIO would kill it). No owner for the break, the owner back after.
  struct f_owner_ex ox = {};
  if (fcntl(fd, F_GETOWN_EX, &ox) < 0) return Errno("fd %d: F_GETOWN_EX", fd);
  struct f_owner_ex none = {F_OWNER_PID, 0};
  if (fcntl(fd, F_SETOWN_EX, &none) < 0) return Errno("fd %d: F_SETOWN_EX 0", fd);
  int c = open(StrFormat("/proc/self/fd/%d", fd).c_str(), want | O_NONBLOCK | O_CLOEXEC);
  int err = errno;
  if (fcntl(fd, F_SETOWN_EX, &ox) < 0) return Errno("fd %d: F_SETOWN_EX back", fd);
  errno = err;
  if (c >= 0) {
    close(c);
    return MakeError(ErrorKind::kGeneric, 0, "fd %d: the lease to break is not there", fd);
  }
  if (errno != EWOULDBLOCK) return Errno("fd %d: break the lease again", fd);
  return Ok();
}

Result<void> RestoreOwner(int fd, const img::FileEntry& e, bool set_pid) {
  // A lease (file_leases) belongs to the description, like flock.
  if (!set_pid && e.lease_plus1() && fcntl(fd, F_SETLEASE, e.lease_plus1() - 1) < 0)
    return Errno("F_SETLEASE %s", e.lease_plus1() == 1 ? "F_RDLCK" : "F_WRLCK");
  if (!e.has_owner()) return Ok();
  const img::FileOwner& o = e.owner();
  if (!set_pid) {
    if (o.signum() && fcntl(fd, F_SETSIG, o.signum()) < 0) return Errno("F_SETSIG %d", o.signum());
    return Ok();
  }
  if (o.pid() == 0) return Ok();
  struct f_owner_ex ox = {static_cast<__pid_type>(o.type()), o.pid()};
  if (fcntl(fd, F_SETOWN_EX, &ox) < 0) {
    // A pid outside the restored tree (gone, or another pid namespace's number): signals for
    // this file go nowhere, as they would have if that process had exited.
    if (errno == ESRCH) {
      LOG_WARN("file id %llu: owner %d (type %d) does not exist: no owner",
               static_cast<unsigned long long>(e.id()), o.pid(), o.type());
      return Ok();
    }
    return Errno("F_SETOWN_EX type %d pid %d", o.type(), o.pid());
  }
  return Ok();
}

std::string KindName(img::FileKind k) {
  const KindOps* ops = FindKind(k);
  return ops ? ops->name : StrFormat("kind-%d", static_cast<int>(k));
}

Result<std::vector<std::pair<std::string, img::ProcessFds>>> ReadProcessFds(
    const images::ImageSet& images) {
  std::vector<std::pair<std::string, img::ProcessFds>> out;
  for (const auto& f : images.inventory().files()) {
    const std::string& n = f.name();
    if (n.rfind("fds-", 0) != 0 || n.size() < 9 || n.substr(n.size() - 4) != ".img") continue;
    auto& [name, pf] = out.emplace_back(n, img::ProcessFds());
    TRY(images.ReadOne(name, &pf));
  }
  return out;
}

}  // namespace godwit::files
