#include "images/crc32c.h"

#include <cpuid.h>
#include <nmmintrin.h>

#include <cstring>

namespace godwit::images {
namespace {

constexpr uint32_t kPoly = 0x82f63b78;  // reflected Castagnoli polynomial

struct Tables {
  uint32_t byte[8][256];  // slicing-by-8 for the software path
  // shift[k][v]: the raw CRC register v << 8k advanced over kStride zero bytes. Combines the
  // three interleaved streams of the hardware path.
  uint32_t shift[4][256];
  uint32_t x2n[64];  // x^(2^n) mod P, for Crc32cCombine
};

constexpr size_t kStride = 4096;  // bytes per stream per round of the hardware path

uint32_t MultModP(uint32_t a, uint32_t b) {
  // a * b mod P in the reflected domain (bit 31 is x^0), as in zlib's crc32_combine.
  uint32_t m = 1u << 31, p = 0;
  for (;;) {
    if (a & m) {
      p ^= b;
      if ((a & (m - 1)) == 0) break;
    }
    m >>= 1;
    b = b & 1 ? (b >> 1) ^ kPoly : b >> 1;
  }
  return p;
}

// Raw register update (no pre/post inversion), one byte at a time.
uint32_t RawSlow(uint32_t r, const uint8_t* p, size_t n, const Tables& t) {
  while (n--) r = t.byte[0][(r ^ *p++) & 0xff] ^ (r >> 8);
  return r;
}

Tables MakeTables() {
  Tables t;
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ kPoly : c >> 1;
    t.byte[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; i++)
    for (int s = 1; s < 8; s++)
      t.byte[s][i] = (t.byte[s - 1][i] >> 8) ^ t.byte[0][t.byte[s - 1][i] & 0xff];
  // x^1 in the reflected domain is 1 << 30; squaring gives x^(2^n).
  uint32_t p = 1u << 30;
  for (int n = 0; n < 64; n++) {
    t.x2n[n] = p;
    p = MultModP(p, p);
  }
  // Advancing a raw register over n zero bytes multiplies it by x^(8n): linear, so a table per
  // byte position of the register is enough.
  uint32_t basis[32];
  static uint8_t zeros[kStride];
  for (int b = 0; b < 32; b++) basis[b] = RawSlow(1u << b, zeros, kStride, t);
  for (int k = 0; k < 4; k++)
    for (uint32_t v = 0; v < 256; v++) {
      uint32_t r = 0;
      for (int b = 0; b < 8; b++)
        if (v & (1u << b)) r ^= basis[8 * k + b];
      t.shift[k][v] = r;
    }
  return t;
}

const Tables& T() {
  static const Tables t = MakeTables();
  return t;
}

uint32_t Shift(uint32_t r, const Tables& t) {
  return t.shift[0][r & 0xff] ^ t.shift[1][(r >> 8) & 0xff] ^ t.shift[2][(r >> 16) & 0xff] ^
         t.shift[3][r >> 24];
}

uint32_t RawSoftware(uint32_t r, const uint8_t* p, size_t n) {
  const Tables& t = T();
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    v ^= r;
    r = t.byte[7][v & 0xff] ^ t.byte[6][(v >> 8) & 0xff] ^ t.byte[5][(v >> 16) & 0xff] ^
        t.byte[4][(v >> 24) & 0xff] ^ t.byte[3][(v >> 32) & 0xff] ^ t.byte[2][(v >> 40) & 0xff] ^
        t.byte[1][(v >> 48) & 0xff] ^ t.byte[0][v >> 56];
    p += 8;
    n -= 8;
  }
  return RawSlow(r, p, n, t);
}

__attribute__((target("sse4.2"))) uint32_t RawHardware(uint32_t r, const uint8_t* p, size_t n) {
  while (n && (reinterpret_cast<uintptr_t>(p) & 7)) {
    r = _mm_crc32_u8(r, *p++);
    n--;
  }
  if (n >= 3 * kStride) {
    const Tables& t = T();
    while (n >= 3 * kStride) {
      uint64_t a = r, b = 0, c = 0;
      const uint8_t* pb = p + kStride;
      const uint8_t* pc = p + 2 * kStride;
      for (size_t i = 0; i < kStride; i += 8) {
        uint64_t va, vb, vc;
        memcpy(&va, p + i, 8);
        memcpy(&vb, pb + i, 8);
        memcpy(&vc, pc + i, 8);
        a = _mm_crc32_u64(a, va);
        b = _mm_crc32_u64(b, vb);
        c = _mm_crc32_u64(c, vc);
      }
      r = Shift(Shift(static_cast<uint32_t>(a), t) ^ static_cast<uint32_t>(b), t) ^
          static_cast<uint32_t>(c);
      p += 3 * kStride;
      n -= 3 * kStride;
    }
  }
  uint64_t r64 = r;
  while (n >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    r64 = _mm_crc32_u64(r64, v);
    p += 8;
    n -= 8;
  }
  r = static_cast<uint32_t>(r64);
  while (n--) r = _mm_crc32_u8(r, *p++);
  return r;
}

bool DetectSse42() {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
  return c & bit_SSE4_2;
}

}  // namespace

bool Crc32cHardware() {
  static const bool hw = DetectSse42();
  return hw;
}

uint32_t Crc32c(uint32_t crc, const void* data, size_t len) {
  const auto* p = static_cast<const uint8_t*>(data);
  if (Crc32cHardware()) return ~RawHardware(~crc, p, len);
  return ~RawSoftware(~crc, p, len);
}

uint32_t Crc32cSoftware(uint32_t crc, const void* data, size_t len) {
  return ~RawSoftware(~crc, static_cast<const uint8_t*>(data), len);
}

uint32_t Crc32cCombine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b) {
  // crc(a+b) = crc_a * x^(8 len_b) ^ crc_b: the inversions cancel because the register of b's
  // checksum also started from ~0 (same argument as zlib's crc32_combine).
  const Tables& t = T();
  uint32_t xp = 1u << 31;  // x^0
  int k = 3;               // 8 = 2^3: multiply by x^(2^(k)) for each set bit of len_b
  for (uint64_t n = len_b; n; n >>= 1, k++)
    if (n & 1) xp = MultModP(t.x2n[k & 63], xp);
  return MultModP(xp, crc_a) ^ crc_b;
}

}  // namespace godwit::images
