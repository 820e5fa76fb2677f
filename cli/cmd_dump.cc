// `godwit dump --pid PID --images-dir DIR [--leave-running] [--compress zstd[:LEVEL]]
//  [--shell-job] [--external KEY]... [--tcp-established] [--json]`, and CRIU's names for the same
// (cli/criu_opts.h); `godwit help dump` describes every option.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "cli/criu_opts.h"
#include "cli/tuning_env.h"
#include "common/args.h"
#include "dump/dump.h"

namespace godwit::cli {
namespace {

// "--pre-copy" alone means "--pre-copy=auto": rounds until they converge (ParseArgs has no
// options with an optional value).
std::vector<std::string> DefaultPreCopy(std::vector<std::string> args) {
  for (auto& a : args) {
    if (a == "--") break;
    if (a == "--pre-copy") a = "--pre-copy=auto";
  }
  return args;
}

constexpr const char kDumpUsage[] =
    "dump --pid PID --images-dir DIR [OPTIONS]\n"
    "\n"
    "Checkpoints the process tree rooted at PID into DIR, then kills it (unless\n"
    "--leave-running). Restore it with `godwit restore --images-dir DIR`.\n"
    "CRIU's and runc's names are accepted where godwit means the same; file locks,\n"
    "files unlinked while open and not-yet-accepted connections need no flag.\n"
    "\n"
    "options:\n"
    "  --pid PID, -t PID, --tree PID      root of the tree to dump (CRIU: -t/--tree)\n"
    "  --images-dir DIR, -D DIR           where the images go (runc: --image-path)\n"
    "  --leave-running, -R                let the tree run on after the dump\n"
    "  --tcp-established                  dump established TCP connections (TCP_REPAIR);\n"
    "                                     without it a tree holding one is refused\n"
    "  --tcp-close                        record established connections like\n"
    "                                     --tcp-established; `restore --tcp-close` brings\n"
    "                                     them back closed\n"
    "  --shell-job, -j                    stdio on a terminal or pipes from outside the tree\n"
    "                                     is allowed (restore it with --shell-job)\n"
    "  --external KEY                     allow a description connected outside the tree:\n"
    "                                     socket:[INO], unix:[PEER_INO], unix:/PATH, pipe:[INO],\n"
    "                                     tty:PATH (restore with --inherit-fd fd[N]:KEY)\n"
    "  --ext-unix-sk[=INO], -x[INO]       CRIU: a unix socket connected to a peer outside the\n"
    "                                     tree; no INO: datagram sockets connected to a named\n"
    "                                     peer (/dev/log), reconnected by name at restore\n"
    "  --compress zstd[:LEVEL]            compress the memory pages\n"
    "  --pre-copy[=N], --pre-dump-rounds N  copy memory N times while the tree runs first:\n"
    "                                     the freeze covers only what changed; without N, until\n"
    "                                     a round is small (8 MiB) or stops shrinking (8 at most)\n"
    "  --file-locks, -l                   accepted: flock, POSIX and OFD locks and leases are\n"
    "                                     always dumped\n"
    "  --link-remap, --ghost-limit SIZE   accepted: files unlinked while open are always saved\n"
    "                                     (their data, up to 4 GiB, holes skipped)\n"
    "  --skip-in-flight                   accepted: not yet accepted TCP connections of a\n"
    "                                     listener are always dropped (logged)\n"
    "  --evasive-devices                  accepted: devices are reopened by path\n"
    "  --manage-cgroups[=MODE]            accepted (none|props|soft|full|strict|ignore;\n"
    "                                     runc: --manage-cgroups-mode MODE)\n"
    "  --network-lock nftables|iptables|skip  accepted: connections are locked with\n"
    "                                     nftables\n"
    "  --timeout N                        accepted: freezing is bounded by godwit itself\n"
    "  --root /                           accepted only as /: a tree in another root is a\n"
    "                                     container (godwit checkpoint)\n"
    "  -v, -vv, -vN, --verbosity=N        log level: 0-1 errors, 2 warnings, 3 info, 4 debug\n"
    "  --log-file FILE, -o FILE, --work-dir DIR, -W DIR, --log-pid, --display-stats\n"
    "                                     accepted: logs go to stderr\n"
    "  --json                             print the statistics as JSON\n"
    "\n"
    "examples:\n"
    "  godwit dump --pid 4242 --images-dir /tmp/ck\n"
    "  godwit dump -t 4242 -D /tmp/ck --tcp-established --shell-job -v4 -o dump.log\n"
    "  godwit dump --pid 4242 --images-dir /tmp/ck --leave-running --compress zstd";

int DumpCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{"pid", "images-dir", "compress", "external", "pre-dump-rounds", "pre-copy"},
               {"leave-running", "shell-job", "tcp-established"},
               {{"-t", "pid"}, {"-D", "images-dir"}, {"-R", "leave-running"}}};
  AddCriuOptions(spec, CriuVerb::kDump);
  auto pa = ParseArgs(DefaultPreCopy(NormalizeCriuArgs(args, CriuVerb::kDump)), spec);
  if (!pa.ok()) return ReportError(g, "dump", pa.error());
  if (!pa->positionals.empty())  // "--pre-copy 3" is "--pre-copy" and a stray "3"
    return ReportError(g, "dump", MakeError(ErrorKind::kUsage, 0, "unexpected argument %s",
                                            pa->positionals[0].c_str()));
  auto criu = ApplyCriuOptions(*pa, CriuVerb::kDump);
  if (!criu.ok()) return ReportError(g, "dump", criu.error());
  dump::DumpOptions o;
  o.pid = atoi(pa->get("pid").c_str());
  std::string dir = pa->get("images-dir");
  if (o.pid <= 0 || dir.empty())
    return ReportError(g, "dump",
                       MakeError(ErrorKind::kUsage, 0, "need --pid PID and --images-dir DIR"));
  o.leave_running = pa->has("leave-running");
  o.shell_job = pa->has("shell-job");
  // --tcp-close (CRIU): the connections are recorded as with --tcp-established; restore
  // --tcp-close brings them back closed.
  o.tcp_established = pa->has("tcp-established") || pa->has("tcp-close");
  o.external = pa->all("external");
  o.external.insert(o.external.end(), criu->external.begin(), criu->external.end());
  o.pre_rounds = atoi(pa->get("pre-dump-rounds", "0").c_str());
  if (pa->has("pre-copy")) {
    auto n = ParsePreCopy(pa->get("pre-copy"));
    if (!n.ok()) return ReportError(g, "dump", n.error());
    o.pre_rounds = *n;
  }
  o.tuning = DumpTuningFromEnv();
  std::string c = pa->get("compress");
  if (!c.empty()) {
    if (c.rfind("zstd", 0) != 0)
      return ReportError(g, "dump",
                         MakeError(ErrorKind::kUsage, 0, "--compress: only zstd[:LEVEL]"));
    o.compression = images::Compression::kZstd;
    if (c.size() > 5 && c[4] == ':') o.zstd_level = atoi(c.c_str() + 5);
  }
  if (ProgressFn f = ProgressFor(g)) o.progress = f;
  if (auto ok = dump::Check(o); !ok.ok()) return ReportError(g, "dump", ok.error());
  auto sink = images::OpenDirSink(dir, DirSinkTuningFromEnv(true));
  if (!sink.ok()) return ReportError(g, "dump", sink.error());
  auto r = dump::Dump(o, **sink);
  if (!r.ok()) return ReportError(g, "dump", r.error());
  const auto& s = *r;
  if (g.json) {
    nlohmann::json j = {{"pid", o.pid},
                        {"images_dir", dir},
                        {"processes", s.processes},
                        {"zombies", s.zombies},
                        {"threads", s.threads},
                        {"vmas", s.vmas},
                        {"pages_dumped", s.pages_dumped},
                        {"pages_zero_skipped", s.pages_zero},
                        {"pages_file_skipped", s.pages_file},
                        {"shmem_pages", s.shmem_pages},
                        {"bytes", s.bytes_logical},
                        {"bytes_stored", s.bytes_stored},
                        {"remote_syscalls", s.remote_calls},
                        {"freeze_ms", s.freeze_ms},
                        {"frozen_ms", s.frozen_ms},
                        {"memdump_ms", s.memdump_ms},
                        {"released_bytes", s.released_bytes},
                        {"captured_bytes", s.captured_bytes},
                        {"drain_ms", s.drain_ms},
                        {"total_ms", s.total_ms},
                        {"left_running", o.leave_running},
                        {"pre_dump_rounds", s.round_bytes.size()},
                        {"pre_reserved_bytes", s.pre_reserved_bytes},
                        {"pre_dump_bytes", s.pre_bytes},
                        {"pre_dump_round_bytes", s.round_bytes},
                        {"pre_dump_ms", s.pre_ms},
                        {"stored_raw_incompressible", s.incompressible}};
    nlohmann::json fds = nlohmann::json::object();
    for (const auto& [k, n] : s.fd_counts) fds[k] = n;
    j["fds"] = fds;
    nlohmann::json steps = nlohmann::json::object();
    for (const auto& [k, ms] : s.step_ms) steps[k + "_ms"] = ms;
    j["frozen_steps"] = steps;
    printf("%s\n", j.dump().c_str());
  } else {
    printf("dumped %d process(es) (%d zombie), %d thread(s), %llu VMAs into %s\n", s.processes,
           s.zombies, s.threads, static_cast<unsigned long long>(s.vmas), dir.c_str());
    printf(
        "  pages: %llu stored (%.1f MiB, %.1f MiB in the image), %llu zero and %llu unwritten "
        "file pages skipped, %llu shared-memory pages\n",
        static_cast<unsigned long long>(s.pages_dumped), s.bytes_logical / 1048576.0,
        s.bytes_stored / 1048576.0, static_cast<unsigned long long>(s.pages_zero),
        static_cast<unsigned long long>(s.pages_file),
        static_cast<unsigned long long>(s.shmem_pages));
    if (!s.round_bytes.empty())
      printf("  pre-dump: %zu round(s) while running, %.1f MiB in %.1f ms\n",
             s.round_bytes.size(), s.pre_bytes / 1048576.0, s.pre_ms);
    printf("  frozen %.1f ms (freezing %.1f ms, memory %.1f ms), total %.1f ms; tree %s\n",
           s.frozen_ms, s.freeze_ms, s.memdump_ms, s.total_ms,
           o.leave_running ? "left running" : "killed");
  }
  return 0;
}

}  // namespace

GODWIT_COMMAND(dump, "dump", kDumpUsage,
               "checkpoint a running process tree into an image directory", DumpCmd);

}  // namespace godwit::cli
