#include "migrate/source.h"

#include <sys/utsname.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <thread>

#include "common/fs.h"
#include "common/log.h"
#include "common/netns.h"
#include "common/priority.h"
#include "common/proc.h"
#include "common/scope_exit.h"
#include "common/timing.h"
#include "container/checkpoint.h"
#include "container/engine.h"
#include "dump/precopy.h"
#include "container/restore.h"
#include "images/image.h"
#include "migrate/dest.h"
#include "migrate/image_stream.h"
#include "migrate/kernel.h"
#include "migrate/packet_hold.h"
#include "migrate/staging.h"
#include "runtime/cgroup.h"
#include "runtime/container.h"

namespace godwit::migrate {
namespace {

using timing::Clock;
constexpr auto Ms = timing::MsBetween;  // Ms(a, b): from a to b

// The final delta's pages are created twice inside the blackout (the source's staging file, the
// destination's received file; the lazy restore fills the process after it runs): this VM does
// that at 0.4-3.3 GB/s (free page reporting). The prediction takes the slow end.
constexpr double kFillBytesPerS = 0.8e9;
// Freeze, non-memory state on both ends, restore of the tree without its memory, release and
// announce: the part of the blackout that does not grow with the dirty set. Measured on this
// machine kind (scripts/bench 60-migrate, session 7, quiet): a container of 3 processes with a
// TCP connection blacks out 57-88 ms (median 65) at 64 MiB and 91-113 ms (median 96) at 1 GiB
// with a dirty set of a few pages; the restore's record of the pre-copied pages for the lazy
// pager is what grows with the memory (~25 ms a GiB).
//
// The parts measured on this container before the first round (Migrate):
//   collect: its namespaces, mounts and tmpfs contents read once while it runs
//     (container::RehearseCollect), as the final dump reads them frozen (kCollectMs when that
//     read fails: the container changes under it, e.g. a file removed mid-walk);
//   tree: the pre-copy start's stop of the tree (every thread seized, one call injected into
//     each process; dump::PreCopy::start_ms) times kTreeOverStart: the final dump seizes the
//     same threads and runs its per-process steps (tens of injected calls each) where the start
//     ran one; on this machine kind the final tree dump took 1.9-4.6x the start (3 processes,
//     bench 60, median ~3.4), up to 10x for a start that found every thread idle (the demo):
//     the measurement only raises the tree's part above its model (kTreeBaseMs +
//     kTreePerProcessMs a process), so a slow machine or a costly tree is seen, never hidden.
// The destination's part cannot be measured before its restore: modelled per process, plus the
// lazy pager's record of the pre-copied pages, plus the switch (commit, unlock, replay,
// announce). Calibrated on bench 60 (session 13, after the destination's lock and checks left
// the blackout): 3 processes restored in 15-20 ms at 64 MiB, 25-49 ms (median 32) at 1 GiB;
// the model (19.6 and 36.5 ms) sits near the upper quartile. Session 7's model (10 + 5 a
// process + 25 a GiB) predicted 27 ms where 16 came, so `--strict --max-downtime 50ms`
// refused containers that switch in ~43 ms.
constexpr double kTreeOverStart = 3.5;
constexpr double kTreeBaseMs = 8;
constexpr double kTreePerProcessMs = 4;
constexpr double kRestoreBaseMs = 8;
constexpr double kRestorePerProcessMs = 3.5;
constexpr double kPerGiBMs = 18;
constexpr double kSwitchMs = 3;
constexpr double kFreezeMs = 1;
constexpr double kCollectMs = 5;
// A round this small cannot shrink further in a way that matters: the fixed part decides.
constexpr uint64_t kMinimalRound = 256 << 10;

// The final dump's files (and the frames between them) go to the peer from a thread of their
// own, in the order the dump closed them: the dump's thread goes on with the next process
// instead of reading back, encrypting and sending each image (~10% of its time in the blackout,
// perf). Everything pushed runs in order; after a failure the rest is skipped and Drain says why.
class SendQueue {
 public:
  explicit SendQueue(bool boost) {
    th_ = std::thread([this, boost] {
      if (boost) (void)RaisePriority(0);  // the blackout's work (common/priority.h)
      Run();
    });
  }
  ~SendQueue() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    th_.join();
  }
  SendQueue(const SendQueue&) = delete;
  SendQueue& operator=(const SendQueue&) = delete;

  void Push(std::function<Result<void>()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      q_.push_back(std::move(fn));
    }
    cv_.notify_all();
  }
  // Until fewer than n functions wait (the one running not counted); the first failure so far.
  Result<void> WaitBelow(size_t n) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return q_.size() < n || !result_.ok(); });
    return result_;
  }
  // Until everything pushed so far ran; the first failure.
  Result<void> Drain() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return q_.empty() && !busy_; });
    return result_;
  }

 private:
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      cv_.wait(l, [&] { return stop_ || !q_.empty(); });
      if (q_.empty()) return;  // stopped, nothing left
      auto fn = std::move(q_.front());
      q_.pop_front();
      busy_ = true;
      bool failed = !result_.ok();
      l.unlock();
      Result<void> r = failed ? Result<void>(Ok()) : fn();
      l.lock();
      if (!r.ok() && result_.ok()) result_ = std::move(r);
      busy_ = false;
      cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<Result<void>()>> q_;
  bool busy_ = false, stop_ = false;
  Result<void> result_ = Ok();
  std::thread th_;
};

