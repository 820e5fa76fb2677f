// `godwit checkpoint ID --image-path DIR [--leave-running] [--pre-copy[=N]] [--compress zstd[:L]]
//  [--export FILE]`
// `godwit restore ID --image-path DIR | --import FILE [--bundle DIR] [--detach] [--pid-file F]`
// (flag names as runc checkpoint/restore). Parses and prints; the library is container/, bound to
// the engine (dump/, restore/) in container/engine.h.
#include "cli/cmd_container.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "common/args.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/netns.h"
#include "common/timing.h"
#include "cli/detached_output.h"
#include "cli/tuning_env.h"
#include "container/checkpoint.h"
#include "container/engine.h"
#include "dump/precopy.h"
#include "images/precheck.h"
#include "restore/lazy.h"
#include "restore/load.h"
#include "runtime/runtime.h"

namespace godwit::cli {
namespace {

// The detached lazy pager's pid in the container's record (runtime::Container::pager_pid), so
// that delete waits for it.
void RecordPager(runtime::Container c, pid_t pager) {
  if (pager <= 0) return;
  c.pager_pid = pager;
  c.pager_start_time = runtime::ProcessStartTime(pager);
  if (auto s = c.Save(); !s.ok())
    LOG_WARN("container %s: recording its lazy pager %d: %s", c.id.c_str(), pager,
             s.error().to_string().c_str());
}

nlohmann::json PhasesJson(const container::CheckpointPhases& p) {
  return {{"prepare_ms", p.prepare_ms},
          {"freeze_ms", p.freeze_ms},
          {"collect_ms", p.collect_ms},
          {"collect",
           {{"userns_ms", p.userns_ms},
            {"uts_ms", p.uts_ms},
            {"ipc_ms", p.ipc_ms},
            {"net_ms", p.net_ms},
            {"mnt_ms", p.mnt_ms},
            {"layer_ms", p.layer_ms},
            {"rootfs_ms", p.rootfs_ms}}},
          {"layer_alongside_ms", p.layer_alongside_ms},
          {"tree_ms", p.tree_ms},
          {"tree",
           {{"setup_ms", p.tree_setup_ms},
            {"seize_ms", p.seize_ms},
            {"memory_ms", p.memory_ms},
            {"rest_ms", p.tree_rest_ms},
            {"cgroup_hooks_ms", p.cgroup_hooks_ms}}},
          {"write_ms", p.write_ms},
          {"release_ms", p.release_ms},
          {"frozen_ms", p.frozen_ms},
          {"downtime_ms", p.downtime_ms},
          {"compress_ms", p.compress_ms},
          {"export_ms", p.export_ms},
          {"total_ms", p.total_ms}};
}

nlohmann::json PhasesJson(const container::RestorePhases& p) {
  return {{"import_ms", p.import_ms},
          {"prepare_ms", p.prepare_ms},
          {"cgroup_ms", p.cgroup_ms},
          {"plan_ms", p.plan_ms},
          {"root_ms", p.root_ms},
          {"rootfs_wait_ms", p.rootfs_wait_ms},
          {"env_ms", p.env_ms},
          {"cgroup_join_ms", p.cgroup_join_ms},
          {"tree_ms", p.tree_ms},
          {"tree", {{"memory_ms", p.memory_ms}, {"rest_ms", p.tree_rest_ms}}},
          {"running_ms", p.running_ms},
          {"finish_ms", p.finish_ms},
          {"pager_detach_ms", p.pager_detach_ms},
          {"ahead_ms", p.ahead_ms},
          {"total_ms", p.total_ms}};
}

Result<images::Compression> ParseCompress(const std::string& c) {
  if (c.empty()) return images::Compression::kNone;
  if (c == "zstd" || c.rfind("zstd:", 0) == 0) return images::Compression::kZstd;
  return MakeError(ErrorKind::kUsage, 0, "--compress %s: only zstd", c.c_str());
}

// --work-path DIR (runc/Podman): where CRIU would write its log; godwit writes there what it
// reports (the summary, or the error), so an engine that shows "log file: DIR/dump.log" on
// failure points at godwit's own words.
void WriteWorkLog(const std::string& work_path, const char* name, const std::string& text) {
  if (work_path.empty()) return;
  (void)fs::MkdirAll(work_path, 0700);
  (void)fs::WriteFile(work_path + "/" + name, text + "\n");
}

// runc's checkpoint/restore flags that ask for what godwit always does (established TCP
// connections, file locks, unix sockets to outside peers, an outside terminal are in the images
// without flags) or that only tune CRIU.
const std::vector<std::string> kRuncCrFlags = {"tcp-established", "file-locks", "ext-unix-sk",
                                               "shell-job", "no-subreaper", "no-pivot",
                                               "auto-dedup"};
const std::vector<std::string> kRuncCrValues = {"work-path", "manage-cgroups-mode",
                                                "parent-path", "lsm-profile",
                                                "lsm-mount-context"};

Result<void> CheckRuncCrValues(const ParsedArgs& pa) {
  std::string mode = pa.get("manage-cgroups-mode");
  if (!mode.empty() && mode != "soft" && mode != "full" && mode != "strict" && mode != "ignore")
    return MakeError(ErrorKind::kUsage, 0, "--manage-cgroups-mode %s: soft|full|strict|ignore",
                     mode.c_str());
  for (const char* k : {"lsm-profile", "lsm-mount-context"})
    if (!pa.get(k).empty())
      return MakeError(ErrorKind::kUnsupported, 0, "--%s: no LSM support in godwit", k);
  return Ok();
}

int CheckpointCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{"image-path", "compress", "export", "pre-copy"},
               {"leave-running", "json", "pre-dump"},
               {}};
  for (const auto& f : kRuncCrFlags) spec.flags.insert(f);
  for (const auto& v : kRuncCrValues) spec.values.insert(v);
  // "--pre-copy" alone means "--pre-copy=auto" (ParseArgs has no options with an optional
  // value): rounds until they converge.
  std::vector<std::string> a = args;
  for (auto& x : a)
    if (x == "--pre-copy") x = "--pre-copy=auto";
  auto pa = ParseArgs(a, spec);
  if (!pa.ok()) return ReportError(g, "checkpoint", pa.error());
  if (pa->has("json")) g.json = true;
  const std::string work = pa->get("work-path");
  auto fail = [&](const Error& e) {
    WriteWorkLog(work, "dump.log", "godwit checkpoint: error: " + e.to_string());
    return ReportError(g, "checkpoint", e);
  };
  if (auto r = CheckRuncCrValues(*pa); !r.ok()) return fail(r.error());
  // runc's --pre-dump writes a memory-only image that a later checkpoint names with
  // --parent-path; godwit's incremental dump is its in-process pre-copy (--pre-copy=N). A
  // checkpoint naming a parent is complete without it, so only --pre-dump itself is refused.
  if (pa->has("pre-dump"))
    return fail(MakeError(ErrorKind::kUnsupported, 0,
                          "--pre-dump: separate pre-dump images are not supported; use "
                          "--pre-copy=N (dirty-tracked rounds inside one checkpoint)"));
  container::CheckpointOptions o;
  o.root = g.root;
  if (pa->positionals.size() != 1)
    return fail(MakeError(ErrorKind::kUsage, 0, "need exactly one ID"));
  o.id = pa->positionals[0];
  o.image_path = pa->get("image-path");
  if (o.image_path.empty())
    return fail(MakeError(ErrorKind::kUsage, 0, "need --image-path DIR"));
  o.end = pa->has("leave-running") ? container::EndMode::kThaw : container::EndMode::kDelete;
  o.export_file = pa->get("export");
  if (pa->has("pre-copy")) {
    auto n = ParsePreCopy(pa->get("pre-copy"));
    if (!n.ok()) return ReportError(g, "checkpoint", n.error());
    o.pre_copy_rounds = *n;
  }
  auto comp = ParseCompress(pa->get("compress"));
  if (!comp.ok()) return fail(comp.error());
  o.compression = *comp;
  o.tuning = DumpTuningFromEnv(o.tuning);
  if (ProgressFn f = ProgressFor(g)) o.progress = f;
  auto r = container::Checkpoint(o);
  if (!r.ok()) return fail(r.error());
  const bool left_running = o.end == container::EndMode::kThaw;
  const auto& t = r->record.times();
  if (!work.empty() && !g.json) {
    // Driven by an engine (runc's --work-path): the report goes to dump.log, stdout stays quiet.
  } else if (g.json) {
    nlohmann::json j = {{"id", o.id},
                        {"image_path", o.image_path},
                        {"left_running", left_running},
                        {"processes", r->tree.processes},
                        {"threads", r->tree.threads},
                        {"tree_bytes", r->tree.bytes},
                        {"remote_calls", r->tree.remote_calls},
                        {"namespaces", r->record.namespaces()},
                        {"writable_layer", r->record.has_layer()},
                        {"freeze_ms", t.freeze_ms()},
                        {"namespaces_ms", t.namespaces_ms()},
                        {"tree_ms", t.tree_ms()},
                        {"frozen_ms", t.frozen_ms()},
                        {"total_ms", t.total_ms()},
                        {"phases", PhasesJson(r->phases)}};
    if (o.pre_copy_rounds != 0) {
      j["pre_copy_rounds"] = r->tree.round_bytes.size();
      j["pre_reserved_bytes"] = r->tree.pre_reserved_bytes;
      j["pre_copy_round_bytes"] = r->tree.round_bytes;
      j["pre_copy_bytes"] = r->tree.pre_bytes;
      j["pre_copy_ms"] = r->tree.pre_ms;
    }
    if (!o.export_file.empty()) {
      j["export"] = o.export_file;
      j["export_bytes"] = r->export_size;
    }
    printf("%s\n", j.dump().c_str());
  } else {
    printf("checkpointed %s to %s: %d process(es), %d thread(s)%s\n", o.id.c_str(),
           o.image_path.c_str(), r->tree.processes, r->tree.threads,
           left_running ? ", left running" : ", container deleted");
    if (o.pre_copy_rounds != 0)
      printf("  pre-copy: %zu round(s) while running, %.1f MiB in %.1f ms\n",
             r->tree.round_bytes.size(), r->tree.pre_bytes / 1048576.0, r->tree.pre_ms);
    const auto& p = r->phases;
    printf("  downtime %.1f ms (%s) = freeze %.1f + collect %.1f (user "
           "%.1f uts %.1f ipc %.1f net %.1f mnt %.1f layer %.1f rootfs %.1f)\n",
           p.downtime_ms,
           left_running ? "until the tree runs again" : "until the images are complete",
           p.freeze_ms, p.collect_ms, p.userns_ms, p.uts_ms, p.ipc_ms, p.net_ms,
           p.mnt_ms, p.layer_ms, p.rootfs_ms);
    printf("    + tree %.1f (setup %.1f seize %.1f memory %.1f rest %.1f cgroup %.1f) + write "
           "%.1f; then %s %.1f (frozen %.1f ms)\n",
           p.tree_ms, p.tree_setup_ms, p.seize_ms, p.memory_ms, p.tree_rest_ms, p.cgroup_hooks_ms,
           p.write_ms, left_running ? "thaw" : "kill", p.release_ms, p.frozen_ms);
    printf("  total %.1f ms (prepare %.1f%s%s)\n", p.total_ms, p.prepare_ms,
           p.compress_ms > 0.05 ? StrFormat(", zstd after %.1f", p.compress_ms).c_str() : "",
           o.export_file.empty() ? "" : StrFormat(", export %.1f", p.export_ms).c_str());
    if (!o.export_file.empty())
      printf("  exported to %s (%llu bytes)\n", o.export_file.c_str(),
             static_cast<unsigned long long>(r->export_size));
  }
  // Engines (Podman) call a checkpoint complete when <image-path>/inventory.img exists. godwit's
  // completeness mark is its container inventory, written last: a relative link to it says the
  // same thing in the place they look (and travels in their tar of the directory).
  if (!work.empty()) {
    std::string link = o.image_path + "/inventory.img";
    if (::symlink("container/inventory.img", link.c_str()) < 0 && errno != EEXIST)
      return fail(Errno("symlink %s", link.c_str()));
  }
  WriteWorkLog(work, "dump.log",
               StrFormat("godwit checkpoint %s: %d process(es), %d thread(s), downtime %.1f ms, "
                         "total %.1f ms%s",
                         o.id.c_str(), r->tree.processes, r->tree.threads, r->phases.downtime_ms,
                         r->phases.total_ms, left_running ? ", left running" : ""));
  fflush(stdout);
  return 0;
}

}  // namespace

