#include "common/netns.h"

#include <dlfcn.h>
#include <fcntl.h>
#include <nftables/libnftables.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>
#include <string_view>
#include <type_traits>

#include "common/fs.h"
#include "common/log.h"

namespace godwit::netns {
namespace {

const char* NsName(int nstype) {
  switch (nstype) {
    case CLONE_NEWNET:
      return "net";
    case CLONE_NEWUTS:
      return "uts";
    case CLONE_NEWIPC:
      return "ipc";
    default:
      return nullptr;
  }
}

static_assert(std::is_same_v<decltype(NftApi::ctx_new), decltype(&nft_ctx_new)>);
static_assert(std::is_same_v<decltype(NftApi::ctx_free), decltype(&nft_ctx_free)>);
static_assert(std::is_same_v<decltype(NftApi::ctx_buffer_output), decltype(&nft_ctx_buffer_output)>);
static_assert(std::is_same_v<decltype(NftApi::ctx_buffer_error), decltype(&nft_ctx_buffer_error)>);
static_assert(std::is_same_v<decltype(NftApi::ctx_get_output_buffer),
                             decltype(&nft_ctx_get_output_buffer)>);
static_assert(std::is_same_v<decltype(NftApi::ctx_get_error_buffer),
                             decltype(&nft_ctx_get_error_buffer)>);
static_assert(std::is_same_v<decltype(NftApi::run_cmd_from_buffer),
                             decltype(&nft_run_cmd_from_buffer)>);

// The one libnftables this process loads (LoadNft's, kept for good).
Result<const NftApi*> Nft() {
  static Result<NftApi> api = LoadNft(kNftLibrary);
  if (!api.ok()) return api.error();
  return &*api;
}

struct NftCtxDel {
  const NftApi* api;
  void operator()(nft_ctx* c) const { api->ctx_free(c); }
};

// libnftables keeps process-wide state (its one-time init, the xtables glue) that contexts share
// without a lock: one call at a time in this process.
std::mutex nft_mu;

// A context made on the calling thread, in its namespace: the context's netlink socket belongs
// to it (libnftables opens it at creation). Called with nft_mu held.
Result<nft_ctx*> NewCtx() {
  ASSIGN_OR_RETURN(const NftApi* api, Nft());
  std::unique_ptr<nft_ctx, NftCtxDel> ctx(api->ctx_new(NFT_CTX_DEFAULT), NftCtxDel{api});
  if (!ctx) return MakeError(ErrorKind::kGeneric, ENOMEM, "nft_ctx_new");
  if (api->ctx_buffer_output(ctx.get()) != 0 || api->ctx_buffer_error(ctx.get()) != 0)
    return MakeError(ErrorKind::kGeneric, 0, "nft: cannot buffer its output");
  return ctx.release();
}

// Called with nft_mu held, on a context NewCtx made (the library is loaded).
Result<std::string> RunCtx(nft_ctx* ctx, const std::string& script, int netns_fd) {
  const NftApi* api = *Nft();
  int rc = api->run_cmd_from_buffer(ctx, script.c_str());
  if (rc != 0) {
    const char* err = api->ctx_get_error_buffer(ctx);
    return MakeError(ErrorKind::kGeneric, 0, "nft failed in netns fd %d: %s", netns_fd,
                     fs::Trim(err ? err : "").c_str());
  }
  const char* out = api->ctx_get_output_buffer(ctx);
  return std::string(out ? out : "");
}

Result<std::string> NftHere(const std::string& script, int netns_fd) {
  std::lock_guard<std::mutex> lock(nft_mu);
  ASSIGN_OR_RETURN(nft_ctx * raw, NewCtx());
  std::unique_ptr<nft_ctx, NftCtxDel> ctx(raw, NftCtxDel{*Nft()});
  return RunCtx(ctx.get(), script, netns_fd);
}

}  // namespace

Result<NftApi> LoadNft(const char* soname) {
  // RTLD_NOW as the binary's own -z now: every symbol bound here, none at a first call later
  // (a lock taken while a tree is frozen). RTLD_LOCAL: nothing of it leaks into our lookups.
  void* h = dlopen(soname, RTLD_NOW | RTLD_LOCAL);
  if (!h) {
    const char* why = dlerror();
    return MakeError(ErrorKind::kNotFound, 0,
                     "cannot load %s (nftables' library, Debian package libnftables1): %s",
                     soname, why ? why : "unknown reason");
  }
  NftApi api;
  bool missing = false;
  std::string names;
  auto sym = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(h, name));
    if (!fn) {
      missing = true;
      names += names.empty() ? name : StrFormat(", %s", name);
    }
  };
  sym(api.ctx_new, "nft_ctx_new");
  sym(api.ctx_free, "nft_ctx_free");
  sym(api.ctx_buffer_output, "nft_ctx_buffer_output");
  sym(api.ctx_buffer_error, "nft_ctx_buffer_error");
  sym(api.ctx_get_output_buffer, "nft_ctx_get_output_buffer");
  sym(api.ctx_get_error_buffer, "nft_ctx_get_error_buffer");
  sym(api.run_cmd_from_buffer, "nft_run_cmd_from_buffer");
  if (missing) {
    dlclose(h);
    return MakeError(ErrorKind::kUnsupported, 0, "%s lacks %s: not the libnftables 1 ABI", soname,
                     names.c_str());
  }
  return api;
}

