// The files layer's two contexts (files/kind.h): FdDumpContext, what the kinds' dump functions
// share while one FdDumper runs (the data blob, undo work for a resumed tree, per-kind state);
// FdRestoreContext, what their open functions share during Prepare (prepared fds by file id, the
// dependency walk, per-kind state). Not the engine's dump::DumpContext / restore::RestoreContext.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>

#include "common/fs.h"

#include "files/kind.h"

namespace godwit::files {

// ---- FdDumpContext ----

Result<img::BlobRef> FdDumpContext::Blob(const void* data, size_t len) {
  if (!blob_) {
    ASSIGN_OR_RETURN(images::BlobWriter w, images::BlobWriter::Create(sink_, "files-data.blob",
                                                                      images::Compression::kNone));
    blob_ = std::make_unique<images::BlobWriter>(std::move(w));
  }
  img::BlobRef ref;
  ASSIGN_OR_RETURN(uint64_t off, blob_->Append(data, len));
  ref.set_offset(off);
  ref.set_length(len);
  return ref;
}

Result<void> FdDumpContext::CloseBlob() {
  if (blob_) TRY(blob_->Close());
  blob_.reset();
  return Ok();
}

void FdDumpContext::RunResume() {
  for (auto it = undo_.rbegin(); it != undo_.rend(); ++it) (*it)();
  undo_.clear();
}

bool FdDumpContext::ExternalAllowed(const std::string& key) const {
  for (const auto& e : opts_.external) {
    if (e == key || e == "fd:" + key) return true;
    // "unix:*" (dump --ext-unix-sk without an inode): every peer outside the tree known by its
    // name ("unix:/dev/log"), not by inode.
    if (e == "unix:*" && key.rfind("unix:", 0) == 0 && key.rfind("unix:[", 0) != 0) return true;
  }
  return false;
}

// ---- FdRestoreContext ----

Result<std::string> FdRestoreContext::ReadBlob(const img::BlobRef& ref) {
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

bool FdRestoreContext::InstallingHolds(uint64_t file_id) const {
  if (!installing) return false;
  for (const auto& fe : installing->fds())
    if (fe.file_id() == file_id) return true;
  return false;
}

const img::FileEntry* FdRestoreContext::Entry(uint64_t file_id) const {
  auto it = entries_.find(file_id);
  return it == entries_.end() ? nullptr : &it->second;
}

int FdRestoreContext::Prepared(uint64_t file_id) const {
  auto it = prepared_.find(file_id);
  return it == prepared_.end() ? -1 : it->second;
}

Result<int> FdRestoreContext::Park(UniqueFd fd) {
  int nfd = fcntl(fd.get(), F_DUPFD_CLOEXEC, base_);
  if (nfd < 0) return Errno("fcntl F_DUPFD_CLOEXEC %d", base_);
  return nfd;
}

void FdRestoreContext::KeepUntilFinalize(uint64_t file_id, int fd) { finalize_fds_[file_id] = fd; }

Result<int> FdRestoreContext::Ensure(uint64_t file_id) {
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
    if (l.type() != img::LOCK_TYPE_FLOCK || !flock_takers.count(file_id))
      TRY_CTX(ApplyLock(fd.get(), l), "%s file id %llu", ops->name,
              static_cast<unsigned long long>(file_id));
  ASSIGN_OR_RETURN(int parked, Park(std::move(fd)));
  prepared_[file_id] = parked;
  if (ops->finalize) finalize_fds_[file_id] = parked;  // kept past ClosePrepared
  return parked;
}

Result<bool> FdDumpContext::MountVisible(pid_t pid, int mnt_id) {
  if (mnt_id < 0) return true;  // no mnt_id in fdinfo: nothing to tell
  struct stat st;
  std::string ns = StrFormat("/proc/%d/ns/mnt", pid);
  if (stat(ns.c_str(), &st) < 0) return Errno("stat %s", ns.c_str());
  auto it = mounts_.find(st.st_ino);
  if (it == mounts_.end()) {
    std::string path = StrFormat("/proc/%d/mountinfo", pid);
    ASSIGN_OR_RETURN(std::string text, fs::ReadFile(path));
    std::set<int> ids;
    for (const auto& line : fs::Split(text, '\n'))
      if (!line.empty()) ids.insert(atoi(line.c_str()));
    it = mounts_.emplace(st.st_ino, std::move(ids)).first;
  }
  return it->second.count(mnt_id) > 0;
}

}  // namespace godwit::files
