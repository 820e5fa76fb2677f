// `godwit subreaper -- CMD...`: runs CMD as a child subreaper and reaps every orphan below it.
//
// Detached containers and restored trees outlive the godwit invocation that started them; when
// they die, their parent is whoever reaps orphans. On a normal system that is pid 1, but some
// (this project's test VM among them) have a pid 1 that never reaps, so dead containers stay
// zombies and keep their pids (a later restore of the same pid then fails). Scripts that start
// detached containers run under this verb; it exits with CMD's status.
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "cli/command.h"
#include "common/fs.h"
#include "common/proc.h"

namespace godwit::cli {
namespace {

int Subreaper(Global& global, const std::vector<std::string>& args) {
  size_t start = (!args.empty() && args[0] == "--") ? 1 : 0;
  if (start >= args.size()) {
    fprintf(stderr, "usage: godwit subreaper -- CMD [ARG...]\n");
    return static_cast<int>(ErrorKind::kUsage);
  }
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
    return ReportError(global, "subreaper", Errno("prctl(PR_SET_CHILD_SUBREAPER)"));
  pid_t child = fork();
  if (child < 0) return ReportError(global, "subreaper", Errno("fork"));
  if (child == 0) {
    std::vector<char*> argv;
    for (size_t i = start; i < args.size(); ++i) argv.push_back(const_cast<char*>(args[i].c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    fprintf(stderr, "godwit subreaper: exec %s: %m\n", argv[0]);
    _exit(127);
  }
  // Reap everything until CMD itself exits, then whatever is already dead. Descendants still
  // running after CMD are left alone (named on stderr): they are not ours to end.
  int code = 0;
  bool child_done = false;
  for (;;) {
    int status;
    pid_t p = waitpid(-1, &status, child_done ? WNOHANG : 0);
    if (p < 0 && errno == EINTR) continue;
    if (p < 0) break;  // ECHILD: every descendant has been reaped
    if (p == 0) {
      // Named: our children now (each orphan below us was re-parented here).
      std::string who;
      if (auto names = fs::ListDir("/proc"); names.ok()) {
        for (const auto& n : *names) {
          char* end = nullptr;
          long pid = strtol(n.c_str(), &end, 10);
          if (pid <= 0 || *end != '\0') continue;
          auto st = proc::ReadStat(static_cast<pid_t>(pid));
          if (!st.ok() || st->ppid != getpid()) continue;
          std::string cmd = st->comm;
          if (auto c = fs::ReadFile(StrFormat("/proc/%ld/cmdline", pid)); c.ok() && !c->empty()) {
            cmd = c->substr(0, 120);
            for (char& ch : cmd)
              if (ch == '\0') ch = ' ';
            while (!cmd.empty() && cmd.back() == ' ') cmd.pop_back();
          }
          who += StrFormat(" %ld (%s)", pid, cmd.c_str());
        }
      }
      fprintf(stderr, "godwit subreaper: descendants of %s still running after it exited:%s\n",
              args[start].c_str(), who.empty() ? " (gone meanwhile)" : who.c_str());
      break;
    }
    if (p == child) {
      code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      child_done = true;
    }
  }
  return code;
}

}  // namespace

GODWIT_COMMAND(subreaper, "subreaper", "subreaper -- CMD [ARG...]",
               "run CMD as a child subreaper that reaps every orphaned descendant", Subreaper,
               "Runs CMD as a child subreaper (PR_SET_CHILD_SUBREAPER): every process orphaned\n"
               "below it (detached containers, restored trees whose godwit has exited) is\n"
               "re-parented to it and reaped when it exits, instead of becoming a zombie of a\n"
               "pid 1 that does not reap. Exits with CMD's status once CMD has exited; descendants\n"
               "still running then are named on stderr and left alone.\n"
               "\n"
               "examples:\n"
               "  godwit subreaper -- sh -c 'godwit restore -D /tmp/ck -d --pidfile p; ...; kill $(cat p)'\n"
               "  godwit subreaper -- ./scripts/my-migration-test\n");

}  // namespace godwit::cli