Result<void> PreloadNft() {
  std::lock_guard<std::mutex> lock(nft_mu);
  TRY(Nft());
  return Ok();
}

Result<bool> HasTcpSockets(pid_t pid) {
  // /proc/PID/net/sockstat{,6}: the namespace's count of TCP sockets in the hash tables
  // ("TCP: inuse N", "TCP6: inuse N"), kept per namespace, so reading it costs nothing.
  // (/proc/PID/net/tcp walks every bucket of the machine's established hash table instead:
  // ~4 ms per file here.)
  for (std::string_view f : {"sockstat", "sockstat6"}) {
    const bool v6 = f == "sockstat6";
    std::string path = StrFormat("/proc/%d/net/%s", pid, std::string(f).c_str());
    auto text = fs::ReadFile(path);
    if (!text.ok()) {
      if (v6 && text.error().sys_errno() == ENOENT) continue;  // no IPv6
      return std::move(text.error());
    }
    const std::string key = v6 ? "TCP6: inuse " : "TCP: inuse ";
    bool found = false;
    for (const std::string& line : fs::Split(*text, '\n')) {
      if (line.rfind(key, 0) != 0) continue;
      found = true;
      if (atol(line.c_str() + key.size()) > 0) return true;
    }
    if (!found)
      return MakeError(ErrorKind::kGeneric, 0, "%s: no \"%s\" line", path.c_str(),
                       fs::Trim(key).c_str());
  }
  return false;
}

void PreloadNftIfTcp(pid_t pid) {
  auto tcp = HasTcpSockets(pid);
  if (tcp.ok() && !*tcp) return;
  if (auto r = PreloadNft(); !r.ok())
    LOG_DEBUG("pid %d: libnftables not loaded ahead: %s", pid, r.error().to_string().c_str());
}

Result<UniqueFd> OpenNamespace(pid_t pid, const char* name) {
  std::string path = pid == 0 ? StrFormat("/proc/thread-self/ns/%s", name)
                              : StrFormat("/proc/%d/ns/%s", pid, name);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return MakeError(errno == ENOENT || errno == ESRCH ? ErrorKind::kNotFound : ErrorKind::kGeneric,
                     errno, "open %s", path.c_str());
  return UniqueFd(fd);
}

Result<UniqueFd> Open(pid_t pid) { return OpenNamespace(pid, "net"); }

Result<std::string> NftRunIn(int netns_fd, const std::string& script) {
  if (netns_fd < 0) return NftHere(script, netns_fd);
  ASSIGN_OR_RETURN(ScopedNetns in, ScopedNetns::Enter(netns_fd));
  auto r = NftHere(script, netns_fd);
  TRY(in.Leave());
  return r;
}

