// CRC-32C (Castagnoli), the checksum of every image file and blob chunk. From 256 bytes on CPUs
// with AVX-512 and VPCLMULQDQ: carry-less multiplication folding 256 bytes per round (~2x the
// crc32 instruction here); else the SSE4.2 crc32 instruction over three interleaved streams (the
// instruction has a latency of 3 cycles and a throughput of 1, so one stream would run at a
// third of the possible speed); a table fallback for CPUs without SSE4.2. Checksumming must not
// dominate a dump or a restore (it was 6-9% of their CPU at 27 GB/s).
#pragma once

#include <cstddef>
#include <cstdint>

namespace godwit::images {

// Extends crc (0 for a fresh checksum) over data. Crc32c(Crc32c(0, a), b) == Crc32c(0, a + b).
uint32_t Crc32c(uint32_t crc, const void* data, size_t len);
// The checksum of a + b from crc(a), crc(b) and len(b), without touching the bytes
// (O(log len)): lets a writer reuse chunk checksums for the whole-file checksum.
uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
// The portable table implementation (for tests and the benchmark).
uint32_t Crc32cSoftware(uint32_t crc, const void* data, size_t len);
bool Crc32cHardware();

}  // namespace godwit::images
