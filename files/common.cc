// Shared pieces of the per-kind code: fdinfo parsing, reopening, status flags, contexts.
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
  }
  if (ox.pid == 0 && sig == 0) return Ok();
  img::FileOwner* o = e.mutable_owner();
  o->set_type(ox.type);
  o->set_pid(ox.pid);
  o->set_signum(sig);
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

// ---- DumpContext ----

Result<img::BlobRef> DumpContext::Blob(const void* data, size_t len) {
  if (!blob_) {
    ASSIGN_OR_RETURN(images::BlobWriter w,
                     images::BlobWriter::Create(sink_, "files-data.blob", images::Compression::kNone));
    blob_ = std::make_unique<images::BlobWriter>(std::move(w));
  }
  img::BlobRef ref;
  ASSIGN_OR_RETURN(uint64_t off, blob_->Append(data, len));
  ref.set_offset(off);
  ref.set_length(len);
  return ref;
}

Result<void> DumpContext::CloseBlob() {
  if (blob_) TRY(blob_->Close());
  blob_.reset();
  return Ok();
}

void DumpContext::RunResume() {
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
  undo_.clear();
}

bool DumpContext::ExternalAllowed(const std::string& key) const {
  for (const auto& e : opts_.external) {
    if (e == key || e == "fd:" + key) return true;
    // "unix:*" (dump --ext-unix-sk without an inode): every peer outside the tree known by its
    // name ("unix:/dev/log"), not by inode.
    if (e == "unix:*" && key.rfind("unix:", 0) == 0 && key.rfind("unix:[", 0) != 0) return true;
  }
  return false;
}

// ---- RestoreContext ----

Result<std::string> RestoreContext::ReadBlob(const img::BlobRef& ref) {
  std::string out;
  if (ref.length() == 0) return out;
  if (!blob_) return MakeError(ErrorKind::kBadImage, 0, "files-data.blob missing");
  if (ref.length() > (1ull << 34))
    return MakeError(ErrorKind::kBadImage, 0, "files-data.blob: range too long: %llu",
                     static_cast<unsigned long long>(ref.length()));
  out.resize(ref.length());
  TRY_CTX(blob_->Read(ref.offset(), out.data(), out.size()), "files-data.blob offset %llu",
          static_cast<unsigned long long>(ref.offset()));
  return out;
}

const img::FileEntry* RestoreContext::Entry(uint64_t file_id) const {
  auto it = entries_.find(file_id);
  return it == entries_.end() ? nullptr : &it->second;
}

int RestoreContext::Prepared(uint64_t file_id) const {
  auto it = prepared_.find(file_id);
  return it == prepared_.end() ? -1 : it->second;
}

Result<int> RestoreContext::Park(UniqueFd fd) {
  int nfd = fcntl(fd.get(), F_DUPFD_CLOEXEC, base_);
  if (nfd < 0) return Errno("fcntl F_DUPFD_CLOEXEC %d", base_);
  return nfd;
}

void RestoreContext::KeepUntilFinalize(uint64_t file_id, int fd) { finalize_fds_[file_id] = fd; }

Result<int> RestoreContext::Ensure(uint64_t file_id) {
  int have = Prepared(file_id);
  if (have >= 0) return have;
  const img::FileEntry* e = Entry(file_id);
  if (!e) return MakeError(ErrorKind::kBadImage, 0, "files.img: no file id %llu",
                           static_cast<unsigned long long>(file_id));
  if (opening_.count(file_id))
    return MakeError(ErrorKind::kBadImage, 0, "files.img: dependency cycle at file id %llu",
                     static_cast<unsigned long long>(file_id));
  const KindOps* ops = FindKind(e->kind());
  if (!ops) return MakeError(ErrorKind::kBadImage, 0, "files.img: file id %llu has unknown kind %d",
                             static_cast<unsigned long long>(file_id), e->kind());
  opening_.insert(file_id);
  auto r = ops->open(*this, *e);
  opening_.erase(file_id);
  if (!r.ok())
    return std::move(r.error().wrap(StrFormat("restore %s (file id %llu)", ops->name,
                                              static_cast<unsigned long long>(file_id))));
  // A kind may have prepared this id itself (both ends of a pipe at once).
  if (Prepared(file_id) >= 0) return Prepared(file_id);
  UniqueFd fd = std::move(*r);
  TRY_CTX(SetStatusFlags(fd.get(), e->flags()), "%s file id %llu", ops->name,
          static_cast<unsigned long long>(file_id));
  TRY_CTX(RestoreOwner(fd.get(), *e, false), "%s file id %llu", ops->name,
          static_cast<unsigned long long>(file_id));
  for (const auto& l : e->locks())
    if (l.type() != img::LOCK_TYPE_FLOCK || !flocks_in_install.count(file_id))
      TRY_CTX(ApplyLock(fd.get(), l), "%s file id %llu", ops->name,
              static_cast<unsigned long long>(file_id));
  ASSIGN_OR_RETURN(int parked, Park(std::move(fd)));
  prepared_[file_id] = parked;
  if (ops->finalize) finalize_fds_[file_id] = parked;  // kept past ClosePrepared
  return parked;
}

}  // namespace godwit::files
