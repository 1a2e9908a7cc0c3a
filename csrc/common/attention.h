// Decode attention over lists of token ranges with an online (streaming) softmax, and the
// log-sum-exp merge of partial results computed on separate threads.  Plain C++ (no XLA) so
// handlers and C++ tests share it.  Arithmetic is float32 whatever the storage type.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "common/float_bits.h"

// Float8 below is always inlined, so the note that passing 32-byte vectors by value has a
// different ABI with and without AVX does not apply.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
#endif

namespace jax_hetero {

// Handlers build their kernels twice: for x86-64-v3 (AVX2 and FMA), chosen when the module
// loads on a CPU that has it, and for the baseline target of the build.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define JAX_HETERO_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define JAX_HETERO_CLONES
#endif

// Kernel helpers are forced inline so that a caller compiled for a wider instruction set
// (see the handler's target clones) gets them in that instruction set too.
#if defined(__GNUC__)
#define JAX_HETERO_KERNEL inline __attribute__((always_inline))
#else
#define JAX_HETERO_KERNEL inline
#endif

// exp(x) for float32 without branches or library calls, so loops over it vectorise.
// Cody-Waite reduction to |r| <= ln2/2 and a degree-7 Taylor polynomial: relative error
// about 1e-7.  Arguments below -87 give 0 (weights of tokens far below the running max).
JAX_HETERO_KERNEL float exp_approx(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693145751953125f;       // ln 2 with the low mantissa bits zero
  constexpr float kLn2Lo = 1.42860682030941723e-6f;  // ln 2 - kLn2Hi
  const float clamped = std::min(std::max(x, -87.0f), 88.0f);
  const float n = std::floor(clamped * kLog2e + 0.5f);
  const float r = (clamped - n * kLn2Hi) - n * kLn2Lo;
  float p = 1.0f / 5040;
  p = p * r + 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const float two_to_n = bits_to_float(uint32_t(int32_t(n) + 127) << 23);
  return x < -87.0f ? 0.0f : p * two_to_n;
}

// to_float for float16 with selects instead of branches, so a row converts in vector
// registers.  Subnormal halves go through an exact int-to-float conversion, never through a
// float32 subnormal (which a flush-to-zero mode would lose).
JAX_HETERO_KERNEL float half_to_float(float16_bits x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16, magnitude = x.bits & 0x7fffu;
  const uint32_t normal = (magnitude << 13) + (112u << 23);    // rebias the exponent
  const uint32_t inf_nan = (magnitude << 13) | 0x7f800000u;
  const uint32_t subnormal = float_to_bits(float(int32_t(magnitude)) * (1.0f / 16777216.0f));
  const uint32_t is_inf_nan = 0u - uint32_t(magnitude >= 0x7c00u);  // all ones or zero
  const uint32_t is_subnormal = 0u - uint32_t(magnitude < 0x0400u);
  const uint32_t bits = (inf_nan & is_inf_nan) | (subnormal & is_subnormal) |
                        (normal & ~(is_inf_nan | is_subnormal));
  return bits_to_float(bits | sign);
}

// A row of d elements as float32: the row itself for float, else converted into `scratch`.
JAX_HETERO_KERNEL const float* row_as_float(const float* row, float*, int64_t) { return row; }
JAX_HETERO_KERNEL const float* row_as_float(const bfloat16_bits* row, float* scratch, int64_t d) {
  for (int64_t i = 0; i < d; ++i) scratch[i] = to_float(row[i]);
  return scratch;
}
JAX_HETERO_KERNEL const float* row_as_float(const float16_bits* row, float* scratch, int64_t d) {
  for (int64_t i = 0; i < d; ++i) scratch[i] = half_to_float(row[i]);
  return scratch;
}

struct TokenRange {
  int64_t begin, end;
};

// The token ranges of one (batch, KV head): its selected blocks in slot order, each once
// (-1 slots and blocks starting at or past `limit` <= n skipped, so indices outside [0, nb)
// read nothing), clipped to tokens < limit.  `seen` holds one bit per block, all clear, and
// is left clear.
inline void select_token_ranges(const int32_t* slots, int64_t kb, int64_t block_size, int64_t limit,
                                std::vector<uint64_t>& seen, std::vector<TokenRange>& ranges) {
  ranges.clear();
  for (int64_t s = 0; s < kb; ++s) {
    const int64_t block = slots[s];
    if (block < 0 || block * block_size >= limit) continue;
    uint64_t& word = seen[block >> 6];
    const uint64_t bit = uint64_t(1) << (block & 63);
    if (word & bit) continue;
    word |= bit;
    const int64_t begin = block * block_size, end = std::min(begin + block_size, limit);
    if (begin < end) ranges.push_back({begin, end});
  }
  for (int64_t s = 0; s < kb; ++s)  // clear only the bits set above
    if (slots[s] >= 0 && slots[s] * block_size < limit) seen[slots[s] >> 6] = 0;
}

// Streaming softmax state of a group of query heads: per head the running maximum logit,
// the sum of exp(logit - max) and the weighted sum of value rows (not yet divided).
struct SoftmaxState {
  int64_t heads = 0, d = 0;
  std::vector<float> max, sum, acc;
  void reset(int64_t h, int64_t dim) {
    heads = h;
    d = dim;
    max.assign(h, -std::numeric_limits<float>::infinity());
    sum.assign(h, 0.0f);
    acc.assign(h * dim, 0.0f);
  }
};

constexpr int64_t kAttentionTile = 16;  // tokens per step of the streaming softmax

// Eight floats as one value (GCC/Clang vector extension): AVX registers where the code is
// built for them, pairs of SSE registers otherwise.  Loads and stores may be unaligned.
typedef float Float8 __attribute__((vector_size(32)));
JAX_HETERO_KERNEL Float8 load8(const float* p) {
  Float8 v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
JAX_HETERO_KERNEL void store8(float* p, Float8 v) { std::memcpy(p, &v, sizeof v); }
JAX_HETERO_KERNEL float sum8(Float8 v) {
  return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7]));
}

