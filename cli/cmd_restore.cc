// `godwit restore --images-dir DIR [--detach] [--pid-file F] [--shell-job]
//  [--inherit-fd fd[N]:KEY]... [--tcp-close] [--json]`: a process tree (the engine; CRIU's names
//  for the same are accepted, cli/criu_opts.h), and
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
#include "cli/criu_opts.h"
#include "cli/tuning_env.h"
#include "common/args.h"
#include "common/fs.h"
#include "restore/lazy.h"
#include "restore/restore.h"

namespace godwit::cli {
namespace {

constexpr const char kRestoreUsage[] =
    "restore --images-dir DIR [OPTIONS]                  (a process tree)\n"
    "       godwit restore ID --image-path DIR | --import FILE [--bundle DIR]\n"
    "               [--ip A.B.C.D[/N]] [--bridge BR] [--no-announce] [--keep-locked]\n"
    "               [--detach] [--lazy [--discard-pages]] [--pid-file F] [--json]\n"
    "                                                    (a container)\n"
    "\n"
    "Recreates the process tree dumped into DIR with the same pids. Without --detach\n"
    "the restored root is a child of godwit, which waits for it and exits with its\n"
    "status (128+signal if killed). With --detach godwit exits once the tree runs: the\n"
    "root's parent becomes the nearest subreaper above godwit (PR_SET_CHILD_SUBREAPER),\n"
    "else pid 1. Where pid 1 does not reap (a container's init, some VMs) the root\n"
    "stays a zombie when it exits and holds its pid: the next restore of the same\n"
    "images fails naming it. Run detached restores (and what ends them) under\n"
    "`godwit subreaper -- SCRIPT`, or from a supervisor that is a subreaper and reaps\n"
    "the pid written by --pid-file. CRIU's names are accepted where godwit means the\n"
    "same; established TCP connections, file locks and files unlinked while open\n"
    "come back as the images hold them, without flags.\n"
    "\n"
    "options (process tree):\n"
    "  --images-dir DIR, -D DIR           the images of `godwit dump`\n"
    "  --detach, -d, --restore-detached   return once the tree runs (CRIU: -d)\n"
    "  --pid-file F, --pidfile F          write the restored root's pid to F\n"
    "  --tcp-close                        restore established TCP connections closed\n"
    "  --lazy                             run the tree as soon as its non-memory state is\n"
    "                                     back; anonymous memory is paged in afterwards\n"
    "                                     (userfaultfd: faulted pages first, the rest in the\n"
    "                                     background). With --detach a pager process does\n"
    "                                     it: its pid is printed (lazy_pager_pid); the pages\n"
    "                                     are all in when it exits. Same for containers.\n"
    "  --discard-pages                    (with --lazy) the page files are freed\n"
    "                                     as their pages go in: the new pages reuse that\n"
    "                                     memory, and DIR cannot be restored again (godwitd\n"
    "                                     does it with its staging)\n"
    "  --no-announce                      (container) no gratuitous ARP or NA for its addresses\n"
    "  --keep-locked                      (container; a migration's destination) its TCP\n"
    "                                     connections stay locked and it sends nothing at\n"
    "                                     all (no IPv6 solicitation, no ARP) until the lock\n"
    "                                     named in files-netlock.img (godwit_quiet without\n"
    "                                     connections) is opened: godwitd opens it at the\n"
    "                                     migration's commit\n"
    "  --tcp-established                  accepted: connections in the images are restored\n"
    "                                     live (CRIU needs the flag on restore too)\n"
    "  --shell-job, -j                    a terminal from outside the dumped tree is the\n"
    "                                     restore's own (its fds 0-2)\n"
    "  --inherit-fd fd[N]:KEY             godwit's fd N stands for the external KEY named at\n"
    "                                     dump (--external), e.g. fd[0]:pipe:[1234]\n"
    "  --ext-unix-sk[=INO], -x[INO]       accepted: datagram sockets allowed at dump are\n"
    "                                     reconnected to their named peer\n"
    "  --file-locks, -l, --link-remap, --skip-in-flight, --evasive-devices,\n"
    "  --ghost-limit SIZE                 accepted: what the images hold is restored\n"
    "  --manage-cgroups[=MODE]            accepted (none|props|soft|full|strict|ignore;\n"
    "                                     runc: --manage-cgroups-mode MODE)\n"
    "  --network-lock nftables|iptables|skip  accepted: the dump's nftables lock is removed\n"
    "                                     once the connections are live\n"
    "  --timeout N                        accepted: restore bounds its own waits\n"
    "  --root /                           accepted only as /: restoring into another root is\n"
    "                                     a container restore\n"
    "  -v, -vv, -vN, --verbosity=N        log level: 0-1 errors, 2 warnings, 3 info, 4 debug\n"
    "  --log-file FILE, -o FILE, --work-dir DIR, -W DIR, --log-pid, --display-stats\n"
    "                                     accepted: logs go to stderr\n"
    "  --json                             print the statistics as JSON\n"
    "\n"
    "examples:\n"
    "  godwit restore --images-dir /tmp/ck\n"
    "  godwit restore -D /tmp/ck -d --pidfile /tmp/ck.pid --tcp-established -j -v4 -o rst.log\n"
    "  godwit restore --images-dir /tmp/ck --inherit-fd fd[0]:pipe:[1234] --tcp-close\n"
    "  godwit restore --images-dir /tmp/ck --lazy -d --json\n"
    "  godwit restore web1 --image-path /tmp/ck --bundle /srv/web1 --detach";

// The engine refuses a pid that is taken ("pid N is in use"). When N is a zombie, say whose, and
// what to do: the usual one is the root of an earlier `restore --detach` that exited after its
// parent godwit had gone, re-parented to a pid 1 that does not reap.
Error ExplainTakenPid(const Error& err) {
  size_t at = err.message().find("pid ");
  int pid = 0;
  if (err.kind() != ErrorKind::kExists || at == std::string::npos ||
      sscanf(err.message().c_str() + at, "pid %d is in use", &pid) != 1 || pid <= 0)
    return err;
  auto stat = fs::ReadFile(StrFormat("/proc/%d/stat", pid));
  if (!stat.ok()) return err;
  // "pid (comm) S ppid ...": comm may hold spaces and parentheses; the last ')' ends it.
  size_t close = stat->rfind(')');
  char state = 0;
  int ppid = 0;
  if (close == std::string::npos || sscanf(stat->c_str() + close + 1, " %c %d", &state, &ppid) != 2 ||
      state != 'Z')
    return err;
  auto with = [&](const std::string& why) {
    return Error(err.kind(), err.sys_errno(), err.message() + ": " + why);
  };
  if (ppid == 1)
    return with(StrFormat(
        "pid %d is a zombie whose parent is pid 1, which does not reap it on this host: most "
        "likely the root of an earlier `restore --detach` (its parent is the nearest subreaper "
        "above godwit, else pid 1) that has exited. Only its parent can free the pid; run "
        "detached restores and whatever ends them under `godwit subreaper -- SCRIPT`, or from a "
        "supervisor that is a subreaper and reaps the pid written by --pid-file",
        pid));
  return with(StrFormat("pid %d is a zombie not yet reaped by its parent, pid %d", pid, ppid));
}

int RestoreCmd(Global& g, const std::vector<std::string>& args) {
  std::vector<std::string> norm = NormalizeCriuArgs(args, CriuVerb::kRestore);
  if (IsContainerRestore(norm)) return ContainerRestoreCmd(g, args);
  ArgSpec spec{{"images-dir", "pid-file", "inherit-fd"},
               {"detach", "shell-job", "tcp-close", "lazy", "discard-pages"},
               {{"-D", "images-dir"}, {"-d", "detach"}}};
  AddCriuOptions(spec, CriuVerb::kRestore);
  auto pa = ParseArgs(norm, spec);
  if (!pa.ok()) return ReportError(g, "restore", pa.error());
  auto criu = ApplyCriuOptions(*pa, CriuVerb::kRestore);
  if (!criu.ok()) return ReportError(g, "restore", criu.error());
  restore::RestoreOptions o;
  o.images_dir = pa->get("images-dir");
  if (o.images_dir.empty())
    return ReportError(g, "restore", MakeError(ErrorKind::kUsage, 0, "need --images-dir DIR"));
  o.detach = pa->has("detach");
  o.pid_file = pa->get("pid-file");
  o.shell_job = pa->has("shell-job");
  o.tcp_close = pa->has("tcp-close");
  o.lazy = pa->has("lazy");
  o.lazy_discard = pa->has("discard-pages");
  if (o.lazy_discard && !o.lazy)
    return ReportError(g, "restore",
                       MakeError(ErrorKind::kUsage, 0, "--discard-pages needs --lazy"));
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
  if (ProgressFn f = ProgressFor(g)) o.progress = f;
  RestoreTuningFromEnv(&o);
  auto r = restore::Restore(o);
  if (!r.ok()) return ReportError(g, "restore", ExplainTakenPid(r.error()));
  const auto& s = *r;
  // Lazy: the pages still owed are installed by this process while it waits for the root, or,
  // detached, by a pager process of its own (its pid is printed: wait for it to exit).
  pid_t pager_pid = 0;
  if (s.pager && o.detach) {
    auto d = s.pager->Detach();
    if (!d.ok()) return ReportError(g, "restore", d.error());
    pager_pid = *d;
  }
  if (g.json) {
    nlohmann::json j = {{"root_pid", s.root_pid}, {"processes", s.processes},
                        {"zombies", s.zombies},   {"threads", s.threads},
                        {"vmas", s.vmas},         {"pages", s.pages},
                        {"bytes", s.bytes},       {"remote_syscalls", s.remote_calls},
                        {"fork_ms", s.fork_ms},   {"memory_ms", s.memory_ms},
                        {"total_ms", s.total_ms}, {"detached", o.detach},
                        {"lazy_bytes", s.lazy_bytes}, {"hot_bytes", s.hot_bytes},
                        {"lazy_pager_pid", pager_pid}};
    printf("%s\n", j.dump().c_str());
  } else {
    printf("restored %d process(es) (%d zombie), %d thread(s), root pid %d\n", s.processes,
           s.zombies, s.threads, s.root_pid);
    printf("  pages: %llu (%.1f MiB), %llu VMAs; fork %.1f ms, memory %.1f ms, total %.1f ms\n",
           static_cast<unsigned long long>(s.pages), s.bytes / 1048576.0,
           static_cast<unsigned long long>(s.vmas), s.fork_ms, s.memory_ms, s.total_ms);
    if (s.lazy_bytes > 0)
      printf("  lazy: %.1f MiB paged in after the tree runs%s (%.1f MiB written last before "
             "the dump installed first)\n",
             s.lazy_bytes / 1048576.0,
             pager_pid > 0 ? StrFormat(" by pager pid %d", pager_pid).c_str() : "",
             s.hot_bytes / 1048576.0);
  }
  fflush(stdout);
  if (o.detach) return 0;
  auto st = restore::WaitRoot(s.root_pid);
  if (!st.ok()) return ReportError(g, "restore", st.error());
  return *st;
}

}  // namespace

GODWIT_COMMAND(restore, "restore", kRestoreUsage,
               "recreate a checkpointed container, or process tree (same pids)", RestoreCmd);

}  // namespace godwit::cli