// Auto-converge's hand on the container's CPU (SourceOptions::auto_converge). The quota is a
// share of the CPU the container used in its last unthrottled round (its cgroup's usage), per
// kThrottlePeriodUs: a short period, so a throttled container pauses ~20 ms at most at a time
// and a client's requests never wait longer than that. The container's own bandwidth (read at
// Open) is written back by Release: before the freeze (a throttled task would reach the freezer
// only when its next period starts) and on every way out.
constexpr uint64_t kThrottlePeriodUs = 20000;
constexpr int64_t kMinQuotaUs = 1000;  // the kernel's floor

class CpuThrottle {
 public:
  // Null (with a warning) where the container's cgroup has no CPU bandwidth control.
  static std::unique_ptr<CpuThrottle> Open(const runtime::Container& c) {
    auto cg = runtime::OpenCgroup(c);
    Result<runtime::CpuBandwidth> own = cg.ok() ? (*cg)->CpuLimit()
                                                : Result<runtime::CpuBandwidth>(cg.error());
    Result<uint64_t> used = own.ok() ? (*cg)->CpuUsageNs() : Result<uint64_t>(own.error());
    if (!used.ok()) {
      LOG_WARN("migration of %s: no auto-converge: %s", c.id.c_str(),
               used.error().to_string().c_str());
      return nullptr;
    }
    return std::unique_ptr<CpuThrottle>(
        new CpuThrottle(c.id, std::move(*cg), *own, *used));
  }
  CpuThrottle(const CpuThrottle&) = delete;
  CpuThrottle& operator=(const CpuThrottle&) = delete;
  ~CpuThrottle() { Release(); }

  // At each round's end: the CPU the container used since the last call, in CPUs, kept as the
  // base of the throttle while it runs unthrottled.
  void Sample() {
    auto used = cg_->CpuUsageNs();
    auto now = Clock::now();
    if (!used.ok()) return;
    double s = Ms(mark_, now) / 1000;
    if (!set_ && s > 0 && *used >= used_)
      base_cpus_ = static_cast<double>(*used - used_) / 1e9 / s;
    used_ = *used;
    mark_ = now;
  }

  // Whether a throttle can slow the container: it used at least twice the kernel's floor (a
  // writer using less, e.g. one that sleeps between bursts, is not slowed by any quota).
  bool Bites() const {
    return base_cpus_ * kThrottlePeriodUs >= 2.0 * static_cast<double>(kMinQuotaUs);
  }

  // Takes pct percent of the base away (the kernel's floor and the container's own limit
  // apply). The CPU left, in percent of one CPU.
  Result<double> Set(int pct) {
    double quota = (100 - pct) / 100.0 * base_cpus_ * static_cast<double>(kThrottlePeriodUs);
    if (own_.quota_us >= 0 && own_.period_us > 0)
      quota = std::min(quota, static_cast<double>(own_.quota_us) * kThrottlePeriodUs /
                                  static_cast<double>(own_.period_us));
    runtime::CpuBandwidth b;
    b.quota_us = std::max<int64_t>(kMinQuotaUs, static_cast<int64_t>(quota));
    b.period_us = kThrottlePeriodUs;
    set_ = true;  // a refused write may have lifted the quota already: Release puts it back
    TRY_CTX(cg_->SetCpuLimit(b), "auto-converge: throttling %s", id_.c_str());
    return 100.0 * static_cast<double>(b.quota_us) / kThrottlePeriodUs;
  }

  void Release() {
    if (!set_) return;
    set_ = false;
    auto r = cg_->SetCpuLimit(own_);
    if (!r.ok())
      LOG_ERROR("migration of %s: giving its CPU bandwidth back: %s", id_.c_str(),
                r.error().to_string().c_str());
  }

 private:
  CpuThrottle(std::string id, std::unique_ptr<runtime::Cgroup> cg, runtime::CpuBandwidth own,
              uint64_t used)
      : id_(std::move(id)), cg_(std::move(cg)), own_(own), used_(used), mark_(Clock::now()) {}

  std::string id_;
  std::unique_ptr<runtime::Cgroup> cg_;
  runtime::CpuBandwidth own_;
  uint64_t used_ = 0;  // usage at mark_
  Clock::time_point mark_;
  double base_cpus_ = 0;
  bool set_ = false;
};

// Resident memory of the processes (the room the destination needs).
uint64_t ResidentBytes(const std::vector<pid_t>& pids) {
  uint64_t total = 0;
  for (pid_t p : pids) {
    auto st = fs::ReadFile(StrFormat("/proc/%d/status", p));
    if (!st.ok()) continue;
    size_t at = st->find("VmRSS:");
    if (at != std::string::npos) total += strtoull(st->c_str() + at + 6, nullptr, 10) * 1024;
  }
  return total;
}

Result<void> RecvExpect(Channel& ch, mig::Frame* f, mig::Frame::MsgCase want, const char* what) {
  std::string payload;
  TRY_CTX(ch.Recv(f, &payload), "%s", what);
  if (f->msg_case() == want) return Ok();
  if (f->has_failed())
    return MakeError(ErrorKind::kPeer, 0, "destination failed: %s", f->failed().reason().c_str());
  if (f->has_abort())
    return MakeError(ErrorKind::kPeer, 0, "destination aborted: %s", f->abort().reason().c_str());
  return MakeError(ErrorKind::kPeer, 0, "%s: unexpected %s frame from the destination", what,
                   FrameKind(*f));
}

}  // namespace

void Cancel::Request(const std::string& why) {
  std::lock_guard<std::mutex> l(mu_);
  if (requested_) return;
  requested_ = true;
  why_ = why;
  if (ch_ && !switching_) ch_->Interrupt();
}

bool Cancel::requested() const {
  std::lock_guard<std::mutex> l(mu_);
  return requested_;
}

std::string Cancel::reason() const {
  std::lock_guard<std::mutex> l(mu_);
  return why_;
}