Result<std::string> NftRun(pid_t netns_pid, const std::string& script) {
  if (netns_pid == 0) return NftRunIn(-1, script);
  ASSIGN_OR_RETURN(UniqueFd ns, Open(netns_pid));
  return NftRunIn(ns.get(), script);
}

Result<NftContext> NftContext::Open(int netns_fd) {
  NftContext c;
  std::optional<ScopedNetns> in;
  if (netns_fd >= 0) {
    c.ns_.reset(fcntl(netns_fd, F_DUPFD_CLOEXEC, 0));
    if (!c.ns_) return Errno("nft context: dup netns fd %d", netns_fd);
    ASSIGN_OR_RETURN(ScopedNetns s, ScopedNetns::Enter(c.ns_.get()));
    in.emplace(std::move(s));
  }
  {
    std::lock_guard<std::mutex> lock(nft_mu);
    ASSIGN_OR_RETURN(c.ctx_, NewCtx());
  }
  if (in) TRY(in->Leave());
  return c;
}

NftContext::NftContext(NftContext&& o) noexcept : ns_(std::move(o.ns_)), ctx_(o.ctx_) {
  o.ctx_ = nullptr;
}

NftContext& NftContext::operator=(NftContext&& o) noexcept {
  if (this != &o) {
    Free();
    ns_ = std::move(o.ns_);
    ctx_ = o.ctx_;
    o.ctx_ = nullptr;
  }
  return *this;
}

NftContext::~NftContext() { Free(); }

void NftContext::Free() {
  if (!ctx_) return;
  std::lock_guard<std::mutex> lock(nft_mu);
  (*Nft())->ctx_free(ctx_);  // a context was made: the library is loaded
  ctx_ = nullptr;
}

Result<std::string> NftContext::Run(const std::string& script) {
  if (!ctx_) return MakeError(ErrorKind::kGeneric, 0, "nft context: used after a move");
  // The socket is the namespace's already; the thread moves too, as libnftables may open
  // others (its cache of interface names, say) where the thread is.
  std::optional<ScopedNetns> in;
  if (ns_) {
    ASSIGN_OR_RETURN(ScopedNetns s, ScopedNetns::Enter(ns_.get()));
    in.emplace(std::move(s));
  }
  Result<std::string> r = [&] {
    std::lock_guard<std::mutex> lock(nft_mu);
    return RunCtx(ctx_, script, ns_ ? ns_.get() : -1);
  }();
  if (in) TRY(in->Leave());
  return r;
}

Result<ScopedNetns> ScopedNetns::Enter(int ns_fd, int nstype) {
  const char* name = NsName(nstype);
  if (!name) return MakeError(ErrorKind::kUsage, EINVAL, "ScopedNetns: namespace type %#x", nstype);
  ASSIGN_OR_RETURN(UniqueFd own, OpenNamespace(0, name));
  if (setns(ns_fd, nstype) < 0) return Errno("setns(fd %d, %s)", ns_fd, name);
  return ScopedNetns(std::move(own), nstype);
}

Result<void> ScopedNetns::Leave() {
  if (!own_) return Ok();
  if (setns(own_.get(), nstype_) < 0)
    return Errno("setns back to our own %s namespace (this thread stays in the other one)",
                 NsName(nstype_));
  own_.reset();
  return Ok();
}

ScopedNetns::~ScopedNetns() {
  auto r = Leave();
  if (!r.ok()) {
    LOG_ERROR("%s", r.error().to_string().c_str());
    abort();
  }
}

Result<void> RunHere(int ns_fd, int nstype, const std::function<Result<void>()>& fn) {
  if (ns_fd < 0) return fn();
  ASSIGN_OR_RETURN(ScopedNetns in, ScopedNetns::Enter(ns_fd, nstype));
  Result<void> r = fn();
  TRY(in.Leave());
  return r;
}

}  // namespace godwit::netns
