// Errors are values. A Result<T> holds either a T or an Error; an Error carries the errno that
// caused it (0 if none), a category that the command layer maps to an exit code, and a message
// that grows context on the way up ("restore pid 42: open /img/core-42.img: No such file").
#pragma once

#include <cerrno>
#include <cstdarg>
#include <string>
#include <utility>
#include <variant>

namespace godwit {

// Exit codes of every godwit command (documented in README.md). The category of the first
// error decides the exit code.
enum class ErrorKind : int {
  kGeneric = 1,      // anything else, e.g. a kernel call failed
  kUsage = 2,        // bad command line
  kNotFound = 3,     // unknown container id, pid, image directory
  kExists = 4,       // id, address, pid or name already taken
  kBadImage = 5,     // corrupt, truncated, wrong version or incomplete image
  kUnsupported = 6,  // state or feature godwit cannot handle faithfully
  kBadConfig = 7,    // malformed or unsupported config.json
  kPeer = 8,         // migration peer failed or disconnected
};

class Error {
 public:
  Error(ErrorKind kind, int err, std::string msg) : kind_(kind), errno_(err), msg_(std::move(msg)) {}

  ErrorKind kind() const { return kind_; }
  int sys_errno() const { return errno_; }
  const std::string& message() const { return msg_; }
  int exit_code() const { return static_cast<int>(kind_); }

  // Prepends context: "ctx: message".
  Error& wrap(const std::string& ctx) {
    msg_ = ctx + ": " + msg_;
    return *this;
  }
  // Full text including strerror(errno) when errno is set.
  std::string to_string() const;

 private:
  ErrorKind kind_;
  int errno_;
  std::string msg_;
};

// printf-style constructors. Errno() captures errno at the call.
Error MakeError(ErrorKind kind, int err, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
Error Errno(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
Error Err(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string StrFormat(const char* fmt, ...) __attribute__((format(printf, 1, 2)));
std::string VStrFormat(const char* fmt, va_list ap);

template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Error err) : v_(std::move(err)) {}  // NOLINT

  bool ok() const { return v_.index() == 0; }
  explicit operator bool() const { return ok(); }
  T& value() & { return std::get<0>(v_); }
  T&& value() && { return std::get<0>(std::move(v_)); }
  const T& value() const& { return std::get<0>(v_); }
  T& operator*() & { return value(); }
  T&& operator*() && { return std::move(*this).value(); }
  const T& operator*() const& { return value(); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  Error& error() & { return std::get<1>(v_); }
  Error&& error() && { return std::get<1>(std::move(v_)); }
  const Error& error() const& { return std::get<1>(v_); }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error err) : err_(std::move(err)), ok_(false) {}  // NOLINT
  bool ok() const { return ok_; }
  explicit operator bool() const { return ok_; }
  Error& error() & { return err_; }
  Error&& error() && { return std::move(err_); }
  const Error& error() const& { return err_; }

 private:
  Error err_{ErrorKind::kGeneric, 0, ""};
  bool ok_ = true;
};

inline Result<void> Ok() { return {}; }

}  // namespace godwit

#define GODWIT_CONCAT_(a, b) a##b
#define GODWIT_CONCAT(a, b) GODWIT_CONCAT_(a, b)

// TRY(expr): returns the error of a failed Result from the enclosing function.
#define TRY(expr)                                         \
  do {                                                    \
    auto&& godwit_try_r_ = (expr);                        \
    if (!godwit_try_r_.ok()) return std::move(godwit_try_r_).error(); \
  } while (0)

// TRY_CTX(expr, fmt, ...): same, adding printf-style context to the error.
#define TRY_CTX(expr, ...)                                                       \
  do {                                                                           \
    auto&& godwit_try_r_ = (expr);                                               \
    if (!godwit_try_r_.ok())                                                     \
      return std::move(godwit_try_r_.error().wrap(::godwit::StrFormat(__VA_ARGS__))); \
  } while (0)

// ASSIGN_OR_RETURN(lhs, expr): lhs = value of expr, or return its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL_(GODWIT_CONCAT(godwit_aor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr)    \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return std::move(tmp).error();   \
  lhs = std::move(tmp).value()
