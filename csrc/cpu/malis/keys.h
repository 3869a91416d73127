// Sort keys: an edge's prediction as float32 bits mapped so that ascending key order is
// descending prediction order.
#pragma once

#include <cstdint>
#include <cstring>

namespace seglosses {
namespace malis {

// Key whose ascending order is the descending order of f (f finite); -0 and +0 are equal.
// Branch-free (the emission runs it on every edge).
inline uint32_t descending_key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  u = (u << 1) == 0 ? 0u : u;  // fold -0 into +0
  const uint32_t neg = static_cast<uint32_t>(static_cast<int32_t>(u) >> 31);
  return ~(u ^ (neg | 0x80000000u));  // negative: all bits flipped; else the sign bit set
}

// Whether the float32 bits u are NaN or infinite (exponent all ones).
inline bool nonfinite_float_bits(uint32_t u) { return (u & 0x7f800000u) == 0x7f800000u; }

}  // namespace malis
}  // namespace seglosses
