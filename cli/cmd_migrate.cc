// `godwit migrate ID --to HOST:PORT [options]`: live-migrates a running container to the godwitd
// at HOST:PORT. The library is migrate/ (migrate/source.h tells the flow); this file parses,
// prints progress per round on stderr, and the summary (or --json) on stdout.
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cli/command.h"
#include "common/args.h"
#include "common/fs.h"
#include "migrate/source.h"

namespace godwit::cli {
namespace {

// "50ms", "0.2s", "50" (ms) -> milliseconds.
Result<double> ParseDuration(const std::string& s, double unit_ms) {
  char* end = nullptr;
  double v = strtod(s.c_str(), &end);
  if (end == s.c_str() || v < 0) return MakeError(ErrorKind::kUsage, 0, "bad duration %s", s.c_str());
  std::string suf(end);
  if (suf.empty()) return v * unit_ms;
  if (suf == "ms") return v;
  if (suf == "s") return v * 1000;
  if (suf == "us") return v / 1000;
  return MakeError(ErrorKind::kUsage, 0, "bad duration %s (ms, s)", s.c_str());
}

constexpr const char kMigrateUsage[] =
    "migrate ID --to HOST:PORT [OPTIONS]\n"
    "\n"
    "Live-migrates the running container ID to the godwitd at HOST:PORT: its memory is copied in\n"
    "rounds while it runs, then it is frozen for a short switchover, restored there, and deleted\n"
    "here once the destination runs it. TCP connections survive; packets for the container during\n"
    "the switchover are held and delivered at the destination. On any failure before that the\n"
    "container keeps running here, untouched (exit 8). SIGINT, SIGTERM or SIGHUP during the\n"
    "pre-copy rounds roll it back the same way (exit 128 + the signal's number); one that comes\n"
    "during the switchover (a blackout of milliseconds) lets it end first. docs/migration.md\n"
    "tells the flow.\n"
    "\n"
    "options:\n"
    "  --to HOST:PORT                the destination godwitd ([V6]:PORT for IPv6)\n"
    "  --tls-cert F --tls-key F --tls-ca F\n"
    "                                this host's certificate and key, the CA that signed both\n"
    "                                ends' (mutual TLS 1.3; scripts/migration-certs makes them)\n"
    "  --insecure                    plain TCP instead (the daemon must say --insecure too)\n"
    "  --max-downtime 50ms           switch over once the predicted blackout fits (ms, s)\n"
    "  --max-rounds 8                pre-copy rounds at most\n"
    "  --strict                      abort (the container stays here) rather than switch over\n"
    "                                above --max-downtime (exit 6)\n"
    "  --no-auto-converge            never throttle the container's CPU (by default, while it\n"
    "                                writes memory faster than half the stream's rate, each\n"
    "                                round takes more of its CPU away, until the freeze)\n"
    "  --timeout 30s                 per network operation\n"
    "  --compress auto|zstd|none     page frames: auto tries zstd and keeps it where it pays\n"
    "  --no-hold                     drop the container's packets during the switchover (the\n"
    "                                clients retransmit) instead of holding them: comparison\n"
    "  --report F.json               the report: rounds, decisions, blackout by phase\n"
    "  --json                        the report on stdout as one object (errors included)\n"
    "\n"
    "examples:\n"
    "  godwit migrate web1 --to 10.0.0.2:7070 --tls-cert /etc/godwit/a.pem \\\n"
    "      --tls-key /etc/godwit/a.key --tls-ca /etc/godwit/ca.pem --report web1.json\n"
    "  godwit --root /run/a migrate c1 --to 198.18.0.2:7070 --insecure --max-downtime 100ms";

std::string Mb(double bytes) { return StrFormat("%.1f MiB", bytes / (1 << 20)); }

// SIGINT, SIGTERM and SIGHUP during a migration stop it the safe way (migrate::Cancel): they are
// blocked in every thread and taken by a watcher thread. SIGUSR2 (blocked too) ends the
// watcher. The number of the signal taken, 0 if none.
class SignalWatch {
 public:
  explicit SignalWatch(migrate::Cancel* cancel) {
    sigemptyset(&set_);
    for (int s : {SIGINT, SIGTERM, SIGHUP, SIGUSR2}) sigaddset(&set_, s);
    pthread_sigmask(SIG_BLOCK, &set_, &old_);
    th_ = std::thread([this, cancel] {
      for (;;) {
        int sig = 0;
        if (sigwait(&set_, &sig) != 0 || sig == SIGUSR2) return;
        taken_ = sig;
        cancel->Request(sigabbrev_np(sig) ? std::string("SIG") + sigabbrev_np(sig) : "signal");
        fprintf(stderr,
                "godwit migrate: %s: stopping the migration (a switchover already under way "
                "ends first)\n",
                strsignal(sig));
      }
    });
  }
  ~SignalWatch() {
    pthread_kill(th_.native_handle(), SIGUSR2);
    th_.join();
    // A SIGUSR2 sent from outside meanwhile is dropped with the rest of the set's pending ones.
    timespec zero{0, 0};
    while (sigtimedwait(&set_, nullptr, &zero) > 0) {
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  int taken() const { return taken_; }

 private:
  sigset_t set_, old_;
  std::atomic<int> taken_{0};
  std::thread th_;
};

int MigrateCmd(Global& g, const std::vector<std::string>& args) {
  ArgSpec spec{{"to", "tls-cert", "tls-key", "tls-ca", "max-downtime", "max-rounds", "timeout",
                "compress", "report"},
               {"insecure", "strict", "json", "no-hold", "no-auto-converge"},
               {}};
  auto pa = ParseArgs(args, spec);
  if (!pa.ok()) return ReportError(g, "migrate", pa.error());
  if (pa->has("json")) g.json = true;
  migrate::SourceOptions o;
  o.root = g.root;
  if (pa->positionals.size() != 1)
    return ReportError(g, "migrate", MakeError(ErrorKind::kUsage, 0, "need exactly one ID"));
  o.id = pa->positionals[0];
  o.to = pa->get("to");
  if (o.to.empty())
    return ReportError(g, "migrate", MakeError(ErrorKind::kUsage, 0, "need --to HOST:PORT"));
  o.tls.insecure = pa->has("insecure");
  o.tls.cert = pa->get("tls-cert");
  o.tls.key = pa->get("tls-key");
  o.tls.ca = pa->get("tls-ca");
  if (!o.tls.insecure && (o.tls.cert.empty() || o.tls.key.empty() || o.tls.ca.empty()))
    return ReportError(g, "migrate",
                       MakeError(ErrorKind::kUsage, 0,
                                 "need --tls-cert F --tls-key F --tls-ca F (mutual TLS), or "
                                 "--insecure for plain TCP (both sides)"));
  if (pa->has("max-downtime")) {
    auto d = ParseDuration(pa->get("max-downtime"), 1);
    if (!d.ok()) return ReportError(g, "migrate", d.error());
    o.max_downtime_ms = *d;
  }
  if (pa->has("max-rounds")) {
    int n = atoi(pa->get("max-rounds").c_str());
    if (n < 1 || n > 1000)
      return ReportError(g, "migrate", MakeError(ErrorKind::kUsage, 0, "--max-rounds 1..1000"));
    o.max_rounds = n;
  }
  if (pa->has("timeout")) {
    auto d = ParseDuration(pa->get("timeout"), 1000);
    if (!d.ok() || *d <= 0)
      return ReportError(g, "migrate", MakeError(ErrorKind::kUsage, 0, "bad --timeout"));
    o.timeout_s = *d / 1000;
  }
  std::string comp = pa->get("compress", "auto");
  if (comp == "auto") {
    o.compress = migrate::Compress::kAuto;
  } else if (comp == "zstd") {
    o.compress = migrate::Compress::kZstd;
  } else if (comp == "none") {
    o.compress = migrate::Compress::kNone;
  } else {
    return ReportError(g, "migrate",
                       MakeError(ErrorKind::kUsage, 0, "--compress auto|zstd|none, not %s",
                                 comp.c_str()));
  }
  o.strict = pa->has("strict");
  o.hold_packets = !pa->has("no-hold");
  o.auto_converge = !pa->has("no-auto-converge");
  o.boost = !getenv("GODWIT_NO_BOOST");  // A/B runs only (common/priority.h)
  o.env_ahead = !getenv("GODWIT_NO_ENV_AHEAD");  // A/B runs only
  o.async_send = !getenv("GODWIT_NO_ASYNC_SEND");  // A/B runs only
  o.stream_rounds = !getenv("GODWIT_NO_STREAM_ROUNDS");

  bool human = !g.json;
  auto progress = [&](const migrate::RoundReport& r) {
    if (!human) return;
    fprintf(stderr,
            "round %d: %llu pages (%s) in %.1f ms, dirty %s/s, stream %s/s, predicted downtime "
            "%.1f ms -> %s\n",
            r.round, static_cast<unsigned long long>(r.pages), Mb(r.bytes).c_str(), r.ms,
            Mb(r.dirty_bytes_per_s).c_str(), Mb(r.throughput_bytes_per_s).c_str(),
            r.predicted_downtime_ms, r.decision.c_str());
  };
  if (human) fprintf(stderr, "migrating %s to %s\n", o.id.c_str(), o.to.c_str());
  migrate::MigrationReport rep;
  migrate::Cancel cancel;
  o.cancel = &cancel;
  int sig = 0;
  auto res = [&] {
    SignalWatch watch(&cancel);
    auto r = migrate::Migrate(o, &rep, progress);
    sig = watch.taken();
    return r;
  }();
  std::string json = migrate::ReportJson(rep);
  if (pa->has("report")) {
    auto w = fs::WriteFile(pa->get("report"), json + "\n", /*atomic=*/true);
    if (!w.ok()) fprintf(stderr, "godwit migrate: report: %s\n", w.error().to_string().c_str());
  }
  if (!res.ok()) {
    // Stopped by a signal: the shell's code for it (128 + its number).
    const int code = sig && cancel.requested() ? 128 + sig : res.error().exit_code();
    if (g.json) {
      // The report (what happened) and the error together, one object.
      auto j = nlohmann::json::parse(json);
      j["error"] = res.error().to_string();
      j["exit_code"] = code;
      printf("%s\n", j.dump().c_str());
      return code;
    }
    if (code != res.error().exit_code()) {
      fprintf(stderr, "godwit migrate: %s: %s%s\n", res.error().to_string().c_str(),
              rep.outcome.c_str(), rep.outcome == "failed after commit" ? ""
                                   : ": the container still runs here");
      return code;
    }
    if (rep.outcome == "rolled back" || rep.outcome == "refused" ||
        (rep.outcome == "not started" && res.error().kind() == ErrorKind::kPeer))
      fprintf(stderr, "godwit migrate: %s: the container still runs here\n", rep.outcome.c_str());
    return ReportError(g, "migrate", res.error());
  }
  if (g.json) {
    printf("%s\n", nlohmann::json::parse(json).dump().c_str());
    return 0;
  }
  const auto& b = rep.blackout;
  printf("migrated %s to %s (%s, %s) in %.0f ms: %zu pre-copy round(s), %s on the wire\n",
         o.id.c_str(), o.to.c_str(), rep.peer_hostname.c_str(), rep.secure ? "TLS" : "insecure",
         rep.total_ms, rep.rounds.size(), Mb(rep.total_wire_bytes).c_str());
  printf("  blackout %.1f ms (predicted %.1f) = freeze %.1f + final dump %.1f (%s) + transfer "
         "%.1f + restore %.1f + commit %.1f + switch %.1f\n",
         b.total_ms, rep.predicted_downtime_ms, b.freeze_ms, b.final_dump_ms,
         Mb(rep.final_bytes).c_str(), b.transfer_ms, b.restore_ms, b.release_ms, b.announce_ms);
  std::map<std::string, double> fp(rep.fixed_cost_parts.begin(), rep.fixed_cost_parts.end());
  if (!fp.empty())
    printf("  its fixed part %.1f ms = measured on this container: state %.1f + tree %.1f (its "
           "stop at pre-copy start %.1f ms, model %.1f); modelled: restore %.1f + freeze %.1f + "
           "switch %.1f\n",
           rep.fixed_cost_ms, fp["collect_ms"], fp["tree_ms"], fp["tree_start_measured_ms"],
           fp["tree_model_ms"], fp["restore_ms"], fp["freeze_ms"], fp["switch_ms"]);
  // The destination's switch after the commit: ARP, unlock, the held frames replayed.
  double arp = 0, unlock = 0, replay = 0, here = 0;
  for (const auto& [k, v] : rep.switch_phases) {
    if (k == "arp_ms") arp = v;
    if (k == "unlock_ms") unlock = v;
    if (k == "replay_ms") replay = v;
    if (k == "held_here") here = v;
  }
  if (!rep.switch_phases.empty())
    printf("  switch: ARP %.1f + unlock %.1f + replay %.1f ms; frames held %d (%d after the "
           "commit, %.0f at the destination)\n",
           arp, unlock, replay, rep.held_packets, rep.late_packets, here);
  if (rep.files_ahead_bytes > 0)
    printf("  files copied ahead (tmpfs, writable layer): %s, %s of it not read again while "
           "frozen; images staged in %s\n",
           Mb(rep.files_ahead_bytes).c_str(), Mb(rep.files_ahead_reused_bytes).c_str(),
           rep.staging.c_str());
  if (rep.lazy_wait_ms > 0)
    printf("  waited %.0f ms before the first round for the lazy pager still filling the "
           "container here (restored lazily by an earlier migration or restore --lazy)\n",
           rep.lazy_wait_ms);
  return 0;
}

GODWIT_COMMAND(migrate, "migrate", kMigrateUsage,
               "live-migrate a running container to the godwitd at HOST:PORT", MigrateCmd);

}  // namespace
}  // namespace godwit::cli
