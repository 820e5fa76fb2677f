// The directory sink: one file per image, written through a large buffer, with each file's size
// and crc32c computed on the way (so Finish never reads a file back). Finish writes the
// inventory last and atomically: its presence is what makes a directory a complete checkpoint.
#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <set>

#include "common/fs.h"
#include "common/log.h"
#include "common/scope_exit.h"
#include "images/crc32c.h"
#include "images/format.h"
#include "images/image.h"

namespace godwit::images {
namespace {

constexpr size_t kBufSize = 1 << 20;
// Writes at least this large skip the buffer: they go out with one writev together with what
// is buffered (a chunk header), straight from the caller's memory.
constexpr size_t kDirect = 128 << 10;

Result<void> WritevAll(int fd, struct iovec* iov, int n, const std::string& path) {
  while (n > 0) {
    ssize_t w = ::writev(fd, iov, std::min(n, IOV_MAX));
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno("write %s", path.c_str());
    }
    size_t left = static_cast<size_t>(w);
    while (n > 0 && left >= iov->iov_len) {
      left -= iov->iov_len;
      iov++;
      n--;
    }
    if (n > 0) {
      iov->iov_base = static_cast<char*>(iov->iov_base) + left;
      iov->iov_len -= left;
    }
  }
  return Ok();
}

// What the sink knows about its files; shared with the outputs so an output may outlive
// nothing it depends on.
struct DirState {
  std::mutex mu;
  std::string dir;
  DirSinkOptions opts;
  std::vector<std::string> created;  // in creation order, for Abort and the inventory
  std::set<std::string> open;        // created and not yet closed
  std::map<std::string, img::ImageFile> closed;
};

class FileOutput : public Output {
 public:
  FileOutput(std::shared_ptr<DirState> st, std::string name, std::string path, UniqueFd fd)
      : st_(std::move(st)),
        name_(std::move(name)),
        path_(std::move(path)),
        fd_(std::move(fd)),
        buf_(new char[kBufSize]) {}
  ~FileOutput() override = default;

  Result<void> Write(const void* data, size_t len) override {
    crc_ = Crc32c(crc_, data, len);
    return Put(data, len);
  }

  Result<void> WriteChecked(const void* data, size_t len, uint32_t crc) override {
    crc_ = Crc32cCombine(crc_, crc, len);
    return Put(data, len);
  }