// logits[j * kAttentionTile + t] = q_j . k_t for H heads, each key row loaded once for all
// of them.
template <int H>
JAX_HETERO_KERNEL void tile_logits(const float* q, int64_t d, const float* const* k_rows, int64_t tile,
                                   float* logits) {
  for (int64_t t = 0; t < tile; ++t) {
    const float* k = k_rows[t];
    Float8 partial[H] = {};
    int64_t i = 0;
    for (; i + 8 <= d; i += 8) {
      const Float8 key = load8(k + i);
      for (int j = 0; j < H; ++j) partial[j] += load8(q + j * d + i) * key;
    }
    for (int j = 0; j < H; ++j) {
      float total = sum8(partial[j]);
      for (int64_t r = i; r < d; ++r) total += q[j * d + r] * k[r];
      logits[j * kAttentionTile + t] = total;
    }
  }
}

// acc[j] += sum_t weights[j][t] * v_t for H heads, sixteen columns at a time held in
// registers across the tile; each value row is loaded once for all H heads.
template <int H>
JAX_HETERO_KERNEL void tile_accumulate(const float* weights, const float* const* v_rows, int64_t tile,
                                       int64_t d, float* acc) {
  int64_t i = 0;
  for (; i + 16 <= d; i += 16) {
    Float8 low[H], high[H];
    for (int j = 0; j < H; ++j) {
      low[j] = load8(acc + j * d + i);
      high[j] = load8(acc + j * d + i + 8);
    }
    for (int64_t t = 0; t < tile; ++t) {
      const Float8 v_low = load8(v_rows[t] + i), v_high = load8(v_rows[t] + i + 8);
      for (int j = 0; j < H; ++j) {
        const float w = weights[j * kAttentionTile + t];
        low[j] += w * v_low;
        high[j] += w * v_high;
      }
    }
    for (int j = 0; j < H; ++j) {
      store8(acc + j * d + i, low[j]);
      store8(acc + j * d + i + 8, high[j]);
    }
  }
  for (; i < d; ++i)
    for (int j = 0; j < H; ++j)
      for (int64_t t = 0; t < tile; ++t) acc[j * d + i] += weights[j * kAttentionTile + t] * v_rows[t][i];
}

// tile_logits and tile_accumulate for any number of heads, in blocks of 4, 2 and 1.
// logits, weights: [heads][kAttentionTile]; q, acc: [heads][d].
JAX_HETERO_KERNEL void heads_logits(const float* q, int64_t heads, int64_t d, const float* const* k_rows,
                                    int64_t tile, float* logits) {
  int64_t j = 0;
  for (; j + 4 <= heads; j += 4) tile_logits<4>(q + j * d, d, k_rows, tile, logits + j * kAttentionTile);
  for (; j + 2 <= heads; j += 2) tile_logits<2>(q + j * d, d, k_rows, tile, logits + j * kAttentionTile);
  for (; j < heads; ++j) tile_logits<1>(q + j * d, d, k_rows, tile, logits + j * kAttentionTile);
}
JAX_HETERO_KERNEL void heads_accumulate(const float* weights, const float* const* v_rows, int64_t tile,
                                        int64_t heads, int64_t d, float* acc) {
  int64_t j = 0;
  for (; j + 4 <= heads; j += 4) tile_accumulate<4>(weights + j * kAttentionTile, v_rows, tile, d, acc + j * d);
  for (; j + 2 <= heads; j += 2) tile_accumulate<2>(weights + j * kAttentionTile, v_rows, tile, d, acc + j * d);
  for (; j < heads; ++j) tile_accumulate<1>(weights + j * kAttentionTile, v_rows, tile, d, acc + j * d);
}

