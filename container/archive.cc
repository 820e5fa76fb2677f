#include "container/archive.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>
#include <vector>

#include "common/fs.h"
#include "common/scope_exit.h"
#include "images/crc32c.h"
#include "images/image.h"

namespace godwit::container::archive {
namespace {

constexpr char kMagic[8] = {'G', 'O', 'D', 'W', 'I', 'T', 'E', 'X'};
constexpr uint32_t kVersion = 1;
constexpr uint32_t kFile = 1, kEnd = 2;
constexpr size_t kMaxName = 4096;
constexpr size_t kBuf = 1 << 20;

struct __attribute__((packed)) RecordHeader {
  uint32_t kind;
  uint32_t name_len;
  uint64_t size;
  uint32_t data_crc;
  uint32_t header_crc;  // over the fields above and the name
};

uint32_t HeaderCrc(const RecordHeader& h, const std::string& name) {
  uint32_t c = images::Crc32c(0, &h, offsetof(RecordHeader, header_crc));
  return images::Crc32c(c, name.data(), name.size());
}

Error Bad(const std::string& file, uint64_t off, const char* what) {
  return MakeError(ErrorKind::kBadImage, 0, "%s: offset %llu: %s", file.c_str(),
                   static_cast<unsigned long long>(off), what);
}

Result<void> ListFiles(const std::string& root, const std::string& rel,
                       std::vector<std::string>* out) {
  std::string path = rel.empty() ? root : root + "/" + rel;
  ASSIGN_OR_RETURN(std::vector<std::string> names, fs::ListDir(path));
  std::sort(names.begin(), names.end());
  for (const auto& n : names) {
    std::string r = rel.empty() ? n : rel + "/" + n;
    struct stat st;
    if (::lstat((root + "/" + r).c_str(), &st) < 0)
      return Errno("stat %s/%s", root.c_str(), r.c_str());
    if (S_ISDIR(st.st_mode)) {
      TRY(ListFiles(root, r, out));
    } else if (S_ISREG(st.st_mode)) {
      out->push_back(r);
    } else {
      return MakeError(ErrorKind::kUnsupported, 0, "%s/%s: not a regular file", root.c_str(),
                       r.c_str());
    }
  }
  return Ok();
}

Result<void> CheckName(const std::string& file, uint64_t off, const std::string& name) {
  if (name.empty() || name[0] == '/') return Bad(file, off, "absolute or empty name");
  for (const auto& c : fs::Split(name, '/')) {
    if (!images::ValidImageName(c)) return Bad(file, off, "bad name component");
  }
  return Ok();
}

}  // namespace

Result<Stats> Export(const std::string& dir, const std::string& file) {
  std::vector<std::string> files;
  TRY(ListFiles(dir, "", &files));
  std::string tmp = file + ".tmp";
  ASSIGN_OR_RETURN(UniqueFd out, fs::Open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600));
  ScopeExit rm([&] { ::unlink(tmp.c_str()); });
  Stats stats;
  char head[16] = {};
  memcpy(head, kMagic, 8);
  memcpy(head + 8, &kVersion, 4);
  TRY(fs::WriteAll(out.get(), head, sizeof(head)));
  std::vector<char> buf(kBuf);
  for (const auto& name : files) {
    std::string path = dir + "/" + name;
    ASSIGN_OR_RETURN(UniqueFd in, fs::Open(path, O_RDONLY));
    struct stat st;
    if (::fstat(in.get(), &st) < 0) return Errno("stat %s", path.c_str());
    // The data's checksum first (one pass to compute, one to copy: the images are on local disk).
    uint32_t crc = 0;
    uint64_t left = st.st_size;
    while (left > 0) {
      ssize_t n = ::read(in.get(), buf.data(), std::min<uint64_t>(buf.size(), left));
      if (n <= 0) return n < 0 ? Errno("read %s", path.c_str()) : Err("%s shrank", path.c_str());
      crc = images::Crc32c(crc, buf.data(), n);
      left -= n;
    }
    RecordHeader h = {kFile, static_cast<uint32_t>(name.size()), static_cast<uint64_t>(st.st_size),
                      crc, 0};
    h.header_crc = HeaderCrc(h, name);
    TRY(fs::WriteAll(out.get(), &h, sizeof(h)));
    TRY(fs::WriteAll(out.get(), name.data(), name.size()));
    left = st.st_size;
    uint32_t crc2 = 0;
    for (off_t off = 0; left > 0;) {
      ssize_t n = ::pread(in.get(), buf.data(), std::min<uint64_t>(buf.size(), left), off);
      if (n <= 0) return n < 0 ? Errno("read %s", path.c_str()) : Err("%s shrank", path.c_str());
      crc2 = images::Crc32c(crc2, buf.data(), n);
      TRY(fs::WriteAll(out.get(), buf.data(), n));
      left -= n;
      off += n;
    }
    if (crc2 != crc) return Err("%s changed while exported", path.c_str());
    stats.files++;
    stats.bytes += st.st_size;
  }
  RecordHeader end = {kEnd, 0, stats.files, 0, 0};
  end.header_crc = HeaderCrc(end, "");
  TRY(fs::WriteAll(out.get(), &end, sizeof(end)));
  if (::fsync(out.get()) < 0) return Errno("fsync %s", tmp.c_str());
  struct stat st;
  if (::fstat(out.get(), &st) == 0) stats.size = st.st_size;
  if (::rename(tmp.c_str(), file.c_str()) < 0) return Errno("rename %s", file.c_str());
  rm.dismiss();
  return stats;
}

