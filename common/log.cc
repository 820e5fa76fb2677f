#include "common/log.h"

#include <unistd.h>

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace godwit::log {
namespace {
std::atomic<int> g_level{[] {
  const char* env = getenv("GODWIT_LOG");
  if (env == nullptr) return static_cast<int>(kWarn);
  if (!strcmp(env, "debug")) return static_cast<int>(kDebug);
  if (!strcmp(env, "info")) return static_cast<int>(kInfo);
  if (!strcmp(env, "error")) return static_cast<int>(kError);
  return static_cast<int>(kWarn);
}()};

const char* kNames[] = {"error", "warn", "info", "debug"};

void VWrite(Level level, int err, const char* file, int line, const char* fmt, va_list ap) {
  char buf[1024];
  int n = snprintf(buf, sizeof(buf), "godwit[%d] %s: ", getpid(), kNames[level]);
  if (level == kDebug) {
    const char* base = strrchr(file, '/');
    n += snprintf(buf + n, sizeof(buf) - n, "%s:%d: ", base ? base + 1 : file, line);
  }
  if (n < static_cast<int>(sizeof(buf))) n += vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
  if (err != 0 && n < static_cast<int>(sizeof(buf)))
    n += snprintf(buf + n, sizeof(buf) - n, ": %s", strerror(err));
  if (n >= static_cast<int>(sizeof(buf)) - 1) n = sizeof(buf) - 2;
  buf[n++] = '\n';
  // One write() per line so lines from parallel processes do not interleave.
  ssize_t unused = ::write(STDERR_FILENO, buf, n);
  (void)unused;
}
}  // namespace

void SetLevel(Level level) { g_level = level; }
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
