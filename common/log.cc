#include "common/log.h"

#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace godwit::log {
namespace {
// The library reads no environment: the programs set the level (cli/main.cc from --log-level,
// --debug or GODWIT_LOG; godwitd from --log-level).
std::atomic<int> g_level{kWarn};
std::atomic<int> g_fd{2};

const char* kNames[] = {"error", "warn", "info", "debug"};

void VWrite(Level level, int err, const char* file, int line, const char* fmt, va_list ap) {
  char buf[1024];
  int n = snprintf(buf, sizeof(buf), "godwit[%d] %s: ", getpid(), kNames[level]);
  if (level == kDebug) {
    // Debug lines carry the monotonic clock (ms): where the time of a step goes, read off a log.
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    const char* base = strrchr(file, '/');
    n += snprintf(buf + n, sizeof(buf) - n,
                  "%ld.%03ld %s:%d: ", ts.tv_sec * 1000 + ts.tv_nsec / 1000000,
                  (ts.tv_nsec / 1000) % 1000, base ? base + 1 : file, line);
  }
  if (n < static_cast<int>(sizeof(buf))) n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
  if (err != 0 && n < static_cast<int>(sizeof(buf)))
    n += snprintf(buf + n, sizeof(buf) - n, ": %s", strerror(err));
  if (n >= static_cast<int>(sizeof(buf)) - 1) n = sizeof(buf) - 2;
  buf[n++] = '\n';
  // One write() per line so lines from parallel processes do not interleave.
  ssize_t unused = ::write(g_fd.load(std::memory_order_relaxed), buf, n);
  (void)unused;
}
}  // namespace

Level LevelFromName(const char* name, Level fallback) {
  if (name == nullptr) return fallback;
  if (!strcmp(name, "debug")) return kDebug;
  if (!strcmp(name, "info")) return kInfo;
  if (!strcmp(name, "warn")) return kWarn;
  if (!strcmp(name, "error")) return kError;
  return fallback;
}

void SetLevel(Level level) { g_level = level; }
void SetFd(int fd) { g_fd = fd; }
Level GetLevel() { return static_cast<Level>(g_level.load(std::memory_order_relaxed)); }

void Write(Level level, const char* file, int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  VWrite(level, 0, file, line, fmt, ap);
  va_end(ap);
}

void WriteErrno(Level level, int err, const char* file, int line, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  VWrite(level, err, file, line, fmt, ap);
  va_end(ap);
}

}  // namespace godwit::log