Result<Stats> Import(const std::string& file, const std::string& dir) {
  if (fs::Exists(dir))
    return MakeError(ErrorKind::kExists, EEXIST, "%s already exists", dir.c_str());
  auto in_r = fs::Open(file, O_RDONLY);
  if (!in_r.ok()) {
    if (in_r.error().sys_errno() == ENOENT)
      return MakeError(ErrorKind::kNotFound, ENOENT, "export file %s not found", file.c_str());
    return std::move(in_r).error();
  }
  UniqueFd in = std::move(*in_r);
  struct stat st;
  if (::fstat(in.get(), &st) < 0) return Errno("stat %s", file.c_str());
  uint64_t fsize = st.st_size;
  std::string tmp = dir + ".importing";
  (void)fs::RemoveAll(tmp);
  TRY(fs::MkdirAll(tmp, 0700));
  ScopeExit rm([&] { (void)fs::RemoveAll(tmp); });

  char head[16];
  if (fsize < sizeof(head) || ::pread(in.get(), head, sizeof(head), 0) != sizeof(head))
    return Bad(file, 0, "too short for the header");
  if (memcmp(head, kMagic, 8) != 0) return Bad(file, 0, "not a godwit export (bad magic)");
  uint32_t version;
  memcpy(&version, head + 8, 4);
  if (version != kVersion) return Bad(file, 8, "unsupported export version");
  uint64_t off = sizeof(head);
  Stats stats;
  std::set<std::string> seen;
  std::vector<char> buf(kBuf);
  for (;;) {
    RecordHeader h;
    if (fsize - off < sizeof(h)) return Bad(file, off, "truncated: missing end record");
    if (::pread(in.get(), &h, sizeof(h), off) != sizeof(h)) return Errno("read %s", file.c_str());
    uint64_t hoff = off;
    off += sizeof(h);
    if (h.name_len > kMaxName || h.name_len > fsize - off)
      return Bad(file, hoff, "bad name length");
    std::string name(h.name_len, '\0');
    if (h.name_len && ::pread(in.get(), name.data(), h.name_len, off) != h.name_len)
      return Errno("read %s", file.c_str());
    off += h.name_len;
    if (HeaderCrc(h, name) != h.header_crc)
      return Bad(file, hoff, "record header checksum mismatch");
    if (h.kind == kEnd) {
      if (h.size != stats.files) return Bad(file, hoff, "end record: file count mismatch");
      if (off != fsize) return Bad(file, off, "trailing bytes after the end record");
      break;
    }
    if (h.kind != kFile) return Bad(file, hoff, "unknown record kind");
    TRY(CheckName(file, hoff, name));
    if (!seen.insert(name).second) return Bad(file, hoff, "duplicate file name");
    if (h.size > fsize - off) return Bad(file, hoff, "file size runs past the end");
    std::string path = tmp + "/" + name;
    auto slash = path.rfind('/');
    TRY(fs::MkdirAll(path.substr(0, slash), 0700));
    ASSIGN_OR_RETURN(UniqueFd out, fs::Open(path, O_WRONLY | O_CREAT | O_EXCL, 0600));
    uint32_t crc = 0;
    for (uint64_t left = h.size; left > 0;) {
      ssize_t n = ::pread(in.get(), buf.data(), std::min<uint64_t>(buf.size(), left), off);
      if (n <= 0) return n < 0 ? Errno("read %s", file.c_str()) : Bad(file, off, "truncated");
      crc = images::Crc32c(crc, buf.data(), n);
      TRY(fs::WriteAll(out.get(), buf.data(), n));
      off += n;
      left -= n;
    }
    if (crc != h.data_crc) return Bad(file, hoff, ("data checksum mismatch in " + name).c_str());
    stats.files++;
    stats.bytes += h.size;
  }
  if (::rename(tmp.c_str(), dir.c_str()) < 0)
    return Errno("rename %s -> %s", tmp.c_str(), dir.c_str());
  rm.dismiss();
  stats.size = fsize;
  return stats;
}

}  // namespace godwit::container::archive