bool Cancel::Attach(Channel* ch) {
  std::lock_guard<std::mutex> l(mu_);
  ch_ = ch;
  return !requested_;
}

void Cancel::Detach() {
  std::lock_guard<std::mutex> l(mu_);
  ch_ = nullptr;
}

bool Cancel::EnterSwitchover() {
  std::lock_guard<std::mutex> l(mu_);
  switching_ = true;
  return !requested_;
}

RoundVerdict DecideRound(const RoundInput& in) {
  RoundVerdict v;
  const bool fits = in.round > 0 && in.predicted_ms <= in.max_downtime_ms;
  const bool minimal = in.round > 0 && in.bytes < kMinimalRound;
  const bool last = in.round + 1 >= in.max_rounds;
  const bool stalled_now = in.round >= 2 && in.prev_bytes > 0 &&
                           static_cast<double>(in.bytes) > 0.8 * static_cast<double>(in.prev_bytes);
  v.stalls = stalled_now ? in.stalls_before + 1 : 0;
  const bool stalled =
      stalled_now && (v.stalls >= 2 || in.predicted_ms <= 4 * in.max_downtime_ms);
  v.throttle_pct = in.throttle_pct;
  int next_throttle = in.throttle_pct;
  for (int step : kThrottleSteps) {
    if (step > in.throttle_pct) {
      next_throttle = step;
      break;
    }
  }
  // Written faster than half the stream's rate, or a round that did not shrink: a writer that
  // rewrites everything shows a rate no higher than the stream's (it cannot dirty more than all).
  const bool outpaced = stalled_now || (in.round >= 1 && in.throughput_bytes_per_s > 0 &&
                                        in.dirty_bytes_per_s > 0.5 * in.throughput_bytes_per_s);
  if (!fits && !minimal && !last && outpaced && in.can_throttle &&
      next_throttle > in.throttle_pct) {
    v.throttle_pct = next_throttle;
    v.decision = StrFormat("continue: %s at %.0f MB/s against the stream's %.0f MB/s "
                           "(predicted %.1f ms over %.0f ms): CPU throttled by %d%%",
                           stalled_now ? "the round did not shrink, written" : "written",
                           in.dirty_bytes_per_s / 1e6, in.throughput_bytes_per_s / 1e6,
                           in.predicted_ms, in.max_downtime_ms, next_throttle);
    return v;
  }
  if (fits) {
    v.kind = RoundVerdict::kSwitch;
    v.decision = StrFormat("switch: predicted %.1f ms fits %.0f ms", in.predicted_ms,
                           in.max_downtime_ms);
  } else if (minimal || last || stalled) {
    const char* why = minimal ? "the dirty set is minimal (the fixed costs decide)"
                      : last  ? "max rounds reached"
                              : "rounds stopped shrinking";
    v.kind = in.strict ? RoundVerdict::kAbort : RoundVerdict::kSwitch;
    v.decision = StrFormat("%s: %s, predicted %.1f ms over %.0f ms%s",
                           in.strict ? "abort" : "switch", why, in.predicted_ms,
                           in.max_downtime_ms, in.strict ? " (--strict)" : "");
  } else if (stalled_now) {
    v.decision = StrFormat("continue: the round did not shrink, predicted %.1f ms over %.0f ms "
                           "(more than 4x: one more round)",
                           in.predicted_ms, in.max_downtime_ms);
  } else {
    v.decision = StrFormat("continue: predicted %.1f ms over %.0f ms", in.predicted_ms,
                           in.max_downtime_ms);
  }
  return v;
}

