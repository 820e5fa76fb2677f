// The only global besides nothing: a leveled logger writing to stderr. Library code logs debug
// and progress; only the command layer prints results and errors for the user.
#pragma once

#include <cerrno>

namespace godwit::log {

enum Level { kError = 0, kWarn = 1, kInfo = 2, kDebug = 3 };

void SetLevel(Level level);
// "error", "warn", "info", "debug" -> the level; anything else (or nullptr) -> fallback.
Level LevelFromName(const char* name, Level fallback = kWarn);
Level GetLevel();
// Where the lines go: stderr (2) unless told otherwise (a detached restore points godwit's own
// stderr at the container's log while it runs; its lines stay the caller's: cli/detached_output.h).
void SetFd(int fd);
void Write(Level level, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 4, 5)));
void WriteErrno(Level level, int err, const char* file, int line, const char* fmt, ...)
    __attribute__((format(printf, 5, 6)));

}  // namespace godwit::log

#define LOG_AT(lvl, ...)                                                              \
  do {                                                                                \
    if ((lvl) <= ::godwit::log::GetLevel()) ::godwit::log::Write(lvl, __FILE__, __LINE__, __VA_ARGS__); \
  } while (0)
#define LOG_ERROR(...) LOG_AT(::godwit::log::kError, __VA_ARGS__)
#define LOG_WARN(...) LOG_AT(::godwit::log::kWarn, __VA_ARGS__)
#define LOG_INFO(...) LOG_AT(::godwit::log::kInfo, __VA_ARGS__)
#define LOG_DEBUG(...) LOG_AT(::godwit::log::kDebug, __VA_ARGS__)
// PLOG_*: appends strerror(errno) captured at the call.
#define PLOG_AT(lvl, ...)                                                                  \
  do {                                                                                     \
    int godwit_plog_err_ = errno;                                                          \
    if ((lvl) <= ::godwit::log::GetLevel())                                                \
      ::godwit::log::WriteErrno(lvl, godwit_plog_err_, __FILE__, __LINE__, __VA_ARGS__);   \
  } while (0)
#define PLOG_ERROR(...) PLOG_AT(::godwit::log::kError, __VA_ARGS__)
#define PLOG_WARN(...) PLOG_AT(::godwit::log::kWarn, __VA_ARGS__)
