// The container's network: a veth pair made through libnl3 (no `ip`), the container end
// ("eth0") inside the container's network namespace with its address and a default route, and an
// optional firewall (nftables inside the container's netns) that admits only the allowed ports.
// The host end is either routed (the gateway address as a point-to-point peer of the container
// address, so many containers, even in one subnet, each get their own /32 host route) or bridged
// (a port of an existing bridge, no address: the container is on the bridge's segment, OpenVZ's
// veth mode; see NetworkSpec).
//
// All functions take the pid of a process inside the target network namespace, so restore code
// can rebuild the network of a restored container the same way.
#pragma once

#include <linux/if_packet.h>
#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"
#include "runtime/spec.h"

namespace godwit::runtime {

// A stable, collision-resistant host-side veth name for a container ("gw" + 12 hex chars,
// <= 15 chars), derived from the state root and the id.
std::string HostVethName(const std::string& root, const std::string& id);

// Creates the veth pair (host_veth <-> eth0 in pid's netns) and configures both ends:
// routed: host GATEWAY peer ADDRESS/32, up; container ADDRESS/PREFIX, up, default via GATEWAY.
// bridged: host end enslaved to net.bridge, up, no address; container ADDRESS/PREFIX, up, default
// via GATEWAY only if one is given. lo up in both.
// Fails with kExists if host_veth exists or the address is already used on the host, kNotFound
// if the bridge does not exist (kBadConfig: not a bridge). On failure nothing is left.
Result<void> SetupNetwork(pid_t pid, const NetworkSpec& net, const std::string& host_veth);

// Deletes the host end (which destroys the pair). A missing link is success.
Result<void> TeardownNetwork(const std::string& host_veth);

// For a container whose processes are gone: its network namespace is being destroyed and the
// kernel removes the pair by itself, while an explicit RTM_DELLINK takes 15-30 ms (unregister
// waits for RCU). Waits up to wait_ms for that (WaitHostEnd), then deletes explicitly (something
// else may hold the namespace).
//
// How long the kernel takes: the namespace dies once its last reference goes, which need not be
// the container's last process. Killed right after a checkpoint, a container's namespace lives
// on 5-15 ms (measured here; one never checkpointed dies with its last process): what the
// checkpoint opened in it, its netlink sockets among it, is freed after an RCU grace period.
// Then cleanup_net() unregisters the pair (more grace periods, the rtnl lock): 1-30 ms in all.
Result<void> TeardownNetworkOfDeadNetns(const std::string& host_veth, int wait_ms = 500);

// A veth's host end, as seen from the caller's network namespace: gone (no such link); dying
// (its peer's namespace is dead: cleanup_net() has unhashed the namespace's id, which the link
// then reports as "not assigned", and removes the pair next); alive (anything else: the peer's
// namespace lives, or has lost its last reference only just).
enum class HostEnd { kGone, kDying, kAlive };
Result<HostEnd> HostEndState(const std::string& host_veth);

// Waits up to wait_ms until host_veth is gone, woken by the kernel's link and namespace-id
// notifications (and every 20 ms regardless); returns the state it saw last. Deletes nothing.
Result<HostEnd> WaitHostEnd(const std::string& host_veth, int wait_ms);

// Brings "lo" up in pid's network namespace (without any other config).
Result<void> LoopbackUp(pid_t pid);

// Loads the allowed-ports firewall (table inet godwit) into pid's network namespace by running
// `nft -f -` there. Inbound: established/related, loopback, ICMP echo and the listed ports.
Result<void> ApplyFirewall(pid_t pid, const std::vector<NetworkSpec::Port>& ports);

// The nftables ruleset ApplyFirewall loads (exposed for dump/restore and tests).
std::string FirewallRuleset(const std::vector<NetworkSpec::Port>& ports);

// Ok if `name` is a bridge in the caller's network namespace; kNotFound if there is no such
// link, kBadConfig if it is not a bridge.
Result<void> CheckBridge(const std::string& name);

// Announces that the addresses of `ifname` in pid's netns are at that interface now: for each
// IPv4 address a gratuitous ARP request (sender = target = the address, from the interface's MAC,
// to the broadcast address); for each IPv6 address (link-local included, none still tentative)
// an unsolicited neighbour advertisement (RFC 4861 7.2.6: Override set, the MAC as the target
// link-layer option, to all-nodes ff02::1, hop limit 255). IPv4 first. For a bridged container
// that appears on another port of the segment (restored on another host): the bridges learn
// where its MAC is now, and the neighbours refresh their entries, so their packets reach it
// without waiting for the bridges' ageing, the peers' ARP or their neighbour unreachability
// detection. Prepared ahead (socket in pid's netns, frames built) so that sending costs one
// sendto per frame: a migration's destination prepares it before the commit.
class Announcement {
 public:
  static Result<Announcement> Prepare(pid_t pid, const std::string& ifname);
  // Each frame `count` times, in order.
  Result<void> Send(int count = 1) const;
  // The first frame only (the first IPv4 address's ARP, else the first IPv6 advertisement),
  // `count` times: enough for the segment's bridges to learn the port, which is what a
  // migration's commit waits for; then the others (SendRest) once the blackout is over.
  Result<void> SendFirst(int count = 1) const { return SendRange(0, 1, count); }
  Result<void> SendRest(int count = 1) const { return SendRange(1, frames_.size(), count); }
  // The addresses announced, in the order sent ("198.18.0.5", "fe80::...").
  std::vector<std::string> addresses() const;

 private:
  Result<void> SendRange(size_t from, size_t to, int count) const;
  struct Frame {
    std::string addr;            // the address it announces
    std::vector<uint8_t> bytes;  // after the Ethernet header (the kernel adds it)
    sockaddr_ll to{};
  };
  UniqueFd fd_;
  std::vector<Frame> frames_;  // IPv4 addresses' ARPs first
  std::string what_;
};

// Prepare and Send(count): every address of ifname announced now. Returns the announcement.
Result<Announcement> AnnounceAddresses(pid_t pid, const std::string& ifname, int count = 1);

// True if a link with that name exists in the caller's network namespace.
bool LinkExists(const std::string& name);

// True if the IPv4 address is a local or peer address of any link in the caller's netns (other
// than except_links: a dying veth's, see HostEnd).
Result<bool> AddressInUse(const std::string& addr,
                          const std::vector<std::string>& except_links = {});

}  // namespace godwit::runtime