bool IsContainerRestore(const std::vector<std::string>& args) {
  // The engine's form names an image directory with --images-dir (-D) and has no positional;
  // the container form has an ID and --image-path or --import.
  static const std::set<std::string> kValued = {
      "--images-dir", "-D",       "--pid-file", "--inherit-fd",
      "--image-path", "--import", "--bundle",   "-b"};
  bool positional = false;
  for (size_t i = 0; i < args.size(); i++) {
    const std::string& a = args[i];
    if (a == "--images-dir" || a.rfind("--images-dir=", 0) == 0 || a == "-D") return false;
    if (a == "--image-path" || a.rfind("--image-path=", 0) == 0 || a == "--import" ||
        a.rfind("--import=", 0) == 0)
      return true;
    if (a == "--") break;
    if (kValued.count(a)) {
      i++;
      continue;
    }
    if (!a.empty() && a[0] != '-') positional = true;
  }
  return positional;
}

int ContainerRestoreCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{"image-path", "import", "bundle", "pid-file", "ip", "bridge", "console-socket",
                "wait-fd"},
               {"detach", "json", "no-announce", "keep-locked", "lazy", "discard-pages"},
               {{"-d", "detach"}, {"-b", "bundle"}}};
  for (const auto& f : kRuncCrFlags) spec.flags.insert(f);
  for (const auto& v : kRuncCrValues) spec.values.insert(v);
  auto pa = ParseArgs(args, spec);
  if (!pa.ok()) return ReportError(g, "restore", pa.error());
  if (pa->has("json")) g.json = true;
  const std::string work = pa->get("work-path");
  // Detached and not driven by an engine (conmon hands the restore its own pipes): the
  // container's output goes to its log (`godwit logs ID`), as for `run --detach`. A container
  // that was run detached finds its log again (the images name it; made here when missing,
  // e.g. on a migration's destination). Opened before a --wait-fd wait: its file creation is
  // then not in a migration's blackout.
  std::unique_ptr<DetachedOutput> output;
  bool log_was_there = false;
  if (pa->has("detach") && work.empty() && DetachedOutput::Wanted() &&
      pa->positionals.size() == 1 && runtime::ValidateId(pa->positionals[0]).ok()) {
    log_was_there = fs::Exists(runtime::LogPath(g.root, pa->positionals[0]));
    auto d = DetachedOutput::Open(g.root, pa->positionals[0], /*fresh=*/false);
    if (!d.ok()) return ReportError(g, "restore", d.error());
    output = std::move(*d);
  }
  // Nothing restored: godwit's own stdio back, and a log made for it goes too (an earlier one
  // stays; so does the log of a container restored before a later error).
  auto drop_output = [&] {
    if (!output) return;
    output.reset();
    if (!log_was_there) (void)::unlink(runtime::LogPath(g.root, pa->positionals[0]).c_str());
  };
  container::RestoreOptions o;
  o.root = g.root;
  o.id = pa->positionals.size() == 1 ? pa->positionals[0] : "";
  o.image_path = pa->get("image-path");
  o.import_file = pa->get("import");
  o.bundle = pa->get("bundle");
  o.ip = pa->get("ip");
  o.bridge = pa->get("bridge");
  // A migration's destination announces the address itself, once the source is gone.
  o.announce = !pa->has("no-announce");
  o.keep_netlock = pa->has("keep-locked");
  o.lazy = pa->has("lazy");
  // The page files are freed as the pager installs their pages: restored once only.
  o.lazy_discard = pa->has("discard-pages");
  if (o.lazy_discard && !o.lazy)
    return ReportError(g, "restore",
                       MakeError(ErrorKind::kUsage, 0, "--discard-pages needs --lazy"));
  const bool pace = !getenv("GODWIT_NO_PACE");  // A/B runs only (common/priority.h Pacer)
  o.lazy_pace = pace;
  // An engine's restore (runc's --work-path, Podman): it restored the rootfs changes itself.
  o.trust_rootfs = !work.empty();
  o.cgroup_parent = g.cgroup_parent;
  // An engine's bundle names the cgroup (linux.cgroupsPath): the restored container goes under
  // that path's parent (its leaf is the id, as for every restored container).
  if (!o.bundle.empty()) {
    auto spec = runtime::LoadSpec(o.bundle);
    if (spec.ok() && !spec->cgroups_path.empty()) {
      auto place = runtime::ParseCgroupsPath(spec->cgroups_path, g.systemd_cgroup);
      if (place.ok() && !place->parent.empty()) o.cgroup_parent = place->parent;
    }
  }
  if (ProgressFn f = ProgressFor(g)) o.progress = f;
  // 'e' on the wait fd: the container's own images are in (a migration's source dumps the tree
  // next): its environment is made now, out of the blackout (container::PrepareRestore).
  std::optional<Result<container::PreparedRestorePtr>> ahead;
  // The rounds' page files checked whole by a helper on idle CPU meanwhile (images/precheck.h):
  // reaped when this command ends.
  std::unique_ptr<images::Prechecker> precheck;
  bool prechecked = false;  // its results taken
  if (pa->has("wait-fd")) {
    // godwitd starts the restore ahead (its start-up out of a migration's blackout) and lets
    // it go with one byte (1) on this fd; EOF means the migration ended otherwise: nothing to
    // do. Meanwhile 'p' (after each pre-copy round): parse the rounds' page maps that arrived
    // (restore/load.h), so the blackout does not.
    int fd = atoi(pa->get("wait-fd").c_str());
    const std::string tree_dir = pa->get("image-path") + "/" + container::kTreeDir;
    // The destination's quiet table and the connections' lock use libnftables: loaded while
    // waiting, not in the blackout (common/netns.h). Without it they fail and say why.
    if (auto nft = netns::PreloadNft(); !nft.ok())
      LOG_DEBUG("restore: %s", nft.error().to_string().c_str());
    for (;;) {
      char b;
      ssize_t n;
      while ((n = read(fd, &b, 1)) < 0 && errno == EINTR) {
      }
      if (n != 1) {
        close(fd);
        drop_output();
        return 0;
      }
      if (b != 'p' && precheck && !prechecked) {  // the rounds are over: what it finished counts
        prechecked = true;
        size_t n = precheck->Finish();
        LOG_DEBUG("restore: %zu chunk(s) of the rounds' page files checked ahead", n);
      }
      if (b == 'e') {
        if (!ahead && pa->positionals.size() == 1) ahead = container::PrepareRestore(o, true);
        continue;
      }
      if (b != 'p') break;
      restore::PreloadPageMaps(tree_dir, o.lazy);
      if (!precheck) {
        auto s = images::Prechecker::Start(pace);
        if (s.ok())
          precheck = std::move(*s);
        else
          LOG_DEBUG("restore: no checks ahead: %s", s.error().to_string().c_str());
      }
      if (precheck) {
        // Smallest first: a small process's round is checked whole in a moment, and the pages
        // filled from the rounds inside the blackout lie in every process's first chunks.
        std::vector<std::pair<off_t, std::string>> files;
        if (auto names = fs::ListDir(tree_dir); names.ok())
          for (const auto& n : *names) {
            struct stat st;
            std::string path = tree_dir + "/" + n;
            // A round's page blob arrives in pieces while the next round is dumped (migrate/
            // image_stream.h): whole only once its page map (sent after its last piece) is there.
            if (dump::IsRoundBlob(n) && fs::Exists(tree_dir + "/" + dump::RoundPageMapOf(n)) &&
                ::stat(path.c_str(), &st) == 0)
              files.emplace_back(st.st_size, path);
          }
        std::sort(files.begin(), files.end());
        for (const auto& [size, path] : files) precheck->Add(path);
      }
    }
    close(fd);
  }
  auto fail = [&](const Error& e) {
    WriteWorkLog(work, "restore.log", "godwit restore: error: " + e.to_string());
    drop_output();  // the error is the caller's, not the container's log's
    return ReportError(g, "restore", e);
  };
  if (auto r = CheckRuncCrValues(*pa); !r.ok()) return fail(r.error());
  if (pa->has("console-socket"))
    return fail(MakeError(ErrorKind::kUnsupported, 0,
                          "--console-socket: restoring a container whose process has a terminal "
                          "is not supported"));
  if (pa->positionals.size() != 1)
    return ReportError(g, "restore", MakeError(ErrorKind::kUsage, 0, "need exactly one ID"));
  // An environment that could not be made ahead (undone by then) is made the usual way.
  if (ahead && !ahead->ok()) {
    LOG_WARN("restore of %s: making the environment ahead failed, restoring the usual way: %s",
             o.id.c_str(), ahead->error().to_string().c_str());
    ahead.reset();
  }
  Result<container::RestoreResult> r =
      ahead ? container::FinishRestore(std::move(**ahead)) : container::Restore(o);
  ahead.reset();
  if (!r.ok()) return fail(r.error());
  if (output) {
    output->Restore();
    output->Keep();
    log_was_there = true;  // the container's now: a later error leaves it
  }
  const runtime::Container& c = r->container;
  std::string pid_file = pa->get("pid-file");
  if (!pid_file.empty()) {
    auto w = fs::WriteFile(pid_file, std::to_string(c.pid) + "\n", true);
    if (!w.ok()) return fail(w.error());
  }
  // Lazy: the owed pages are installed by this process while it waits for the init, or,
  // detached, by a pager process (its pid is printed: the pages are in when it exits).
  pid_t pager_pid = 0;
  // Driven by godwitd (--wait-fd, --json): the daemon needs only the running container, and
  // forking the pager (a copy of this process, 5-13 ms) would sit inside a migration's blackout:
  // the JSON line goes out first, without the pager's pid (its threads serve faults meanwhile).
  auto result_json = [&](const nlohmann::json& pager) {
    return nlohmann::json{{"id", c.id},
                          {"pid", c.pid},
                          {"processes", r->processes},
                          {"lazy_bytes", r->lazy_bytes},
                          {"hot_bytes", r->hot_bytes},
                          {"lazy_prepared_bytes", r->lazy_prepared_bytes},
                          {"preloaded_pagemaps", restore::PreloadHits()},
                          {"prechecked_chunks", images::PrecheckHits()},
                          {"lazy_pager_pid", pager},
                          {"environment_ms", r->environment_ms},
                          {"environment_ahead", r->environment_ahead},
                          {"netlock_table", r->netlock_table},
                          {"total_ms", r->total_ms},
                          {"phases", PhasesJson(r->phases)}};
  };
  if (pa->has("wait-fd") && g.json && r->pager && pa->has("detach")) {
    printf("%s\n", result_json(nullptr).dump().c_str());
    fflush(stdout);
    r->leftovers.reset();  // may wait (container::RestoreResult::leftovers): the line is out
    auto d = r->pager->Detach();
    if (!d.ok()) return fail(d.error());
    RecordPager(c, *d);
    return 0;
  }
  r->leftovers.reset();  // before the pager's fork: it must not hold them
  auto t_detach = timing::Clock::now();
  if (r->pager && pa->has("detach")) {
    auto d = r->pager->Detach();
    if (!d.ok()) return fail(d.error());
    pager_pid = *d;
    RecordPager(c, pager_pid);
  }
  r->phases.pager_detach_ms = timing::MsSince(t_detach);
  WriteWorkLog(work, "restore.log",
               StrFormat("godwit restore %s: init pid %d, %d process(es), total %.1f ms",
                         c.id.c_str(), c.pid, r->processes, r->phases.total_ms));
  if (!work.empty() && !g.json) {
    // Driven by an engine: the report goes to restore.log, stdout stays quiet.
  } else if (g.json) {
    printf("%s\n", result_json(pager_pid).dump().c_str());
  } else {
    const auto& p = r->phases;
    printf("restored %s: init pid %d, %d process(es)\n", c.id.c_str(), c.pid, r->processes);
    printf("  running after %.1f ms = import %.1f + prepare %.1f + cgroup %.1f + plan %.1f + root "
           "%.1f + rootfs %.1f\n",
           p.running_ms, p.import_ms, p.prepare_ms, p.cgroup_ms, p.plan_ms, p.root_ms,
           p.rootfs_wait_ms);
    printf("    + env %.1f + join %.1f + tree %.1f (memory %.1f rest %.1f); total %.1f ms\n",
           p.env_ms, p.cgroup_join_ms, p.tree_ms, p.memory_ms, p.tree_rest_ms, p.total_ms);
    if (r->lazy_bytes > 0)
      printf("  lazy: %.1f MiB paged in after it runs%s\n", r->lazy_bytes / 1048576.0,
             pager_pid > 0 ? StrFormat(" by pager pid %d", pager_pid).c_str() : "");
  }
  fflush(stdout);
  if (pa->has("detach")) return 0;
  // Foreground, as `run`: wait for the init, then remove the container.
  auto st = runtime::Wait(c, /*forward_signals=*/true);
  if (!st.ok()) return ReportError(g, "restore", st.error());
  auto del = runtime::Delete(g.root, c.id, /*force=*/true, g.cgroup_parent);
  if (!del.ok()) return ReportError(g, "restore", del.error());
  return *st;
}

}  // namespace godwit::cli

