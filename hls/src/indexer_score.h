// Scoring arithmetic of hetero_indexer: element decoding, the fixed-order reductions and the
// total order of scores. Everything here is plain C++ that Vitis HLS synthesises and g++
// compiles identically (build with -ffp-contract=off so no multiply-add is fused).
#pragma once
#include <stdint.h>

#include "hetero_kernels.h"

namespace hetero {

// -0.0 is the exact additive identity of IEEE addition (x + -0.0 == x for every x, including
// +0.0 and -0.0), so padding a reduction with it never changes the sum, not even a zero's sign.
static const float kNegZero = -0.0f;
static const int kMaxLanes = 32;   // elements per 512-bit word for 16-bit formats
static const int kHeadLanes = 8;   // dsa heads scored in parallel (8 x 32 multipliers)

inline float bits_to_float(uint32_t b) {
  union { uint32_t u; float f; } v;
  v.u = b;
  return v.f;
}
inline uint32_t float_to_bits(float f) {
  union { uint32_t u; float f; } v;
  v.f = f;
  return v.u;
}

// Unsigned key whose integer order is jax.lax.top_k's total order:
// -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN (same map as csrc/common/float_bits.h).
inline uint32_t order_key(float f) {
  const uint32_t b = float_to_bits(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
inline float key_to_float(uint32_t key) {
  return bits_to_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
}

inline int lanes_of(int key_format) { return key_format == HETERO_KEYS_F32 ? 16 : 32; }
inline int entry_words_of(int dim, int key_format) {
  const int lanes = lanes_of(key_format);
  return (dim + lanes - 1) / lanes;
}

// Element `lane` of a word as float32 (exact for every format: int16 and bfloat16 widen).
inline float decode(const hetero_word_t& word, int lane, int key_format) {
  if (key_format == HETERO_KEYS_F32) return bits_to_float(word.range(32 * lane + 31, 32 * lane).to_uint());
  const uint32_t half = word.range(16 * lane + 15, 16 * lane).to_uint();
  if (key_format == HETERO_KEYS_BF16) return bits_to_float(half << 16);
  return float(int16_t(uint16_t(half)));
}

// Pairwise sum of N slots (N a power of two): sum(a[0:N/2]) + sum(a[N/2:N]). In hardware an
// adder tree; in C++ the same additions in the same order.
template <int N>
struct Tree {
  static float sum(const float* a) { return Tree<N / 2>::sum(a) + Tree<N / 2>::sum(a + N / 2); }
};
template <>
struct Tree<1> {
  static float sum(const float* a) { return a[0]; }
};

inline float relu(float x) { return (x > 0.0f || x != x) ? x : 0.0f; }  // NaN stays NaN, like jnp

// Per-row query preparation: q[h][d] scaled for int16 keys, then per kind
//   dot:   qa[d] = Tree<64> over h of q[h][d]                 (group sum)
//   quest: qa[d] = Tree<64> over h of (q >= 0 ? q : -0.0)     (P_d)
//          qb[d] = Tree<64> over h of (q <  0 ? q : -0.0)     (N_d)
//   dsa:   q kept per head.
// Head slots past `heads` hold -0.0.
struct RowQuery {
  float q[HETERO_MAX_HEADS][HETERO_MAX_DIM];
  float qa[HETERO_MAX_DIM];
  float qb[HETERO_MAX_DIM];
  float w[HETERO_MAX_HEADS];
};

inline float quest_term(float lo, float hi, float p, float n) {
  const float top = lo > hi ? lo : hi, bottom = lo > hi ? hi : lo;
  const float a = top * p, b = bottom * n;
  return a + b;
}

}  // namespace hetero
