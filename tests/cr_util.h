// Shared pieces of the checkpoint/restore tests: start a zdtm-style helper with a ready pipe, run
// the godwit binary, temp dirs, reaping by pid.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

namespace godwit::crtest {

struct RunResult {
  int status = -1;  // exit code, or 128+signal
  std::string out, err;
};

// Runs GODWIT_BIN with args, waits, captures stdout and stderr.
RunResult Godwit(const std::vector<std::string>& args);
// Starts godwit in the background (stdout/stderr to files under dir); returns its pid.
pid_t GodwitAsync(const std::vector<std::string>& args);

// Starts GODWIT_HELPERS/name with args; "{READY}" in args is replaced by the ready pipe's fd
// number. stdin/stdout/stderr are /dev/null. Waits until the helper writes a line to the pipe and
// closes it (returns -1 if it exits first). The helper is a direct child of the test.
pid_t StartHelper(const std::string& name, std::vector<std::string> args,
                  std::string* line = nullptr);

// The same for any program (absolute path).
pid_t StartProgram(const std::string& path, std::vector<std::string> args,
                   std::string* line = nullptr);

// waitpid(pid) -> exit code or 128+signal; -1 on error.
int Wait(pid_t pid);

// A temporary directory removed on destruction (with everything in it).
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }
  std::string operator/(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

void Touch(const std::string& path);
// Kills (SIGKILL) and reaps pid if it still exists; for fixtures' cleanup.
// pid's descendants now (children, their children, ...), from /proc/PID/task/PID/children.
std::vector<pid_t> Descendants(pid_t pid);
void KillAndReap(pid_t pid);
// Polls a condition (kernel-async state only) for up to ms milliseconds.
bool WaitFor(int ms, bool (*cond)(pid_t), pid_t pid);
// The syscall number pid's main thread is blocked in (from /proc/PID/syscall), or -1.
long BlockedSyscall(pid_t pid);

}  // namespace godwit::crtest