GODWIT_COMMAND(checkpoint, "checkpoint",
               "checkpoint ID --image-path DIR [--leave-running] [--pre-copy[=N]] "
               "[--compress zstd] [--export FILE] [--work-path DIR] [--json]\n"
               "  runc's --tcp-established --file-locks --ext-unix-sk --shell-job "
               "--manage-cgroups-mode M --parent-path P are accepted (godwit does it without "
               "flags); --pre-dump is refused (use --pre-copy=N)",
               "checkpoint a running container (processes, mounts, net, ipc, limits) to images",
               godwit::cli::CheckpointCmd,
               "Checkpoints a running container into DIR: namespaces (uts, ipc, net, mounts),\n"
               "the writable layer, limits and the process tree, frozen through the cgroup\n"
               "freezer. Without --leave-running the container is killed and deleted once the\n"
               "images are complete (its id is free for `restore`). A paused container is\n"
               "checkpointed too (containerd pauses a task first) and stays paused with\n"
               "--leave-running.\n"
               "\n"
               "options:\n"
               "  --image-path DIR        where the images go (required; made if missing)\n"
               "  --leave-running         thaw the container afterwards instead of deleting it\n"
               "  --pre-copy[=N]          copy memory in N rounds (default 2) while it runs, dirty-\n"
               "                          tracked, then freeze for the rest: shorter downtime\n"
               "  --compress zstd[:L]     compress the pages (after the container is let go)\n"
               "  --export FILE           also pack the images into one file (`restore --import`)\n"
               "  --work-path DIR         runc's: the report (or error) goes to DIR/dump.log and\n"
               "                          stdout stays quiet (engines: Podman, containerd's shim)\n"
               "  --json                  the statistics and phase times as one object\n"
               "  --tcp-established, --file-locks, --ext-unix-sk, --shell-job, --parent-path P,\n"
               "  --manage-cgroups-mode M accepted (runc's): godwit restores these without flags\n"
               "  --pre-dump              refused (exit 6): use --pre-copy=N\n"
               "\n"
               "A checkpoint on a terminal shows its progress on stderr (phase, MiB, rate).\n"
               "\n"
               "examples:\n"
               "  godwit checkpoint web1 --image-path /var/lib/ck/web1\n"
               "  godwit checkpoint web1 --image-path /tmp/ck --leave-running --compress zstd\n"
               "  godwit checkpoint web1 --image-path /tmp/ck --pre-copy=3 --export web1.gwx --json\n");
