#include "common/netns.h"

#include <fcntl.h>
#include <nftables/libnftables.h>
#include <unistd.h>

#include <cstdlib>
#include <memory>
#include <mutex>
#include <optional>

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

struct NftCtxDel {
  void operator()(nft_ctx* c) const { nft_ctx_free(c); }
};

// libnftables keeps process-wide state (its one-time init, the xtables glue) that contexts share
// without a lock: one call at a time in this process.
std::mutex nft_mu;

// A context made on the calling thread, in its namespace: the context's netlink socket belongs
// to it (libnftables opens it at creation). Called with nft_mu held.
Result<nft_ctx*> NewCtx() {
  std::unique_ptr<nft_ctx, NftCtxDel> ctx(nft_ctx_new(NFT_CTX_DEFAULT));
  if (!ctx) return MakeError(ErrorKind::kGeneric, ENOMEM, "nft_ctx_new");
  if (nft_ctx_buffer_output(ctx.get()) != 0 || nft_ctx_buffer_error(ctx.get()) != 0)
    return MakeError(ErrorKind::kGeneric, 0, "nft: cannot buffer its output");
  return ctx.release();
}

// Called with nft_mu held.
Result<std::string> RunCtx(nft_ctx* ctx, const std::string& script, int netns_fd) {
  int rc = nft_run_cmd_from_buffer(ctx, script.c_str());
  if (rc != 0) {
    const char* err = nft_ctx_get_error_buffer(ctx);
    return MakeError(ErrorKind::kGeneric, 0, "nft failed in netns fd %d: %s", netns_fd,
                     fs::Trim(err ? err : "").c_str());
  }
  const char* out = nft_ctx_get_output_buffer(ctx);
  return std::string(out ? out : "");
}

Result<std::string> NftHere(const std::string& script, int netns_fd) {
  std::lock_guard<std::mutex> lock(nft_mu);
  ASSIGN_OR_RETURN(nft_ctx * raw, NewCtx());
  std::unique_ptr<nft_ctx, NftCtxDel> ctx(raw);
  return RunCtx(ctx.get(), script, netns_fd);
}

}  // namespace

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
  nft_ctx_free(ctx_);
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
