#include "restore/load.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <set>
#include <tuple>

#include "common/fs.h"
#include "common/log.h"
#include "common/page.h"
#include "images/crc32c.h"
#include "restore/sessions.h"
#include "restore/shmem.h"

namespace godwit::restore {
namespace {

struct Preloaded {
  uint64_t size = 0;
  uint32_t crc = 0;
  img::PageMap map;
};

std::map<std::string, Preloaded>& Cache() {
  static std::map<std::string, Preloaded> cache;
  return cache;
}
size_t g_hits = 0;
std::set<std::string>& HitNames() {  // the round page maps LoadImages took preloaded
  static std::set<std::string> names;
  return names;
}
// The round page maps the final dump referred to but LoadImages read again (the preloaded bytes
// were not the listed ones): a record built from them is not to be trusted.
std::set<std::string>& MissedNames() {
  static std::set<std::string> names;
  return names;
}

// One process's rounds, laid over each other as they arrive (LazyPager::InsertSorted).
struct Ahead {
  std::vector<std::string> maps;  // the round page map images applied, oldest first
  int last_round = -1;
  LazyPager::Prepared prepared;  // kept up to date round by round
  bool broken = false;
};
std::map<pid_t, Ahead>& Aheads() {
  static std::map<pid_t, Ahead> aheads;
  return aheads;
}

// Lays round `round` of pid (its page map pm, preloaded as `name`) over the earlier ones.
void AddAhead(pid_t pid, int round, const std::string& name, const img::PageMap& pm) {
  Ahead& a = Aheads()[pid];
  if (a.broken) return;
  if (round <= a.last_round) {  // rounds arrive in order; anything else is not trusted
    a.broken = true;
    return;
  }
  std::vector<LazyPager::Run> runs;
  runs.reserve(pm.runs_size());
  uint64_t prev_end = 0;
  for (const auto& r : pm.runs()) {
    // LoadImages checks the same before the restore uses a page map; not checked yet here.
    if (r.vaddr() % kPage || r.vaddr() < prev_end || r.npages() == 0 ||
        r.npages() > (1ULL << 36)) {
      a.broken = true;
      return;
    }
    runs.push_back({r.vaddr(), r.npages() * kPage, r.blob_off()});
    prev_end = r.vaddr() + r.npages() * kPage;
  }
  // Laid over the record in one walk: the cost follows the round's runs, not the record's size
  // (the last round's comes while the source dumps the final state).
  std::vector<LazyPager::Segment> segs;
  segs.reserve(runs.size());
  for (const auto& r : runs) segs.push_back({r.va, r.va + r.len, 0, r.off});
  LazyPager::InsertSorted(a.prepared.pending, segs,
                          {static_cast<uint32_t>(a.prepared.blobs.size())});
  a.prepared.blobs.push_back(pm.blob());
  std::vector<std::pair<uint64_t, uint64_t>> next;
  LazyPager::Unite(&a.prepared.covered, runs, &next);
  const auto& cov = a.prepared.covered;
  // The record holds every page of the rounds' runs: exactly their union.
  a.prepared.bytes = 0;
  for (const auto& [cs, ce] : cov) a.prepared.bytes += ce - cs;
  a.maps.push_back(name);
  a.last_round = round;
}

bool IsRoundPageMap(const std::string& n) {
  return n.rfind("pagemap-", 0) == 0 && n.find("-pre") != std::string::npos &&
         n.size() > 4 && n.compare(n.size() - 4, 4, ".img") == 0;
}

// The record of a round's page map image: preloaded when its bytes are the listed ones, else
// read now.
Result<img::PageMap> RoundPageMap(const images::ImageSet& set, const std::string& name) {
  auto& cache = Cache();
  auto it = cache.find(name);
  if (it != cache.end()) {
    for (const auto& f : set.inventory().files()) {
      if (f.name() != name) continue;
      if (f.size() == it->second.size && f.crc32c() == it->second.crc) {
        img::PageMap m = std::move(it->second.map);
        cache.erase(it);
        g_hits++;
        HitNames().insert(name);
        MissedNames().erase(name);
        return m;
      }
      LOG_DEBUG("%s: preloaded %lu bytes, the inventory lists %lu: read again", name.c_str(),
                static_cast<unsigned long>(it->second.size), static_cast<unsigned long>(f.size()));
      break;
    }
  } else {
    LOG_DEBUG("%s: not preloaded", name.c_str());
  }
  MissedNames().insert(name);
  HitNames().erase(name);
  img::PageMap m;
  TRY_CTX(set.ReadOne(name, &m), "read %s", name.c_str());
  return m;
}

template <typename M>
Result<void> ReadOne(const images::ImageSet& set, const std::string& name, M* msg) {
  TRY_CTX(set.ReadOne(name, msg), "read %s", name.c_str());
  return Ok();
}

Result<void> LoadProcess(const images::ImageSet& set, ProcessRestore* p, std::set<pid_t>* pids) {
  const img::ProcessEntry& e = *p->entry;
  TRY(ReadOne(set, StrFormat("core-%d.img", e.pid()), &p->core));
  TRY(ReadOne(set, StrFormat("mm-%d.img", e.pid()), &p->mm));
  std::string pmname = StrFormat("pagemap-%d.img", e.pid());
  auto rd = set.OpenImage(pmname);
  if (!rd.ok()) return std::move(rd.error().wrap("read " + pmname));
  for (;;) {
    img::PageMap pm;
    ASSIGN_OR_RETURN(bool more, rd->Next(&pm));
    if (!more) break;
    if (!pm.runs_image().empty()) {
      // A round's record in an image of its own (dump/precopy.h).
      if (pm.runs_size() != 0 || !IsRoundPageMap(pm.runs_image()) || !set.Has(pm.runs_image()))
        return MakeError(ErrorKind::kBadImage, 0, "%s: bad reference to %s", pmname.c_str(),
                         pm.runs_image().c_str());
      ASSIGN_OR_RETURN(img::PageMap full, RoundPageMap(set, pm.runs_image()));
      if (full.pid() != pm.pid() || full.blob() != pm.blob() || !full.runs_image().empty())
        return MakeError(ErrorKind::kBadImage, 0, "%s: %s holds pid %d blob %s, not pid %d blob %s",
                         pmname.c_str(), pm.runs_image().c_str(), full.pid(),
                         full.blob().c_str(), pm.pid(), pm.blob().c_str());
      pm = std::move(full);
    }
    p->pagemaps.push_back(std::move(pm));
  }
  if (p->core.threads_size() == 0 || p->core.threads(0).tid() != e.pid())
    return MakeError(ErrorKind::kBadImage, 0, "core-%d.img: main thread missing", e.pid());
  for (const auto& t : p->core.threads())
    if (t.tid() <= 0 || (t.tid() != e.pid() && !pids->insert(t.tid()).second))
      return MakeError(ErrorKind::kBadImage, 0, "core-%d.img: bad tid %d", e.pid(), t.tid());
  uint64_t prev_end = 0;
  for (const auto& v : p->mm.vmas()) {
    if (v.start() >= v.end() || v.start() % kPage || v.end() % kPage || v.start() < prev_end)
      return MakeError(ErrorKind::kBadImage, 0, "mm-%d.img: bad vma %#lx-%#lx", e.pid(),
                       static_cast<unsigned long>(v.start()),
                       static_cast<unsigned long>(v.end()));
    prev_end = v.end();
  }
  for (const auto& pm : p->pagemaps) {
    prev_end = 0;
    for (const auto& r : pm.runs()) {
      if (r.vaddr() % kPage || r.vaddr() < prev_end || r.npages() == 0 ||
          r.npages() > (1ULL << 36))
        return MakeError(ErrorKind::kBadImage, 0, "pagemap-%d.img: bad run at %#lx", e.pid(),
                         static_cast<unsigned long>(r.vaddr()));
      prev_end = r.vaddr() + r.npages() * kPage;
    }
  }
  return Ok();
}

}  // namespace

void ForgetPreloaded() {
  Cache().clear();
  HitNames().clear();
  MissedNames().clear();
  Aheads().clear();
}

void PreloadPageMaps(const std::string& tree_dir, bool lazy) {
  auto names = fs::ListDir(tree_dir);
  if (!names.ok()) return;
  auto& cache = Cache();
  std::vector<std::tuple<pid_t, int, std::string>> fresh;
  for (const auto& n : *names) {
    if (!IsRoundPageMap(n) || cache.count(n)) continue;
    // Written once and whole by the receiver: a file still being written fails to parse (or
    // its checksum differs from the inventory's later) and is simply read again at the load.
    auto data = fs::ReadFile(tree_dir + "/" + n);
    if (!data.ok()) continue;
    Preloaded pre;
    pre.size = data->size();
    pre.crc = images::Crc32c(0, data->data(), data->size());
    auto rd = images::ImageReader::FromBuffer(n, std::move(*data));
    if (!rd.ok()) continue;
    auto got = rd->Next(&pre.map);
    if (!got.ok() || !*got) continue;
    int pid = 0, round = -1, used = 0;
    if (sscanf(n.c_str(), "pagemap-%d-pre%d.img%n", &pid, &round, &used) == 2 &&
        static_cast<size_t>(used) == n.size() && pid > 0 && round >= 0)
      fresh.emplace_back(pid, round, n);
    cache[n] = std::move(pre);
  }
  // The lazy pager's record of the new rounds, in round order per process.
  if (!lazy) return;
  std::sort(fresh.begin(), fresh.end());
  for (const auto& [pid, round, n] : fresh) AddAhead(pid, round, n, cache[n].map);
}

namespace {

// The parts of round page map orig that cut (the final dump's copy of that round, cut down to
// the pages still present: dump/precopy.cc EarlierMaps) lacks, appended to *gone; false if cut
// is not such a copy (a run outside orig's, or at another blob offset).
bool GoneSince(const img::PageMap& orig, const img::PageMap& cut,
               std::vector<std::pair<uint64_t, uint64_t>>* gone) {
  int k = 0;
  for (const auto& o : orig.runs()) {
    uint64_t s = o.vaddr(), e = s + o.npages() * kPage;
    for (; k < cut.runs_size() && cut.runs(k).vaddr() < e; ++k) {
      const auto& c = cut.runs(k);
      uint64_t cs = c.vaddr(), ce = cs + c.npages() * kPage;
      if (cs < s || ce > e || c.blob_off() != o.blob_off() + (cs - o.vaddr())) return false;
      if (cs > s) gone->push_back({s, cs});
      s = ce;
    }
    if (s < e) gone->push_back({s, e});
  }
  return k == cut.runs_size();
}

}  // namespace

std::optional<LazyPager::Prepared> TakeLazyAhead(pid_t image_pid,
                                                 const std::vector<img::PageMap>& pagemaps) {
  auto it = Aheads().find(image_pid);
  if (it == Aheads().end()) return std::nullopt;
  Ahead a = std::move(it->second);
  Aheads().erase(it);
  // After the rounds, the final dump's page maps (one, or two halves of a large delta).
  bool finals = pagemaps.size() > a.maps.size();
  for (size_t i = a.maps.size(); finals && i < pagemaps.size(); ++i)
    finals = pagemaps[i].blob().find("-pre") == std::string::npos;
  if (a.broken || !finals) {
    LOG_DEBUG("pid %d: rounds resolved ahead not used: %zu rounds for %zu page maps%s", image_pid,
              a.maps.size(), pagemaps.size(), a.broken ? " (out of order or bad runs)" : "");
    return std::nullopt;
  }
  // A round the final dump wrote cut down (pages gone since: a heap trimmed, a stack or a
  // mapping released) is the preloaded one minus those pages; gone from every round, since a
  // later round holding such a page is cut the same way.
  std::vector<std::pair<uint64_t, uint64_t>> gone;
  for (size_t i = 0; i < a.maps.size(); ++i) {
    bool ok = pagemaps[i].blob() == a.prepared.blobs[i] && !MissedNames().count(a.maps[i]);
    if (ok && !HitNames().count(a.maps[i])) {
      auto c = Cache().find(a.maps[i]);
      ok = c != Cache().end() && GoneSince(c->second.map, pagemaps[i], &gone);
    }
    if (!ok) {
      LOG_DEBUG("pid %d: rounds resolved ahead not used: %s differs from the preloaded %s",
                image_pid, pagemaps[i].blob().c_str(), a.maps[i].c_str());
      return std::nullopt;
    }
  }
  if (!gone.empty()) {
    std::sort(gone.begin(), gone.end());
    std::vector<std::pair<uint64_t, uint64_t>> kept;
    LazyPager::Outside(a.prepared.covered, gone,
                       [&](uint64_t s, uint64_t e) { kept.push_back({s, e}); });
    a.prepared.covered.swap(kept);
    for (const auto& [s, e] : gone)
      for (const auto& g : LazyPager::Take(a.prepared.pending, s, e))
        a.prepared.bytes -= g.end - g.va;
  }
  return std::move(a.prepared);
}

size_t PreloadedPageMaps() { return Cache().size(); }
size_t PreloadHits() { return g_hits; }

Result<void> LoadImages(RestoreContext& ctx) {
  const auto& set = *ctx.images;
  TRY(ReadOne(set, "pstree.img", &ctx.tree));
  if (ctx.tree.processes_size() == 0)
    return MakeError(ErrorKind::kBadImage, 0, "pstree.img: no processes");
  std::set<pid_t> pids;
  for (const auto& e : ctx.tree.processes()) {
    if (e.pid() <= 0 || !pids.insert(e.pid()).second)
      return MakeError(ErrorKind::kBadImage, 0, "pstree.img: bad or duplicate pid %d", e.pid());
    if (e.zombie()) {
      ctx.stats.zombies++;
      continue;
    }
    auto p = std::make_unique<ProcessRestore>();
    p->entry = &e;
    p->pid = e.pid();
    TRY(LoadProcess(set, p.get(), &pids));
    ctx.stats.threads += 1;
    ctx.by_pid[e.pid()] = p.get();
    ctx.procs.push_back(std::move(p));
  }
  ctx.stats.processes = ctx.tree.processes_size();
  if (set.Has("shmem.img")) {
    ASSIGN_OR_RETURN(images::ImageReader rd, set.OpenImage("shmem.img"));
    for (;;) {
      img::ShmemObject o;
      ASSIGN_OR_RETURN(bool more, rd.Next(&o));
      if (!more) break;
      ctx.shmem.push_back(std::move(o));
    }
  }
  return Ok();
}

Result<void> CheckTree(RestoreContext& ctx) {
  TRY(CheckSessions(ctx.tree));
  std::map<pid_t, const img::ProcessEntry*> by;
  for (const auto& e : ctx.tree.processes()) by[e.pid()] = &e;
  for (const auto& e : ctx.tree.processes()) {
    if (e.ns_pids_size() < 2) continue;
    int parent_levels = 1;
    if (e.pid() != ctx.tree.root_pid()) parent_levels = Levels(*by[e.ppid()]);
    if (e.ns_pids_size() > parent_levels + 1 ||
        (e.ns_pids_size() > parent_levels && e.ns_pids(e.ns_pids_size() - 1) != 1))
      return MakeError(ErrorKind::kUnsupported, 0,
                       "pid %d: its pid namespace was not created inside the tree", e.pid());
  }
  if (ctx.tree.processes(0).pid() != ctx.tree.root_pid())
    return MakeError(ErrorKind::kBadImage, 0, "pstree.img: root is not first");
  // A root that is the init of its own pid namespace (a container): only the pids inside that
  // namespace are restored, the host ones are new.
  if (const auto& re = ctx.tree.processes(0);
      re.ns_pids_size() > 1 && re.ns_pids(re.ns_pids_size() - 1) == 1)
    ctx.inner_level = re.ns_pids_size() - 1;
  return Ok();
}

Result<std::unique_ptr<files::FdRestorer>> LoadFiles(const RestoreContext& ctx) {
  files::FdRestoreOptions fo;
  fo.tcp_close = ctx.opts.tcp_close;
  fo.keep_netlock = ctx.opts.keep_netlock;
  fo.netns_locked = ctx.opts.root_netns_locked;  // meaningful with keep_netlock only
  fo.shell_job = ctx.opts.shell_job;
  fo.inherit_fds = ctx.opts.inherit_fds;
  // A memfd both mapped and open as an fd stays one object: files/ reopens the engine's memfd.
  for (const auto& o : ctx.shmem)
    if (IsMemfd(o))
      if (auto it = ctx.shmem_fds.find(o.id()); it != ctx.shmem_fds.end())
        fo.memfds[o.inode()] = it->second.get();
  return files::FdRestorer::Load(*ctx.images, fo);
}

pid_t PidAtLevel(const RestoreContext& ctx, pid_t pid, int level) {
  for (const auto& e : ctx.tree.processes()) {
    if (e.pid() != pid) continue;
    if (e.ns_pids_size() < 2) return level == 0 ? pid : 0;
    return level < e.ns_pids_size() ? e.ns_pids(level) : 0;
  }
  return level == 0 ? pid : 0;
}

}  // namespace godwit::restore
