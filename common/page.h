// The page size every layer assumes: godwit is x86-64 only (proto/core.proto), where base pages
// are 4 KiB. Image offsets, pagemap runs and VMA bounds are all in these units.
#pragma once

#include <cstdint>

namespace godwit {

inline constexpr uint64_t kPage = 4096;

// Rounds up to a whole number of pages.
inline constexpr uint64_t PageAlignUp(uint64_t n) { return (n + kPage - 1) & ~(kPage - 1); }
// Rounds down to a whole number of pages.
inline constexpr uint64_t PageAlignDown(uint64_t n) { return n & ~(kPage - 1); }

}  // namespace godwit
