// Network namespace: links, addresses, routes, policy rules, permanent neighbours, the nftables
// ruleset and the sysctls a container may change, read and rebuilt through rtnetlink (libnl3).
// Image: "netns.img" (img::NetNs).
//
// Netlink sockets are created on a thread that joined the target netns (a socket stays in the
// netns it was created in), then used from the caller's thread; the caller's netns is the "host"
// side where the other end of each veth lives. nft runs by fork + setns + exec.
//
// Supported link kinds: loopback, veth (the other end in the same netns or in the caller's),
// dummy, bridge, and the fallback tunnels the kernel makes in every netns (attributes only).
// Any other kind fails the dump (kUnsupported) naming the link.
//
// Restore order (each step needs the previous): sysctls that are not per interface -> links
// (veth pairs made in one request, the container end created straight into the netns) ->
// per-interface sysctls -> masters -> addresses (IPv6 with NODAD: no tentative period) -> links
// up -> routes without gateway, then with gateway -> rules -> neighbours -> nft ruleset.
// On failure, host ends created so far are deleted; the target netns is the caller's to drop.
#pragma once

#include <functional>
#include <string>

#include "common/result.h"
#include "images/image.h"
#include "proto/netns.pb.h"

namespace godwit::container::net {

inline constexpr char kImage[] = "netns.img";

// Reads the state of netns_fd; veth host ends are looked up in the calling thread's netns.
Result<img::NetNs> Collect(int netns_fd);
// Rebuilds `ns` into netns_fd (normally a fresh netns); host ends go into the caller's netns.
// before_links (may be empty) runs after the namespace's own sysctls, right before the links are
// made: what the links need first (the previous container's veth gone) is waited for there.
Result<void> Apply(const img::NetNs& ns, int netns_fd,
                   const std::function<Result<void>()>& before_links = nullptr);

Result<void> Dump(int netns_fd, images::Sink& sink);
Result<void> Restore(const images::ImageSet& images, int netns_fd);

// Deletes link `name` in netns_fd (-1: the caller's netns); deleting one end of a veth deletes
// both. kNotFound if there is no such link.
Result<void> DeleteLink(int netns_fd, const std::string& name);

}  // namespace godwit::container::net
