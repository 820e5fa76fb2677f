// The Internet checksum (RFC 1071): the data's 16-bit big-endian words summed (an odd last byte
// padded with zero), the carries folded back, the result complemented. One implementation for
// the frames a migration replays (migrate/packet_hold.cc), the segments a restore makes up
// (files/kind_inet.cc) and the probe's ICMP echoes (cli/cmd_probe.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace godwit::inet {

// Adds the words of [p, p + n) to sum (pseudo headers are summed first, the same way).
inline uint32_t SumWords(uint32_t sum, const void* p, size_t n) {
  const uint8_t* b = static_cast<const uint8_t*>(p);
  for (; n > 1; b += 2, n -= 2) sum += (uint32_t{b[0]} << 8) | b[1];
  if (n) sum += uint32_t{b[0]} << 8;
  return sum;
}

// The checksum of a sum, as a host-order value of the big-endian field.
inline uint16_t Fold(uint32_t sum) {
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  return static_cast<uint16_t>(~sum);
}

inline uint16_t Checksum(const void* p, size_t n) { return Fold(SumWords(0, p, n)); }

}  // namespace godwit::inet
