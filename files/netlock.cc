// The network lock: while a tree's TCP connections are frozen, dumped, and not yet live again
// after restore, their packets are dropped by nftables so the peer never gets a RST from a
// kernel that has no socket for them (it retransmits instead). One table per dump
// ("godwit_lock_<dumper pid>_<time>_<n>"), holding rules on exactly the connections' 4-tuples,
// in the net namespace of the tree. Resume (a failed dump, --leave-running) deletes it; after a dump
// that killed the tree, the restore's Finalize deletes it (files-netlock.img names it).
#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>

#include "common/fs.h"
#include "common/log.h"
#include "files/kind.h"

namespace godwit::files {

Result<void> NftRunIn(int netns_fd, const std::string& script) {
  int in[2], err[2];
  if (pipe2(in, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) return Errno("pipe");
  pid_t pid = fork();
  if (pid < 0) return Errno("fork");
  if (pid == 0) {
    if (netns_fd >= 0 && setns(netns_fd, CLONE_NEWNET) < 0) _exit(126);
    dup2(in[0], 0);
    dup2(err[1], 1);
    dup2(err[1], 2);
    execlp("nft", "nft", "-f", "-", static_cast<char*>(nullptr));
    _exit(127);
  }
  close(in[0]);
  close(err[1]);
  auto w = fs::WriteAll(in[1], script.data(), script.size());
  close(in[1]);
  std::string out;
  char buf[1024];
  ssize_t n;
  while ((n = read(err[0], buf, sizeof(buf))) > 0) out.append(buf, n);
  close(err[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  if (!w.ok()) return w;
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return MakeError(ErrorKind::kGeneric, 0, "nft failed (status %#x): %s", st, fs::Trim(out).c_str());
  return Ok();
}

Result<void> NftRun(pid_t netns_pid, const std::string& script) {
  UniqueFd ns;
  if (netns_pid) {
    ns.reset(open(StrFormat("/proc/%d/ns/net", netns_pid).c_str(), O_RDONLY | O_CLOEXEC));
    if (!ns) return Errno("open net namespace of pid %d", netns_pid);
  }
  return NftRunIn(ns ? ns.get() : -1, script);
}

Result<void> NetUnlockIn(int netns_fd, const std::string& table) {
  // One nft run (each costs ~10-20 ms here). The table is absent when restoring into another
  // namespace that was not locked: nothing to do there.
  auto r = NftRunIn(netns_fd, StrFormat("delete table inet %s\n", table.c_str()));
  if (!r.ok() && r.error().message().find("No such file or directory") != std::string::npos)
    return Ok();
  return r;
}

Result<void> NetUnlock(const std::string& table) { return NetUnlockIn(-1, table); }

namespace {
std::string Ip(const sockaddr_storage& ss) {
  char buf[INET6_ADDRSTRLEN] = "";
  if (ss.ss_family == AF_INET)
    inet_ntop(AF_INET, &reinterpret_cast<const sockaddr_in*>(&ss)->sin_addr, buf, sizeof(buf));
  else
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(&ss)->sin6_addr, buf, sizeof(buf));
  return buf;
}
int Port(const sockaddr_storage& ss) { return ntohs(reinterpret_cast<const sockaddr_in*>(&ss)->sin_port); }
}  // namespace

std::string LockTable(const std::string& table) {
  return StrFormat("add table inet %s\n"
                   "add chain inet %s in { type filter hook input priority -300; policy accept; }\n"
                   "add chain inet %s out { type filter hook output priority -300; policy accept; }\n",
                   table.c_str(), table.c_str(), table.c_str());
}

std::string LockRules(const std::string& table, const sockaddr_storage& src,
                      const sockaddr_storage& dst) {
  const char* ipk = src.ss_family == AF_INET ? "ip" : "ip6";
  std::string sip = Ip(src), dip = Ip(dst);
  // v4-mapped addresses on a v6 socket travel as IPv4.
  if (src.ss_family == AF_INET6 && sip.rfind("::ffff:", 0) == 0 && dip.rfind("::ffff:", 0) == 0) {
    ipk = "ip";
    sip = sip.substr(7);
    dip = dip.substr(7);
  }
  return StrFormat("add rule inet %s in %s saddr %s %s daddr %s tcp sport %d tcp dport %d drop\n"
                   "add rule inet %s out %s saddr %s %s daddr %s tcp sport %d tcp dport %d drop\n",
                   table.c_str(), ipk, dip.c_str(), ipk, sip.c_str(), Port(dst), Port(src),
                   table.c_str(), ipk, sip.c_str(), ipk, dip.c_str(), Port(src), Port(dst));
}

Result<void> FdDumpContext::LockProcessTcp(pid_t pid) {
  if (!tcp_locked_pids.insert(pid).second) return Ok();
  struct stat nsst;
  if (stat(StrFormat("/proc/%d/ns/net", pid).c_str(), &nsst) < 0) return Errno("stat netns");
  if (netlock_table.empty()) {
    // Unique per dump, also for several dumps by one process in one second (a daemon): the
    // table also goes into the host's namespace (LockOutside), which all containers share.
    static std::atomic<int> seq{0};
    netlock_table = StrFormat("godwit_lock_%d_%ld_%d", getpid(), static_cast<long>(time(nullptr)),
                              seq++);
  }
  UniqueFd pidfd(static_cast<int>(syscall(SYS_pidfd_open, pid, 0)));
  if (!pidfd) return Errno("pidfd_open %d", pid);
  std::string rules;
  for (const auto& [fd, link] : links) {
    if (link.rfind("socket:", 0) != 0) continue;
    UniqueFd s(static_cast<int>(syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
    if (!s) continue;
    struct stat st;
    if (fstat(s.get(), &st) < 0 || !S_ISSOCK(st.st_mode)) continue;
    int dom = 0, proto = 0;
    socklen_t l = sizeof(int);
    getsockopt(s.get(), SOL_SOCKET, SO_DOMAIN, &dom, &l);
    l = sizeof(int);
    getsockopt(s.get(), SOL_SOCKET, SO_PROTOCOL, &proto, &l);
    if ((dom != AF_INET && dom != AF_INET6) || proto != IPPROTO_TCP) continue;
    struct tcp_info ti {};
    l = sizeof(ti);
    if (getsockopt(s.get(), SOL_TCP, TCP_INFO, &ti, &l) < 0) continue;
    if (ti.tcpi_state == TCP_LISTEN || ti.tcpi_state == TCP_CLOSE) continue;
    sockaddr_storage src {}, dst {};
    socklen_t sl = sizeof(src), dl = sizeof(dst);
    if (getsockname(s.get(), reinterpret_cast<sockaddr*>(&src), &sl) < 0 ||
        getpeername(s.get(), reinterpret_cast<sockaddr*>(&dst), &dl) < 0)
      continue;
    rules += LockRules(netlock_table, src, dst);
  }
  if (rules.empty()) return Ok();
  std::string script;
  if (netlock_netns.insert(nsst.st_ino).second) {
    script += LockTable(netlock_table);
    std::string table = netlock_table;
    OnResume([pid, table] {
      auto r = NftRun(pid, StrFormat("delete table inet %s\n", table.c_str()));
      if (!r.ok()) LOG_WARN("network unlock: %s", r.error().to_string().c_str());
    });
  }
  script += rules;
  TRY_CTX(NftRun(pid, script), "network lock of pid %d", pid);
  return Ok();
}

}  // namespace godwit::files
