#include "common/result.h"

#include <cstdio>
#include <cstring>

namespace godwit {

std::string VStrFormat(const char* fmt, va_list ap) {
  va_list ap2;
  va_copy(ap2, ap);
  char buf[512];
  int n = vsnprintf(buf, sizeof(buf), fmt, ap);
  std::string out;
  if (n < static_cast<int>(sizeof(buf))) {
    out.assign(buf, n < 0 ? 0 : n);
  } else {
    out.resize(n + 1);
    vsnprintf(out.data(), n + 1, fmt, ap2);
    out.resize(n);
  }
  va_end(ap2);
  return out;
}

std::string StrFormat(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = VStrFormat(fmt, ap);
  va_end(ap);
  return s;
}

Error MakeError(ErrorKind kind, int err, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = VStrFormat(fmt, ap);
  va_end(ap);
  return Error(kind, err, std::move(s));
}

Error Errno(const char* fmt, ...) {
  int err = errno;
  va_list ap;
  va_start(ap, fmt);
  std::string s = VStrFormat(fmt, ap);
  va_end(ap);
  ErrorKind kind = ErrorKind::kGeneric;
  if (err == ENOENT || err == ESRCH) kind = ErrorKind::kNotFound;
  if (err == EEXIST || err == EADDRINUSE) kind = ErrorKind::kExists;
  return Error(kind, err, std::move(s));
}

Error Err(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  std::string s = VStrFormat(fmt, ap);
  va_end(ap);
  return Error(ErrorKind::kGeneric, 0, std::move(s));
}

std::string Error::to_string() const {
  if (errno_ == 0) return msg_;
  return msg_ + ": " + strerror(errno_) + " (errno " + std::to_string(errno_) + ")";
}

}  // namespace godwit
