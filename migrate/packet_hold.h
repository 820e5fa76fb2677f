// Packets held, not dropped, across the switchover.
//
// While the container is frozen its TCP connections are locked (nftables drops their packets in
// the container's netns, so its kernel never answers for a socket that is being dumped). A client
// whose packets are dropped waits for its retransmission timer (>= 200 ms, doubling): that, not
// the frozen time, is what makes CRIU's migrations look long to a client (406 ms at 64 MiB here).
//
// The source opens a packet socket on the host end of the container's veth before the freeze and
// keeps every frame the host sends into the container (PACKET_OUTGOING there) in the socket's
// receive queue: the kernel holds them for us, no thread, no copy until the end. Once the
// destination runs the container, the source drains the queue and ships the frames; the
// destination transmits them on the host end of the restored veth, so they reach the restored
// container exactly as they would have from the wire (same MACs, same IP packets). Frames that
// had reached the socket before the lock are in the image too: TCP drops such duplicates.
// No netfilter queue, no library: an AF_PACKET socket per end (this kernel has neither nft
// `queue` nor sch_plug).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "common/result.h"
#include "common/unique_fd.h"

namespace godwit::migrate {

class PacketHold {
 public:
  // Starts holding frames sent by the host into the veth whose host end is `host_veth` (in the
  // caller's netns). rcvbuf: how much the kernel may hold (frames beyond it are dropped, as the
  // lock would have).
  static Result<PacketHold> Start(const std::string& host_veth, int rcvbuf = 16 << 20);
  // Takes every frame held so far (non-blocking), appending them length-prefixed (u32 LE) to
  // *out. Returns how many.
  Result<int> Drain(std::string* out);
  uint64_t dropped() const { return dropped_; }

 private:
  UniqueFd fd_;
  uint64_t dropped_ = 0;
};

// Completes the TCP/UDP checksum of one Ethernet frame (IPv4 or IPv6) in place; other frames are
// left as they are. Drain does it to every frame it holds (packet_hold.cc says why).
void FixChecksums(char* frame, size_t len);

// Silences a held container's network namespace (the namespace of `pid`): every packet it would
// send (IPv4, IPv6, ARP) is dropped until Unsilence. A frozen source still has a live kernel
// stack that answers ARP and neighbour solicitations for the address the destination now owns
// (moving the segment's bridges back to the old port) and may answer a client's segment that its
// lock does not cover; while the destination restores and after, the source must say nothing.
// The table is named after the migrating process so that rollback removes exactly it.
Result<void> Silence(pid_t pid);
Result<void> Unsilence(pid_t pid);

// Makes a held container's network namespace (the namespace of `pid`) deaf: every packet that
// comes in from outside it (not over its loopback) is dropped, ARP included. The source does it
// right after its PacketHold starts: from then on the frames for the container exist only in the
// hold, replayed once at the destination. Without it a frame that reached the container between
// the hold's start and the final dump of its socket was delivered twice (from the image and from
// the replay): harmless for TCP, a duplicate ICMP reply, and for UDP a duplicate datagram whose
// replay burst overflowed the server's receive buffer (92 datagrams lost in one migration).
// A rollback undoes it before the held frames go to the resumed container.
Result<void> Deafen(pid_t pid);
Result<void> Undeafen(pid_t pid);

// Takes a silenced container off the segment before it is deleted: removes its veth (both ends)
// while its namespace lives, and with it its silence. Deleting a container kills it first, and a
// dying namespace loses its nftables hooks (nf_tables' pre_exit) a grace period before its links
// (10-60 ms here, longer under load): meanwhile its kernel speaks and answers unfiltered (an ARP
// or neighbour probe, an MLD report), the segment's bridges learn its MAC at this port again, and
// the clients' next segments reach a stack without their sockets, which answers them with a RST.
// No link: nothing to do.
Result<void> Unplug(const std::string& host_veth);

// Transmits length-prefixed frames (as Drain made them) on the host end of a container's veth,
// i.e. into the container. Open it before it is needed and close it after the switch: closing a
// packet socket waits for an RCU grace period (synchronize_net: 10-60 ms here), as does closing
// a PacketHold, so neither may be closed inside the blackout.
class FrameInjector {
 public:
  static Result<FrameInjector> Open(const std::string& host_veth);
  // Returns how many were sent.
  Result<int> Send(const std::string& frames);

 private:
  UniqueFd fd_;
  int ifindex_ = 0;
  std::string veth_;
};

// FrameInjector::Open + Send, for a path where the close's grace period does not matter.
Result<int> InjectFrames(const std::string& host_veth, const std::string& frames);

}  // namespace godwit::migrate
