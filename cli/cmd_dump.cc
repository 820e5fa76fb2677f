// `godwit dump --pid PID --images-dir DIR [--leave-running] [--compress zstd[:LEVEL]]
//  [--pre-copy[=N] | --pre-dump-rounds N] [--shell-job] [--external KEY]... [--tcp-established]
//  [--json]`: parses, opens the image directory, runs dump::Dump and prints.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>

#include "cli/command.h"
#include "common/args.h"
#include "cli/env_tuning.h"
#include "dump/dump.h"

namespace godwit::cli {
namespace {

// "--pre-copy" alone means "--pre-copy=2" (ParseArgs has no options with an optional value).
std::vector<std::string> DefaultPreCopy(std::vector<std::string> args) {
  for (auto& a : args) {
    if (a == "--") break;
    if (a == "--pre-copy") a = "--pre-copy=2";
  }
  return args;
}

int DumpCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{"pid", "images-dir", "compress", "external", "pre-dump-rounds", "pre-copy"},
               {"leave-running", "shell-job", "tcp-established"},
               {{"-t", "pid"}, {"-D", "images-dir"}, {"-R", "leave-running"}}};
  auto pa = ParseArgs(DefaultPreCopy(args), spec);
  if (!pa.ok()) return ReportError(g, "dump", pa.error());
  if (!pa->positionals.empty())  // "--pre-copy 3" is "--pre-copy" and a stray "3"
    return ReportError(g, "dump", MakeError(ErrorKind::kUsage, 0, "unexpected argument %s",
                                            pa->positionals[0].c_str()));
  dump::DumpOptions o;
  o.pid = atoi(pa->get("pid").c_str());
  std::string dir = pa->get("images-dir");
  if (o.pid <= 0 || dir.empty())
    return ReportError(g, "dump",
                       MakeError(ErrorKind::kUsage, 0, "need --pid PID and --images-dir DIR"));
  o.leave_running = pa->has("leave-running");
  o.shell_job = pa->has("shell-job");
  o.tcp_established = pa->has("tcp-established");
  o.external = pa->all("external");
  o.pre_rounds = atoi(pa->get("pre-dump-rounds", "0").c_str());
  if (pa->has("pre-copy")) {
    o.pre_rounds = atoi(pa->get("pre-copy").c_str());
    if (o.pre_rounds <= 0)
      return ReportError(g, "dump", MakeError(ErrorKind::kUsage, 0, "--pre-copy=N: N >= 1"));
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
  if (isatty(STDERR_FILENO) && !g.json) o.progress = TerminalProgress;
  if (auto ok = dump::Check(o); !ok.ok()) return ReportError(g, "dump", ok.error());
  auto sink = images::OpenDirSink(dir, true);
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
                        {"total_ms", s.total_ms},
                        {"left_running", o.leave_running},
                        {"pre_dump_rounds", o.pre_rounds},
                        {"pre_dump_bytes", s.pre_bytes},
                        {"pre_dump_round_bytes", s.round_bytes},
                        {"pre_dump_ms", s.pre_ms},
                        {"stored_raw_incompressible", s.incompressible}};
    nlohmann::json fds = nlohmann::json::object();
    for (const auto& [k, n] : s.fd_counts) fds[k] = n;
    j["fds"] = fds;
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
    if (o.pre_rounds > 0)
      printf("  pre-dump: %d round(s) while running, %.1f MiB in %.1f ms\n", o.pre_rounds,
             s.pre_bytes / 1048576.0, s.pre_ms);
    printf("  frozen %.1f ms (freezing %.1f ms, memory %.1f ms), total %.1f ms; tree %s\n",
           s.frozen_ms, s.freeze_ms, s.memdump_ms, s.total_ms,
           o.leave_running ? "left running" : "killed");
  }
  return 0;
}

}  // namespace

GODWIT_COMMAND(dump, "dump",
               "dump --pid PID --images-dir DIR [--leave-running] [--compress zstd[:LEVEL]] "
               "[--pre-copy[=N] | --pre-dump-rounds N] [--shell-job] [--external KEY]... [--json]",
               "checkpoint a running process tree into an image directory", DumpCmd);

}  // namespace godwit::cli
