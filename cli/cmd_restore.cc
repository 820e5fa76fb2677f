// `godwit restore --images-dir DIR [--detach] [--pid-file F] [--shell-job]
//  [--inherit-fd fd[N]:KEY]... [--tcp-close] [--json]`: a process tree (the engine), and
// `godwit restore ID --image-path DIR | --import FILE [--bundle DIR] [--detach]`: a container
// (cmd_container.cc; runc's flag names), told apart by IsContainerRestore.
// Without --detach, waits for the restored root (a child of this process) and exits with its
// status (128+signal if it was killed).
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli/cmd_container.h"
#include "cli/command.h"
#include "cli/tuning_env.h"
#include "common/args.h"
#include "restore/restore.h"

namespace godwit::cli {
namespace {

int RestoreCmd(Global& g, const std::vector<std::string>& args) {
  if (IsContainerRestore(args)) return ContainerRestoreCmd(g, args);
  ArgSpec spec{{"images-dir", "pid-file", "inherit-fd"},
               {"detach", "shell-job", "tcp-close"},
               {{"-D", "images-dir"}, {"-d", "detach"}}};
  auto pa = ParseArgs(args, spec);
  if (!pa.ok()) return ReportError(g, "restore", pa.error());
  restore::RestoreOptions o;
  o.images_dir = pa->get("images-dir");
  if (o.images_dir.empty())
    return ReportError(g, "restore", MakeError(ErrorKind::kUsage, 0, "need --images-dir DIR"));
  o.detach = pa->has("detach");
  o.pid_file = pa->get("pid-file");
  o.shell_job = pa->has("shell-job");
  o.tcp_close = pa->has("tcp-close");
  for (const auto& s : pa->all("inherit-fd")) {
    // fd[N]:KEY
    int n = -1;
    size_t colon = s.find(':');
    if (s.rfind("fd[", 0) != 0 || colon == std::string::npos ||
        sscanf(s.c_str(), "fd[%d]", &n) != 1)
      return ReportError(
          g, "restore",
          MakeError(ErrorKind::kUsage, 0, "--inherit-fd %s: want fd[N]:KEY", s.c_str()));
    o.inherit_fds.push_back({n, s.substr(colon + 1)});
  }
  if (isatty(STDERR_FILENO) && !g.json) o.progress = TerminalProgress;
  RestoreTuningFromEnv(&o);
  auto r = restore::Restore(o);
  if (!r.ok()) return ReportError(g, "restore", r.error());
  const auto& s = *r;
  if (g.json) {
    nlohmann::json j = {{"root_pid", s.root_pid}, {"processes", s.processes},
                        {"zombies", s.zombies},   {"threads", s.threads},
                        {"vmas", s.vmas},         {"pages", s.pages},
                        {"bytes", s.bytes},       {"remote_syscalls", s.remote_calls},
                        {"fork_ms", s.fork_ms},   {"memory_ms", s.memory_ms},
                        {"total_ms", s.total_ms}, {"detached", o.detach}};
    printf("%s\n", j.dump().c_str());
  } else {
    printf("restored %d process(es) (%d zombie), %d thread(s), root pid %d\n", s.processes,
           s.zombies, s.threads, s.root_pid);
    printf("  pages: %llu (%.1f MiB), %llu VMAs; fork %.1f ms, memory %.1f ms, total %.1f ms\n",
           static_cast<unsigned long long>(s.pages), s.bytes / 1048576.0,
           static_cast<unsigned long long>(s.vmas), s.fork_ms, s.memory_ms, s.total_ms);
  }
  fflush(stdout);
  if (o.detach) return 0;
  auto st = restore::WaitRoot(s.root_pid);
  if (!st.ok()) return ReportError(g, "restore", st.error());
  return *st;
}

}  // namespace

GODWIT_COMMAND(restore, "restore",
               "restore ID --image-path DIR | --import FILE [--bundle DIR] [--ip A.B.C.D[/N]] "
               "[--detach] [--pid-file F] [--json]  (a container); "
               "restore --images-dir DIR [--detach] [--pid-file F] [--shell-job] "
               "[--inherit-fd fd[N]:KEY]... [--tcp-close] [--json]  (a process tree)",
               "recreate a checkpointed container, or process tree (same pids)", RestoreCmd);

}  // namespace godwit::cli
