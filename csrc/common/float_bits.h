// Scalar conversions and the total order used by every selection kernel.
// Plain C++ (no XLA, no CUDA) so CPU handlers, tests and HLS testbenches share it.
#pragma once
#include <cstdint>
#include <cstring>

namespace jax_hetero {

struct bfloat16_bits { uint16_t bits; };
struct float16_bits { uint16_t bits; };

inline float bits_to_float(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
inline uint32_t float_to_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

inline float to_float(float x) { return x; }
inline float to_float(bfloat16_bits x) { return bits_to_float(uint32_t(x.bits) << 16); }
inline float to_float(float16_bits x) {
  const uint32_t h = x.bits, sign = (h & 0x8000u) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / NaN
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  if (man == 0) return bits_to_float(sign);  // +-0
  // Subnormal half: value = man * 2^-24, exact in float.
  const float v = float(man) * (1.0f / 16777216.0f);
  return sign ? -v : v;
}

// Round-to-nearest-even narrowing; NaN stays NaN.
template <class T> T from_float(float f);
template <> inline float from_float<float>(float f) { return f; }
template <> inline bfloat16_bits from_float<bfloat16_bits>(float f) {
  uint32_t b = float_to_bits(f);
  if ((b & 0x7fffffffu) > 0x7f800000u) return {uint16_t((b >> 16) | 0x40)};
  b += 0x7fffu + ((b >> 16) & 1u);
  return {uint16_t(b >> 16)};
}
template <> inline float16_bits from_float<float16_bits>(float f) {
  const uint32_t b = float_to_bits(f), sign = (b >> 16) & 0x8000u, abs = b & 0x7fffffffu;
  if (abs > 0x7f800000u) return {uint16_t(sign | 0x7e00u)};
  if (abs >= 0x477ff000u) return {uint16_t(sign | 0x7c00u)};  // rounds to inf
  if (abs < 0x38800000u) {  // subnormal or zero in half
    const float scaled = bits_to_float(abs) * 16777216.0f;  // exact; units of 2^-24
    uint32_t m = uint32_t(scaled);
    const float frac = scaled - float(m);
    if (frac > 0.5f || (frac == 0.5f && (m & 1u))) ++m;
    return {uint16_t(sign | m)};
  }
  uint32_t r = abs + 0xfffu + ((abs >> 13) & 1u);  // round mantissa to 10 bits
  r -= 112u << 23;
  return {uint16_t(sign | (r >> 13))};
}

// Map a float to an unsigned key whose integer order is the IEEE total order used by
// jax.lax.top_k: -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN.
inline uint32_t order_key(float f) {
  const uint32_t b = float_to_bits(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
inline float key_to_float(uint32_t key) {
  return bits_to_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

}  // namespace jax_hetero