// Software prefetch of the K and V rows of tokens [begin, end): rows are a KV-head stride
// apart (often a page), which hardware prefetchers do not follow.
template <class T>
JAX_HETERO_KERNEL void prefetch_rows(const T* k, const T* v, int64_t token_stride, int64_t begin,
                                     int64_t end, int64_t d) {
#if defined(__GNUC__)
  const int64_t bytes = d * int64_t(sizeof(T));
  for (int64_t t = begin; t < end; ++t) {
    const char* k_row = reinterpret_cast<const char*>(k + t * token_stride);
    const char* v_row = reinterpret_cast<const char*>(v + t * token_stride);
    for (int64_t b = 0; b < bytes; b += 64) {
      __builtin_prefetch(k_row + b);
      __builtin_prefetch(v_row + b);
    }
  }
#endif
}

// Adds the tokens of `ranges` to `state`.  q: [heads][d] float32, already multiplied by the
// softmax scale.  k, v: the first token's row of this KV head; consecutive tokens are
// `token_stride` elements apart.  Each K and V row is read once for all heads of the group.
template <class T>
JAX_HETERO_KERNEL void attend_ranges(const float* q, const T* k, const T* v, int64_t token_stride,
                                     const TokenRange* ranges, int64_t num_ranges, SoftmaxState& state) {
  constexpr int64_t kTile = kAttentionTile;
  const int64_t heads = state.heads, d = state.d;
  thread_local std::vector<float> scratch;
  scratch.resize(kTile * (heads + 2 * d));
  float* probs = scratch.data();          // [heads][kTile]: logits, then weights
  float* k_rows = probs + kTile * heads;  // conversion space for 16-bit inputs
  float* v_rows = k_rows + kTile * d;
  const float* k_ptr[kTile];
  const float* v_ptr[kTile];
  for (int64_t r = 0; r < num_ranges; ++r) {
    for (int64_t t0 = ranges[r].begin; t0 < ranges[r].end; t0 += kTile) {
      const int64_t tile = std::min(kTile, ranges[r].end - t0);
      // Fetch the next tile while this one computes.
      if (t0 + tile < ranges[r].end)
        prefetch_rows(k, v, token_stride, t0 + tile, std::min(ranges[r].end, t0 + tile + kTile), d);
      else if (r + 1 < num_ranges)
        prefetch_rows(k, v, token_stride, ranges[r + 1].begin,
                      std::min(ranges[r + 1].end, ranges[r + 1].begin + kTile), d);
      for (int64_t t = 0; t < tile; ++t)
        k_ptr[t] = row_as_float(k + (t0 + t) * token_stride, k_rows + t * d, d);
      heads_logits(q, heads, d, k_ptr, tile, probs);
      for (int64_t j = 0; j < heads; ++j) {
        float* p = probs + j * kTile;
        float tile_max = p[0];
        for (int64_t t = 1; t < tile; ++t) tile_max = std::max(tile_max, p[t]);
        if (tile_max > state.max[j]) {  // rescale what was accumulated under the old max
          const float correction = exp_approx(state.max[j] - tile_max);
          float* acc = state.acc.data() + j * d;
          state.sum[j] *= correction;
          for (int64_t i = 0; i < d; ++i) acc[i] *= correction;
          state.max[j] = tile_max;
        }
        // As the reference: a maximum of -inf (every logit -inf) shifts by 0.
        const float shift = state.max[j] == -std::numeric_limits<float>::infinity() ? 0.0f : state.max[j];
        for (int64_t t = 0; t < tile; ++t) p[t] = exp_approx(p[t] - shift);
        float total = 0;
        for (int64_t t = 0; t < tile; ++t) total += p[t];
        state.sum[j] += total;
      }
      for (int64_t t = 0; t < tile; ++t)
        v_ptr[t] = row_as_float(v + (t0 + t) * token_stride, v_rows + t * d, d);
      heads_accumulate(probs, v_ptr, tile, heads, d, state.acc.data());
    }
  }
}

// Combines partial states of the same heads (disjoint token sets) into out [heads][d]:
// each part is weighted by exp(its max - the overall max).  No token at all gives zeros.
template <class T>
void merge_states(const SoftmaxState* parts, int64_t num_parts, T* out) {
  const int64_t heads = parts[0].heads, d = parts[0].d;
  std::vector<float> row(d);
  for (int64_t j = 0; j < heads; ++j) {
    float overall = -std::numeric_limits<float>::infinity();
    for (int64_t s = 0; s < num_parts; ++s) overall = std::max(overall, parts[s].max[j]);
    std::fill(row.begin(), row.end(), 0.0f);
    float total = 0;
    // An overall max of -inf means every logit was -inf: all weights are zero, as in the
    // reference.
    if (overall != -std::numeric_limits<float>::infinity()) {
      for (int64_t s = 0; s < num_parts; ++s) {
        if (parts[s].sum[j] == 0) continue;
        const float weight = exp_approx(parts[s].max[j] - overall);
        total += parts[s].sum[j] * weight;
        const float* acc = parts[s].acc.data() + j * d;
        for (int64_t i = 0; i < d; ++i) row[i] += weight * acc[i];
      }
    }
    const float inverse = total > 0 ? 1.0f / total : 0.0f;
    for (int64_t i = 0; i < d; ++i) out[j * d + i] = from_float<T>(row[i] * inverse);
  }
}

}  // namespace jax_hetero

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