  // On tmpfs the reserved pages are also written once (zeros) so that they exist: a page the
  // hypervisor has to back costs ~1 us per 4 KiB on first touch here (free page reporting hands
  // freed memory back to the host), and this runs before the tree is frozen. The file grows
  // meanwhile; Close truncates it to what was written.
  Result<void> Reserve(uint64_t bytes) override {
    if (!fd_) return MakeError(ErrorKind::kGeneric, 0, "%s: reserve after close", path_.c_str());
    if (bytes == 0) return Ok();
    if (::fallocate(fd_.get(), FALLOC_FL_KEEP_SIZE, size_, bytes) < 0) {
      if (errno == EOPNOTSUPP || errno == ENOSYS) return Ok();  // a file system without it
      return Errno("reserve %llu bytes for %s", static_cast<unsigned long long>(bytes),
                   path_.c_str());
    }
    reserved_ = true;
    struct statfs sf;
    if (!st_->opts.touch_reserved || ::fstatfs(fd_.get(), &sf) < 0 ||
        sf.f_type != TMPFS_MAGIC)
      return Ok();
    constexpr size_t kZeros = 1 << 20;
    std::unique_ptr<char[]> zeros(new char[kZeros]());
    for (uint64_t off = 0; off < bytes;) {
      size_t n = static_cast<size_t>(std::min<uint64_t>(kZeros, bytes - off));
      ssize_t w = ::pwrite(fd_.get(), zeros.get(), n, static_cast<off_t>(size_ + off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return Errno("reserve %s", path_.c_str());
      off += w;
    }
    return Ok();
  }

  Result<int64_t> ExtendExternal(size_t len) override {
    if (!fd_) return MakeError(ErrorKind::kGeneric, 0, "%s: write after close", path_.c_str());
    TRY(Flush());
    int64_t off = static_cast<int64_t>(size_);
    size_ += len;
    // Later writes go after the external bytes.
    if (::lseek(fd_.get(), static_cast<off_t>(size_), SEEK_SET) < 0)
      return Errno("seek %s", path_.c_str());
    return off;
  }

  int fd() const override { return fd_.get(); }

  Result<void> WriteAt(uint64_t off, const void* data, size_t len) override {
    if (!fd_) return MakeError(ErrorKind::kGeneric, 0, "%s: write after close", path_.c_str());
    const char* p = static_cast<const char*>(data);
    while (len > 0) {
      ssize_t n = ::pwrite(fd_.get(), p, len, static_cast<off_t>(off));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Errno("write %s at %lu", path_.c_str(), static_cast<unsigned long>(off));
      p += n;
      off += n;
      len -= n;
    }
    return Ok();
  }

  void AddChecksum(uint32_t crc, size_t len) override { crc_ = Crc32cCombine(crc_, crc, len); }

  int64_t Available() const override {
    struct statfs sf;
    if (!fd_ || ::fstatfs(fd_.get(), &sf) < 0) return -1;
    return static_cast<int64_t>(sf.f_bavail) * sf.f_bsize;
  }

  Result<void> Close() override {
    if (!fd_) return MakeError(ErrorKind::kGeneric, 0, "%s: closed twice", path_.c_str());
    TRY(Flush());
    // Release what was reserved and not used: truncating to the size drops blocks beyond it.
    if (reserved_ && ::ftruncate(fd_.get(), static_cast<off_t>(size_)) < 0)
      return Errno("truncate %s", path_.c_str());
    if (::close(fd_.release()) < 0) return Errno("close %s", path_.c_str());
    img::ImageFile f;
    f.set_name(name_);
    f.set_size(size_);
    f.set_crc32c(crc_);
    std::lock_guard<std::mutex> l(st_->mu);
    st_->open.erase(name_);
    st_->closed[name_] = f;
    return Ok();
  }

 private:
  Result<void> Put(const void* data, size_t len) {
    if (!fd_) return MakeError(ErrorKind::kGeneric, 0, "%s: write after close", path_.c_str());
    size_ += len;
    if (len >= kDirect) {
      struct iovec iov[2] = {{buf_.get(), used_}, {const_cast<void*>(data), len}};
      int first = used_ ? 0 : 1;
      used_ = 0;
      return WritevAll(fd_.get(), iov + first, 2 - first, path_);
    }
    if (used_ + len > kBufSize) TRY(Flush());
    memcpy(buf_.get() + used_, data, len);
    used_ += len;
    return Ok();
  }

  Result<void> Flush() {
    if (!used_) return Ok();
    struct iovec iov = {buf_.get(), used_};
    used_ = 0;
    return WritevAll(fd_.get(), &iov, 1, path_);
  }

  std::shared_ptr<DirState> st_;
  std::string name_, path_;
  UniqueFd fd_;
  std::unique_ptr<char[]> buf_;
  size_t used_ = 0;
  uint64_t size_ = 0;
  uint32_t crc_ = 0;
  bool reserved_ = false;
};

bool StartsWithMagic(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return false;
  char head[8];
  ssize_t n = ::pread(fd, head, 8, 0);
  ::close(fd);
  return n == 8 &&
         (memcmp(head, format::kImageMagic, 8) == 0 || memcmp(head, format::kBlobMagic, 8) == 0);
}

class DirSink : public Sink {
 public:
  DirSink(std::string dir, const DirSinkOptions& opts) : st_(std::make_shared<DirState>()) {
    st_->dir = std::move(dir);
    st_->opts = opts;
  }
  ~DirSink() override {
    if (!finished_ && !aborted_) {
      LOG_DEBUG("image sink %s dropped without Finish: removing its files", st_->dir.c_str());
      Abort();
    }
  }

  Result<std::unique_ptr<Output>> Create(const std::string& name) override {
    if (finished_ || aborted_)
      return MakeError(ErrorKind::kGeneric, 0, "create %s: image set already %s", name.c_str(),
                       finished_ ? "finished" : "aborted");
    if (!ValidImageName(name) || name == format::kInventoryName)
      return MakeError(ErrorKind::kGeneric, 0, "invalid image name '%s'", name.c_str());
    std::lock_guard<std::mutex> l(st_->mu);
    if (st_->open.count(name) || st_->closed.count(name))
      return MakeError(ErrorKind::kExists, 0, "image %s created twice", name.c_str());
    std::string path = st_->dir + "/" + name;
    ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(path, O_RDWR | O_CREAT | O_TRUNC, 0600));
    st_->created.push_back(name);
    st_->open.insert(name);
    return std::unique_ptr<Output>(new FileOutput(st_, name, path, std::move(fd)));
  }

  Result<void> Finish(img::Inventory inv) override {
    if (finished_ || aborted_)
      return MakeError(ErrorKind::kGeneric, 0, "finish: image set already %s",
                       finished_ ? "finished" : "aborted");
    {
      std::lock_guard<std::mutex> l(st_->mu);
      if (!st_->open.empty())
        return MakeError(ErrorKind::kGeneric, 0, "image %s was not closed before Finish",
                         st_->open.begin()->c_str());
    }
    inv_ = std::move(inv);
    TRY(WriteInventory());
    finished_ = true;
    return Ok();
  }

  bool CanCompressFinished() const override { return true; }
  Result<void> CompressFinished(const std::vector<std::string>& names, int level, int threads,
                                uint64_t* before, uint64_t* after) override {
    if (!finished_) return MakeError(ErrorKind::kGeneric, 0, "compress before finish");
    std::map<std::string, img::ImageFile> old;
    std::vector<std::string> tmps;
    bool renamed = false;
    ScopeExit rollback([&] {
      if (renamed) return;
      for (const auto& t : tmps) ::unlink(t.c_str());
      std::lock_guard<std::mutex> l(st_->mu);
      for (const auto& [n, f] : old) {
        st_->closed[n] = f;
        st_->open.erase(n);
      }
    });
    *before = *after = 0;
    for (const auto& name : names) {
      {
        std::lock_guard<std::mutex> l(st_->mu);
        auto it = st_->closed.find(name);
        if (it == st_->closed.end())
          return MakeError(ErrorKind::kNotFound, 0, "compress %s: not an image of this set",
                           name.c_str());
        old[name] = it->second;
        st_->open.insert(name);
      }
      std::string path = st_->dir + "/" + name, tmp = path + ".zst.tmp";
      ASSIGN_OR_RETURN(UniqueFd in, fs::Open(path, O_RDONLY));
      ASSIGN_OR_RETURN(UniqueFd fd, fs::Open(tmp, O_RDWR | O_CREAT | O_TRUNC, 0600));
      tmps.push_back(tmp);
      std::unique_ptr<Output> out(new FileOutput(st_, name, tmp, std::move(fd)));
      ASSIGN_OR_RETURN(BlobWriter w,
                       BlobWriter::ForOutput(std::move(out), name, Compression::kZstd, level));
      TRY(w.SetThreads(threads));
      TRY(w.AppendRawBlobFile(in.get(), name));
      TRY(w.Close());  // records the new size and checksum
      std::lock_guard<std::mutex> l(st_->mu);
      *before += old[name].size();
      *after += st_->closed[name].size();
    }
    // The window between the renames and the inventory's is what a crash could leave behind:
    // an inventory whose checksums do not match those files, which readers refuse.
    for (const auto& name : names) {
      std::string path = st_->dir + "/" + name;
      if (::rename((path + ".zst.tmp").c_str(), path.c_str()) < 0)
        return Errno("rename %s.zst.tmp", path.c_str());
    }
    renamed = true;
    return WriteInventory();
  }

  void Abort() override {
    if (finished_ || aborted_) return;
    aborted_ = true;
    std::lock_guard<std::mutex> l(st_->mu);
    for (const auto& name : st_->created) ::unlink((st_->dir + "/" + name).c_str());
    ::unlink((st_->dir + "/" + format::kInventoryName + ".tmp").c_str());
  }

  // The inventory with the current list of files, written atomically (path.tmp, fsync, rename).
  Result<void> WriteInventory() {
    img::Inventory inv = inv_;
    inv.clear_files();
    {
      std::lock_guard<std::mutex> l(st_->mu);
      for (const auto& name : st_->created) *inv.add_files() = st_->closed[name];
    }
    std::string body;
    if (!inv.SerializeToString(&body))
      return MakeError(ErrorKind::kGeneric, 0, "serialize inventory");
    std::string data = format::ImageHeader(inv.GetTypeName(), kFormatVersion);
    char len[4];
    format::PutU32(len, static_cast<uint32_t>(body.size()));
    data.append(len, 4);
    data += body;
    std::string path = st_->dir + "/" + format::kInventoryName;
    TRY_CTX(fs::WriteFile(path, data, /*atomic=*/true), "write inventory");
    return Ok();
  }

  std::shared_ptr<DirState> st_;
  img::Inventory inv_;
  bool finished_ = false, aborted_ = false;
};

// Removes what an earlier dump left: the inventory first (so an interrupted cleanup never
// leaves a set that claims to be complete), then the files it lists and any file that starts
// with an image magic. Other files are not ours and stay.
Result<void> RemoveOldImages(const std::string& dir) {
  std::string inv_path = dir + "/" + format::kInventoryName;
  std::vector<std::string> listed;
  if (fs::Exists(inv_path)) {
    auto data = fs::ReadFile(inv_path);
    if (data.ok()) {
      auto inv = ParseInventory(format::kInventoryName, std::move(*data));
      if (inv.ok())
        for (const auto& f : inv->files())
          if (ValidImageName(f.name())) listed.push_back(f.name());
    }
    if (::unlink(inv_path.c_str()) < 0 && errno != ENOENT)
      return Errno("unlink %s", inv_path.c_str());
  }
  for (const auto& n : listed) ::unlink((dir + "/" + n).c_str());
  ASSIGN_OR_RETURN(auto names, fs::ListDir(dir));
  for (const auto& n : names) {
    std::string p = dir + "/" + n;
    struct stat st;
    if (::lstat(p.c_str(), &st) < 0 || !S_ISREG(st.st_mode)) continue;
    if (n == std::string(format::kInventoryName) + ".tmp" || StartsWithMagic(p)) {
      if (::unlink(p.c_str()) < 0 && errno != ENOENT) return Errno("unlink %s", p.c_str());
    }
  }
  return Ok();
}

}  // namespace

bool ValidImageName(const std::string& name) {
  return !name.empty() && name.size() <= 255 && name != "." && name != ".." &&
         name.find('/') == std::string::npos && name.find('\0') == std::string::npos;
}

Result<std::unique_ptr<Sink>> OpenDirSink(const std::string& dir, bool overwrite) {
  DirSinkOptions opts;
  opts.overwrite = overwrite;
  return OpenDirSink(dir, opts);
}

Result<std::unique_ptr<Sink>> OpenDirSink(const std::string& dir, const DirSinkOptions& opts) {
  TRY_CTX(fs::MkdirAll(dir), "image directory %s", dir.c_str());
  std::string inv_path = dir + "/" + format::kInventoryName;
  if (fs::Exists(inv_path) && !opts.overwrite)
    return MakeError(ErrorKind::kExists, 0, "%s already holds a checkpoint (%s)", dir.c_str(),
                     format::kInventoryName);
  TRY_CTX(RemoveOldImages(dir), "clear image directory %s", dir.c_str());
  return std::unique_ptr<Sink>(new DirSink(dir, opts));
}

}  // namespace godwit::images
