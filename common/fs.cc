#include "common/fs.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>

namespace godwit::fs {

Result<UniqueFd> Open(const std::string& path, int flags, int mode) {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return Errno("open %s", path.c_str());
  return UniqueFd(fd);
}

Result<std::string> ReadFile(const std::string& path) {
  ASSIGN_OR_RETURN(UniqueFd fd, Open(path, O_RDONLY));
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read %s", path.c_str());
    }
    if (n == 0) break;
    out.append(buf, n);
  }
  return out;
}

Result<void> WriteAll(int fd, const void* buf, size_t len) {
  const char* p = static_cast<const char*>(buf);
  while (len > 0) {
    ssize_t n = ::write(fd, p, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("write");
    }
    p += n;
    len -= n;
  }
  return Ok();
}

Result<void> ReadAll(int fd, void* buf, size_t len) {
  char* p = static_cast<char*>(buf);
  size_t done = 0;
  while (done < len) {
    ssize_t n = ::read(fd, p + done, len - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno("read");
    }
    if (n == 0)
      return MakeError(ErrorKind::kBadImage, 0, "truncated: got %zu of %zu bytes", done, len);
    done += n;
  }
  return Ok();
}

Result<void> WriteFile(const std::string& path, const std::string& data, bool atomic) {
  std::string target = atomic ? path + ".tmp" : path;
  ASSIGN_OR_RETURN(UniqueFd fd, Open(target, O_WRONLY | O_CREAT | O_TRUNC));
  TRY_CTX(WriteAll(fd.get(), data.data(), data.size()), "write %s", target.c_str());
  if (atomic) {
    if (::fsync(fd.get()) < 0) return Errno("fsync %s", target.c_str());
    if (::rename(target.c_str(), path.c_str()) < 0) return Errno("rename %s", path.c_str());
  }
  return Ok();
}

Result<void> MkdirAll(const std::string& path, int mode) {
  std::string cur;
  for (const auto& part : Split(path, '/')) {
    if (part.empty()) {
      if (cur.empty()) cur = "/";
      continue;
    }
    if (!cur.empty() && cur.back() != '/') cur += '/';
    cur += part;
    if (::mkdir(cur.c_str(), mode) < 0 && errno != EEXIST) return Errno("mkdir %s", cur.c_str());
  }
  return Ok();
}

Result<void> RemoveAll(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) < 0) {
    if (errno == ENOENT) return Ok();
    return Errno("stat %s", path.c_str());
  }
  int rc = ::nftw(
      path.c_str(),
      [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p) < 0 ? -1 : 0; },
      64, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  if (rc != 0) return Errno("remove %s", path.c_str());
  return Ok();
}

bool Exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

Result<std::vector<std::string>> ListDir(const std::string& path) {
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) return Errno("opendir %s", path.c_str());
  std::vector<std::string> out;
  while (struct dirent* e = ::readdir(d)) {
    if (e->d_name[0] == '.' && (e->d_name[1] == 0 || (e->d_name[1] == '.' && e->d_name[2] == 0)))
      continue;
    out.emplace_back(e->d_name);
  }
  ::closedir(d);
  return out;
}

std::vector<std::string> Split(const std::string& s, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t pos = s.find(sep, start);
    out.push_back(s.substr(start, pos - start));
    if (pos == std::string::npos) break;
    start = pos + 1;
  }
  return out;
}

std::string Trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\n\r");
  if (b == std::string::npos) return "";
  size_t e = s.find_last_not_of(" \t\n\r");
  return s.substr(b, e - b + 1);
}

}  // namespace godwit::fs