Result<void> Migrate(const SourceOptions& o, MigrationReport* rep,
                     const std::function<void(const RoundReport&)>& progress) {
  auto t_start = Clock::now();
  rep->id = o.id;
  rep->to = o.to;
  rep->outcome = "not started";
  TRY(runtime::ValidateId(o.id));
  ASSIGN_OR_RETURN(runtime::Container c, runtime::Container::Load(o.root, o.id));
  if (c.CurrentStatus() != runtime::Status::kRunning)
    return MakeError(ErrorKind::kUnsupported, 0, "container %s is %s, not running", o.id.c_str(),
                     runtime::StatusName(c.CurrentStatus()));

  // The switch holds the container's packets with libnftables (packet_hold.h): loaded now, not
  // inside the blackout, and a machine without it fails here, before anything has moved.
  TRY_CTX(netns::PreloadNft(), "migration of %s: the packet hold", o.id.c_str());

  // Every process of the container is a descendant of its init.
  const std::vector<pid_t> tree = proc::Descendants(c.pid);

  // Connect and agree.
  ASSIGN_OR_RETURN(std::unique_ptr<Channel> ch, Channel::Connect(o.to, o.tls, o.timeout_s));
  // Why a cancelled migration ends, with the error the cut stream gave (if any) after it.
  auto interrupted = [&](const std::string& cause = "") {
    return MakeError(ErrorKind::kGeneric, 0, "interrupted (%s)%s%s", o.cancel->reason().c_str(),
                     cause.empty() ? "" : ": ", cause.c_str());
  };
  if (o.cancel && !o.cancel->Attach(ch.get())) return interrupted();
  ScopeExit detach([&] {
    if (o.cancel) o.cancel->Detach();
  });
  rep->peer = ch->peer();
  rep->secure = ch->secure();
  rep->cipher = ch->cipher();
  bool zstd = o.compress != Compress::kNone;
  rep->compressed = zstd;
  bool takes_switchover = false;
  bool takes_env_ahead = false;
  {
    mig::Frame f;
    mig::Hello* h = f.mutable_hello();
    h->set_protocol_version(mig::VERSION_CURRENT);
    h->set_godwit_version(GODWIT_VERSION);
    h->set_image_format_version(images::kFormatVersion);
    h->set_container_id(o.id);
    struct utsname u;
    if (uname(&u) == 0) {
      h->set_kernel_release(u.release);
      h->set_machine(u.machine);
    }
    for (auto& k : KernelFeatureNames(o.root)) h->add_kernel_features(k);
    for (auto& cpu : images::CpuFeatures()) h->add_cpu_features(cpu);
    h->set_xcr0(images::Xcr0());
    h->set_rootfs(c.rootfs);
    h->set_memory_bytes(ResidentBytes(tree));
    if (c.resources.memory_limit) h->set_memory_limit(*c.resources.memory_limit);
    h->set_compress(zstd);
    TRY_CTX(ch->Send(f), "handshake with %s", o.to.c_str());
    TRY(RecvExpect(*ch, &f, mig::Frame::kWelcome, "handshake"));
    rep->peer_version = f.welcome().godwit_version();
    rep->peer_hostname = f.welcome().hostname();
    takes_switchover = f.welcome().takes_switchover();
    takes_env_ahead = f.welcome().takes_env_ahead() && o.env_ahead;
    if (!f.welcome().accepted()) {
      rep->outcome = "refused";
      rep->reason = f.welcome().reason();
      return MakeError(ErrorKind::kPeer, 0, "destination %s refused the migration: %s",
                       o.to.c_str(), f.welcome().reason().c_str());
    }
  }

  // From here the destination holds state: any failure tells it to drop it.
  bool committed = false;
  std::string abort_reason;
  ScopeExit tell_abort([&] {
    if (committed) return;
    mig::Frame f;
    f.mutable_abort()->set_reason(abort_reason.empty() ? "source failed" : abort_reason);
    (void)ch->Send(f);
  });

  // Memory-backed when there is room, in huge pages when the kernel gives us a tmpfs of our own
  // (migrate/staging.h): the final dump creates its files inside the blackout. A round's page
  // file is freed piece by piece as it is sent, and every page file goes once sent (nothing
  // reads it again here): the staging holds a few pieces of a round, and the final dump.
  std::string base = o.staging.empty() ? HugeStaging("outgoing", ResidentBytes(tree)) : o.staging;
  if (base.empty()) base = ChooseStaging(o.root, "outgoing", ResidentBytes(tree));
  std::string staging = StrFormat("%s/%s.%d", base.c_str(), o.id.c_str(), getpid());
  (void)fs::RemoveAll(staging);
  TRY(MakeStaging(staging + "/tree"));
  rep->staging = StagingKind(staging);
  ScopeExit rm_staging([&] {
    (void)fs::RemoveAll(staging);
    if (o.staging.empty()) RemoveStagingIfEmpty(base);
  });
  TRY(fs::MkdirAll(staging + "/container", 0700));

  // auto: zstd is tried per chunk and kept only where it pays (FileSender's adaptive mode).
  FileSender tree_tx(ch.get(), mig::DIR_TREE, staging + "/tree", zstd,
                     o.compress == Compress::kAuto);
  FileSender ctr_tx(ch.get(), mig::DIR_CONTAINER, staging + "/container", zstd,
                    o.compress == Compress::kAuto);
  // During the rounds and the final dump (async set): sent from a SendQueue's thread, in order.
  SendQueue* async = nullptr;
  auto send_tree = [&](const std::string& n) -> Result<void> {
    TRY(tree_tx.Send(n));
    if (n.rfind("pages-", 0) == 0) (void)::unlink((staging + "/tree/" + n).c_str());
    return Ok();
  };
  // A round's page blob crosses while it is written, kStreamPiece at a time, each piece freed
  // here once sent: the round's dump and its send overlap, and the staging holds what is on its
  // way (up to kPiecesQueued pieces) instead of the container's memory. The dump waits when
  // the stream falls that far behind.
  constexpr size_t kPiecesQueued = 8;
  auto piece_tree = [&](const std::string& n, uint64_t from, uint64_t to,
                        bool last) -> Result<void> {
    auto send = [&tree_tx, &staging, n, from, to, last]() -> Result<void> {
      TRY(tree_tx.SendRange(n, from, to, last, true));
      if (last) (void)::unlink((staging + "/tree/" + n).c_str());
      return Ok();
    };
    if (!async) return send();
    TRY(async->WaitBelow(kPiecesQueued));  // a stream that failed ends the round's dump too
    async->Push(std::move(send));
    return Ok();
  };
  ASSIGN_OR_RETURN(auto tree_dir, images::OpenDirSink(staging + "/tree", true));
  auto tree_sink = ForwardingSink(
      std::move(tree_dir),
      [&](const std::string& n) -> Result<void> {
        if (!async) return send_tree(n);
        async->Push([&send_tree, n] { return send_tree(n); });
        return Ok();
      },
      piece_tree,
      [&](const std::string& n) {
        // The rounds' page blobs (pages-PID-preN.img), not the final delta's: those are reserved
        // ahead and written frozen, small.
        return o.stream_rounds && dump::IsRoundBlob(n);
      });
  ASSIGN_OR_RETURN(auto ctr_dir, images::OpenDirSink(staging + "/container", true));
  // The files copied ahead (ContainerPreCopy::CopyFilesAhead) are not read here again either.
  auto send_ctr = [&](const std::string& n) -> Result<void> {
    TRY(ctr_tx.Send(n));
    if (n.ends_with("-pre.img"))
      (void)::unlink((staging + "/container/" + n).c_str());
    return Ok();
  };
  auto ctr_sink = ForwardingSink(std::move(ctr_dir), [&](const std::string& n) -> Result<void> {
    if (!async) return send_ctr(n);
    async->Push([&send_ctr, n] { return send_ctr(n); });
    return Ok();
  });

  auto fail = [&](Error e) -> Result<void> {
    // A cut stream's error says less than why it was cut.
    if (o.cancel && o.cancel->requested() && e.message().rfind("interrupted (", 0) != 0)
      e = interrupted(e.to_string());
    abort_reason = e.to_string();
    rep->outcome = "rolled back";
    rep->reason = abort_reason;
    rep->total_ms = Ms(t_start, Clock::now());
    return e;
  };

  // Pre-copy rounds while the container runs.
  auto pc = container::ContainerPreCopy::Start(o.root, o.id, *tree_sink);
  if (!pc.ok()) return fail(std::move(pc.error().wrap("pre-copy")));
  rep->lazy_wait_ms = (*pc)->engine().lazy_wait_ms();
  // The container's tmpfs contents copied once while it runs, sent with the first round: the
  // final checkpoint reads and sends only the files changed since (mnt::PrecopyTmpfs). Without
  // the copy the final checkpoint reads them all, as before: a warning, not a failure.
  if (auto f = (*pc)->CopyFilesAhead(*ctr_sink, images::Compression::kNone); f.ok()) {
    rep->files_ahead_bytes = (*pc)->files()->bytes;
  } else {
    LOG_WARN("migration of %s: tmpfs contents not copied ahead: %s", o.id.c_str(),
             f.error().to_string().c_str());
  }
  {
    // The fixed part of the blackout, measured here where it can be (the constants above).
    double collect = kCollectMs;
    {
      std::string dir = staging + "/rehearsal";
      auto sink = images::OpenDirSink(dir, true);
      auto ms = sink.ok() ? container::RehearseCollect(o.root, o.id, **sink, (*pc)->files())
                          : Result<double>(sink.error());
      if (sink.ok()) (*sink)->Abort();
      (void)fs::RemoveAll(dir);
      if (ms.ok()) {
        collect = *ms;
      } else {  // only a measurement: the prediction takes the model
        LOG_WARN("migration of %s: measuring its state: %s", o.id.c_str(),
                 ms.error().to_string().c_str());
      }
    }
    const double start = (*pc)->engine().start_ms();
    const double n = static_cast<double>((*pc)->engine().processes());
    const double gib = static_cast<double>(ResidentBytes(tree)) / (1ull << 30);
    const double restore = kRestoreBaseMs + kRestorePerProcessMs * n + kPerGiBMs * gib;
    const double tree_model = kTreeBaseMs + kTreePerProcessMs * n;
    const double tree_ms = std::max(kTreeOverStart * start, tree_model);
    rep->fixed_cost_parts = {{"freeze_ms", kFreezeMs},
                             {"collect_ms", collect},
                             {"tree_ms", tree_ms},
                             {"tree_start_measured_ms", start},
                             {"tree_model_ms", tree_model},
                             {"restore_ms", restore},
                             {"switch_ms", kSwitchMs}};
    rep->fixed_cost_ms = kFreezeMs + collect + tree_ms + restore + kSwitchMs;
  }
  double last_throughput = 0;
  int stalls = 0;  // consecutive rounds that did not shrink
  std::unique_ptr<CpuThrottle> throttle;
  if (o.auto_converge) throttle = CpuThrottle::Open(c);
  int throttle_pct = 0;
  double quota_pct = 0;  // what the throttle leaves, in percent of one CPU
  // The rounds' files go from a thread of their own while the next piece is dumped.
  std::optional<SendQueue> round_queue;
  if (o.async_send) {
    round_queue.emplace(false);
    async = &*round_queue;
  }
  ScopeExit no_round_queue([&] {
    if (async == (round_queue ? &*round_queue : nullptr)) async = nullptr;
  });
  for (int round = 0;; ++round) {
    if (o.cancel && o.cancel->requested()) return fail(interrupted());
    auto t0 = Clock::now();
    uint64_t wire0 = tree_tx.wire_bytes();
    double send0 = tree_tx.send_ms();
    auto rs = (*pc)->Round();
    // Everything of the round on the wire before its end is announced (and its stream measured).
    Result<void> sent = round_queue ? round_queue->Drain() : Result<void>(Ok());
    if (!rs.ok()) return fail(std::move(rs.error().wrap(StrFormat("pre-copy round %d", round))));
    if (!sent.ok())
      return fail(std::move(sent.error().wrap(StrFormat("pre-copy round %d: sending", round))));
    mig::Frame f;
    f.mutable_round_end()->set_round(round);
    f.mutable_round_end()->set_bytes(rs->bytes);
    f.mutable_round_end()->set_pages(rs->pages);
    if (auto s = ch->Send(f); !s.ok()) return fail(std::move(s).error());
    if (auto r = RecvExpect(*ch, &f, mig::Frame::kRoundAck, "round ack"); !r.ok())
      return fail(std::move(r).error());
    RoundReport rr;
    rr.round = round;
    rr.pages = rs->pages;
    rr.bytes = rs->bytes;
    rr.wire_bytes = tree_tx.wire_bytes() - wire0;
    rr.ms = Ms(t0, Clock::now());
    rr.dirty_bytes_per_s = rs->dirty_bytes_per_s;
    double send_s = (tree_tx.send_ms() - send0) / 1000;
    // The stream's rate in logical bytes (what the final delta will need), when the round was
    // big enough to measure it; else the last measured one.
    if (rr.bytes >= (1u << 20) && send_s > 0) last_throughput = rr.bytes / send_s;
    rr.throughput_bytes_per_s = last_throughput;
    double tp = last_throughput > 0 ? last_throughput : 0.5e9;
    // What the final dump will hold: what gets written between this round's start and the
    // freeze, at this round's rate, over about one more round's time.
    double est = round == 0 ? static_cast<double>(rs->bytes) : rr.dirty_bytes_per_s * rr.ms / 1000;
    rr.predicted_downtime_ms = rep->fixed_cost_ms + est / tp * 1000 + est / kFillBytesPerS * 1000;
    RoundInput in;
    in.round = round;
    in.bytes = rr.bytes;
    in.prev_bytes = rep->rounds.empty() ? 0 : rep->rounds.back().bytes;
    in.predicted_ms = rr.predicted_downtime_ms;
    in.max_downtime_ms = o.max_downtime_ms;
    in.max_rounds = o.max_rounds;
    in.stalls_before = stalls;
    in.strict = o.strict;
    in.dirty_bytes_per_s = rr.dirty_bytes_per_s;
    in.throughput_bytes_per_s = last_throughput;
    in.throttle_pct = throttle_pct;
    if (throttle) throttle->Sample();
    in.can_throttle = throttle && throttle->Bites();
    RoundVerdict v = DecideRound(in);
    stalls = v.stalls;
    rr.decision = v.decision;
    if (v.throttle_pct != throttle_pct && v.kind == RoundVerdict::kContinue) {
      auto q = throttle->Set(v.throttle_pct);
      if (q.ok()) {
        throttle_pct = v.throttle_pct;
        quota_pct = *q;
        rr.decision += StrFormat(" (%.0f%% of a CPU)", *q);
      } else {  // its own bandwidth back (the reset), and the rounds go on without
        LOG_WARN("migration of %s: %s", o.id.c_str(), q.error().to_string().c_str());
        rr.decision += " (failed: " + q.error().to_string() + ")";
        throttle.reset();
        throttle_pct = 0;
        quota_pct = 0;
      }
    }
    rr.cpu_throttle_pct = throttle_pct;
    rr.cpu_quota_pct = quota_pct;
    rep->rounds.push_back(rr);
    rep->predicted_downtime_ms = rr.predicted_downtime_ms;
    if (progress) progress(rr);
    if (v.kind == RoundVerdict::kAbort)
      return fail(MakeError(ErrorKind::kUnsupported, 0, "%s", rr.decision.c_str()));
    if (v.kind == RoundVerdict::kSwitch) break;
  }

  async = nullptr;
  round_queue.reset();

  // Switchover: freeze, final delta + state streamed as written, held frozen here. The
  // blackout's work runs at a raised priority on both ends until the commit (common/priority.h).
  // A cancel from here on waits for its end (Cancel).
  if (o.cancel && !o.cancel->EnterSwitchover()) return fail(interrupted());
  // The final delta's page files made and their room reserved (dump::PreCopy::PrepareFinal)
  // before the packets are held: creating pages inside the blackout is what this VM does
  // slowest, and from the hold on the clients wait.
  (*pc)->engine().PrepareFinal();
  PriorityBoost boost;
  if (o.boost) boost.Add(0);
  rep->boosted = !boost.empty();
  if (takes_switchover && o.boost) {
    mig::Frame sw;
    sw.mutable_switchover();
    if (auto s = ch->Send(sw); !s.ok()) return fail(std::move(s).error());
  }
  container::CheckpointOptions co;
  co.root = o.root;
  co.id = o.id;
  co.image_path = staging;
  co.end = container::EndMode::kHold;
  co.container_sink = ctr_sink.get();
  co.tree_sink = tree_sink.get();
  co.precopy = pc->get();
  co.precopy_files = (*pc)->files();
  // The container's images go first: the destination makes its environment while the tree is
  // dumped here (container::PrepareRestore), out of the blackout's sequence.
  if (takes_env_ahead) {
    co.namespaces_dumped = [&](const img::ContainerCheckpoint& early) -> Result<void> {
      TRY(images::WriteImage(*ctr_sink, container::kEarlyImage, early));
      auto send = [&ch]() -> Result<void> {
        mig::Frame er;
        er.mutable_env_ready();
        return ch->Send(er);
      };
      if (!async) return send();
      async->Push(send);  // after the container's images, queued before it
      return Ok();
    };
  }
  // Frames for the container from here on are held, then replayed on the destination.
  std::optional<PacketHold> hold;
  bool deaf = false, released = false;
  // Before the commit, whatever ends the migration: the container hears again and gets the
  // frames held for it (after it resumed: `held`, declared below, is gone before this runs).
  auto release_hold = [&] {
    if (released || committed) return;
    released = true;
    if (deaf) {
      auto u = Undeafen(c.pid);
      if (!u.ok()) LOG_ERROR("migration of %s: %s", o.id.c_str(), u.error().to_string().c_str());
    }
    if (!hold) return;
    std::string frames;
    if (hold->Drain(&frames).ok()) (void)InjectFrames(c.host_veth, frames);
  };
  ScopeExit give_back([&] { release_hold(); });
  if (o.hold_packets && !c.host_veth.empty()) {
    auto h = PacketHold::Start(c.host_veth);
    if (!h.ok()) return fail(std::move(h.error().wrap("hold packets")));
    hold.emplace(std::move(*h));
    // From here frames for the container reach only the hold (Deafen says why).
    if (auto d = Deafen(c.pid); !d.ok()) return fail(std::move(d.error().wrap("hold packets")));
    deaf = true;
  }
  // The container's own CPU bandwidth back before the freeze (CpuThrottle).
  if (throttle) throttle->Release();
  auto t_ckpt = Clock::now();
  const uint64_t files_before_final = tree_tx.file_bytes() + ctr_tx.file_bytes();
  std::optional<SendQueue> queue;
  if (o.async_send) {
    queue.emplace(o.boost);
    async = &*queue;
  }
  auto ck = container::Checkpoint(co);
  Result<void> sent_all = queue ? queue->Drain() : Result<void>(Ok());
  async = nullptr;
  queue.reset();
  if (!ck.ok()) return fail(std::move(ck.error().wrap("final checkpoint")));
  if (!sent_all.ok()) {
    (void)ck->held->Resume();
    return fail(std::move(sent_all.error().wrap("final checkpoint: sending its images")));
  }
  std::unique_ptr<container::HeldCheckpoint> held = std::move(ck->held);
  auto t_final = Clock::now();
  if ((*pc)->files()) rep->files_ahead_reused_bytes = (*pc)->files()->reused_bytes;
  const auto& ph = ck->phases;
  auto t_freeze = t_ckpt + std::chrono::duration_cast<Clock::duration>(
                               std::chrono::duration<double, std::milli>(ph.prepare_ms));
  rep->blackout.freeze_ms = ph.freeze_ms;
  // The wall clock now, less the time since the freeze on the steady clock.
  rep->blackout.start_unix_ms =
      std::chrono::duration<double, std::milli>(
          std::chrono::system_clock::now().time_since_epoch()).count() - Ms(t_freeze, Clock::now());
  rep->blackout.final_dump_ms = std::max(0.0, Ms(t_freeze, t_final) - ph.freeze_ms);
  rep->final_dump_phases = {{"collect_ms", ph.collect_ms}, {"net_ms", ph.net_ms},
                            {"mnt_ms", ph.mnt_ms},         {"tree_ms", ph.tree_ms},
                            {"seize_ms", ph.seize_ms},     {"memory_ms", ph.memory_ms},
                            {"tree_rest_ms", ph.tree_rest_ms}, {"write_ms", ph.write_ms},
                            {"cgroup_hooks_ms", ph.cgroup_hooks_ms},
                            {"tree_setup_ms", ph.tree_setup_ms}, {"rootfs_ms", ph.rootfs_ms},
                            {"layer_ms", ph.layer_ms}};
  for (const auto& [name, ms] : ph.tree_steps)
    rep->final_dump_phases.emplace_back("tree_" + name + "_ms", ms);
  rep->final_dump_phases.emplace_back("tree_injected_calls",
                                      static_cast<double>(ck->tree.remote_calls));
  rep->final_bytes = tree_tx.file_bytes() + ctr_tx.file_bytes() - files_before_final;
  {
    mig::Frame f;
    f.mutable_final();
    if (auto s = ch->Send(f); !s.ok()) return fail(std::move(s).error());
  }
  auto t_sent = Clock::now();
  rep->blackout.transfer_ms = Ms(t_final, t_sent);
  // From here the source says nothing on the network (it would answer for the address the
  // destination is about to own): needed before the commit, not before the final state leaves,
  // so it runs while the destination restores. A rollback lets it speak again before it resumes.
  if (auto s = Silence(c.pid); !s.ok()) {
    (void)held->Resume();
    return fail(std::move(s).error());
  }
  bool silenced = true;
  // Any return before the commit: the network speaks again before `held` (destroyed after this,
  // declared before) resumes the tree.
  ScopeExit unsilence([&] {
    if (!silenced || committed) return;
    auto u = Unsilence(c.pid);
    if (!u.ok()) LOG_ERROR("migration of %s: %s", o.id.c_str(), u.error().to_string().c_str());
  });
  ch->set_timeout(o.restore_timeout_s);
  mig::Frame f;
  auto got = RecvExpect(*ch, &f, mig::Frame::kRestored, "restore on the destination");
  ch->set_timeout(o.timeout_s);
  auto t_restored = Clock::now();
  rep->blackout.restore_ms = Ms(t_sent, t_restored);
  if (got.ok()) {
    const auto& rp = f.restored().phases();
    rep->restore_phases = {{"total_ms", rp.total_ms()},
                           {"env_ms", rp.env_ms()},
                           {"tree_ms", rp.tree_ms()},
                           {"memory_ms", rp.memory_ms()},
                           {"lazy_bytes", rp.lazy_bytes()}};
    std::map<std::string, double> sorted(rp.steps().begin(), rp.steps().end());
    for (const auto& [k, v] : sorted) rep->restore_phases.emplace_back(k, v);
  }
  if (!got.ok()) {
    // Before the commit point: the container here carries on as if nothing happened, and the
    // frames its peers sent meanwhile go to it now (no retransmission timeout for them).
    auto u = Unsilence(c.pid);
    if (!u.ok()) LOG_ERROR("migration of %s: %s", o.id.c_str(), u.error().to_string().c_str());
    silenced = false;
    auto r = held->Resume();
    if (r.ok()) release_hold();
    // The destination's copy may have spoken for the address before it failed (its restored
    // connections are live until its cleanup silences and deletes it, tens of ms): take the
    // address back, and again a few times while that copy goes away.
    if (r.ok()) {
      for (int ms : {0, 100, 300, 1000}) {
        if (ms) std::this_thread::sleep_for(std::chrono::milliseconds(ms));
        (void)AnnounceAddresses(o.root, o.id);
      }
    }
    if (!r.ok()) {
      LOG_ERROR("migration of %s: resume after the destination failed: %s", o.id.c_str(),
                r.error().to_string().c_str());
      return fail(std::move(r.error().wrap(got.error().to_string())));
    }
    return fail(std::move(got).error());
  }
  // Commit point: the destination runs the container. Ours is deleted (never resumed).
  committed = true;
  Result<void> sent = Ok();
  auto ship_held = [&]() {
    if (!hold || !sent.ok()) return;
    std::string frames;
    auto d = hold->Drain(&frames);
    if (!d.ok() || *d == 0) return;
    rep->held_packets += *d;
    mig::Frame hp;
    hp.mutable_held()->set_count(*d);
    hp.mutable_held()->set_dropped(hold->dropped());
    sent = ch->Send(hp, frames.data(), frames.size());
  };
  // Every frame held since the freeze, then the commit: the destination announces the address
  // at once (its own end holds what arrives from then on), unlocks and replays them. Until the
  // segment has learnt the new port, frames still arrive here: held too, and shipped after Done
  // (the destination waits for them). Our copy is frozen and silenced and never resumes; it is
  // deleted once the frames are off.
  ship_held();
  mig::Frame cm;
  cm.mutable_commit();
  if (sent.ok()) sent = ch->Send(cm);
  auto t_committed = Clock::now();
  rep->blackout.release_ms = Ms(t_restored, t_committed);
  Result<void> done = sent.ok() ? RecvExpect(*ch, &f, mig::Frame::kDone, "done") : sent;
  auto t_done = Clock::now();
  boost.End();  // the blackout is over; deleting the copy here is not part of it
  if (done.ok()) {
    const auto& dn = f.done();
    rep->switch_phases = {{"total_ms", dn.announce_ms()},
                          {"arp_ms", dn.arp_ms()},
                          {"unlock_ms", dn.unlock_ms()},
                          {"replay_ms", dn.replay_ms()},
                          {"held_here", static_cast<double>(dn.held_here())}};
    int before = rep->held_packets;
    ship_held();
    rep->late_packets = rep->held_packets - before;
  }
  ch->Close();
  auto t_kill = Clock::now();
  // Off the segment before it dies (Unplug says why: else a RST can reach the clients).
  if (auto u = Unplug(c.host_veth); !u.ok())
    LOG_WARN("migration of %s: %s", o.id.c_str(), u.error().to_string().c_str());
  auto kill = held->Kill(/*release_host_lock=*/true);
  held.reset();
  rep->source_delete_ms = Ms(t_kill, Clock::now());
  rep->blackout.announce_ms = Ms(t_committed, t_done);
  rep->blackout.total_ms = Ms(t_freeze, t_done);
  rep->total_wire_bytes = ch->bytes_sent();
  rep->total_ms = Ms(t_start, t_done);
  if (!kill.ok()) {
    rep->outcome = "failed after commit";
    rep->reason = kill.error().to_string();
    return std::move(kill.error().wrap(StrFormat(
        "container %s runs on %s now, but deleting it here failed", o.id.c_str(), o.to.c_str())));
  }
  if (!done.ok()) {
    rep->outcome = "failed after commit";
    rep->reason = done.error().to_string();
    return std::move(done.error().wrap(StrFormat(
        "container %s was deleted here and restored on %s, but the commit was not confirmed",
        o.id.c_str(), o.to.c_str())));
  }
  rep->outcome = "migrated";
  return Ok();
}

namespace {
nlohmann::json Phases(const std::vector<std::pair<std::string, double>>& v) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, x] : v) j[k] = x;
  return j;
}
}  // namespace

std::string ReportJson(const MigrationReport& r) {
  nlohmann::json rounds = nlohmann::json::array();
  for (const auto& x : r.rounds)
    rounds.push_back({{"round", x.round},
                      {"pages", x.pages},
                      {"bytes", x.bytes},
                      {"wire_bytes", x.wire_bytes},
                      {"ms", x.ms},
                      {"dirty_bytes_per_s", x.dirty_bytes_per_s},
                      {"throughput_bytes_per_s", x.throughput_bytes_per_s},
                      {"predicted_downtime_ms", x.predicted_downtime_ms},
                      {"decision", x.decision},
                      {"cpu_throttle_pct", x.cpu_throttle_pct},
                      {"cpu_quota_pct", x.cpu_quota_pct}});
  const Blackout& b = r.blackout;
  nlohmann::json j = {{"id", r.id},
                      {"to", r.to},
                      {"peer", r.peer},
                      {"peer_version", r.peer_version},
                      {"peer_hostname", r.peer_hostname},
                      {"tls", r.secure},
                      {"tls_cipher", r.cipher},
                      {"staging", r.staging},
                      {"files_ahead_bytes", r.files_ahead_bytes},
                      {"files_ahead_reused_bytes", r.files_ahead_reused_bytes},
                      {"lazy_wait_ms", r.lazy_wait_ms},
                      {"boosted", r.boosted},
                      {"compress", r.compressed},
                      {"outcome", r.outcome},
                      {"rounds", rounds},
                      {"fixed_cost_ms", r.fixed_cost_ms},
                      {"fixed_cost_parts", Phases(r.fixed_cost_parts)},
                      {"predicted_downtime_ms", r.predicted_downtime_ms},
                      {"blackout",
                       {{"freeze_ms", b.freeze_ms},
                        {"final_dump_ms", b.final_dump_ms},
                        {"transfer_ms", b.transfer_ms},
                        {"restore_ms", b.restore_ms},
                        {"release_ms", b.release_ms},
                        {"announce_ms", b.announce_ms},
                        {"total_ms", b.total_ms},
                        {"start_unix_ms", b.start_unix_ms}}},
                      {"final_dump_phases", Phases(r.final_dump_phases)},
                      {"restore_phases", Phases(r.restore_phases)},
                      {"switch_phases", Phases(r.switch_phases)},
                      {"final_bytes", r.final_bytes},
                      {"held_packets", r.held_packets},
                      {"late_packets", r.late_packets},
                      {"source_delete_ms", r.source_delete_ms},
                      {"total_wire_bytes", r.total_wire_bytes},
                      {"total_ms", r.total_ms}};
  if (!r.reason.empty()) j["reason"] = r.reason;
  return j.dump(2);
}

}  // namespace godwit::migrate
