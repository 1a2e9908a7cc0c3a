// Relevancy scoring kernels (Quest/LServe bound, block dot product, DSA lightning indexer),
// shared by the relevancy and indexer handlers so that both compute every score with the same
// instructions in the same order: the fused indexer then equals topk(relevancy(...)) exactly.
//
// Every score depends only on its own entry (never on where a tile starts), so any split of
// a row into chunks and tiles gives bit-identical scores.  The hot loops are written once over
// a GCC vector type and compiled for AVX-512, AVX2+FMA and the baseline ISA; the best one the
// CPU supports is picked once per process (JAX_HETERO_CPU_ISA=base|avx2|avx512 caps it).
// Plain C++: no XLA, no threads.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <type_traits>
#include <vector>

#include "common/float_bits.h"

// The vector helpers are always inlined into ISA-specific functions, so the ABI note GCC
// gives for wide vector returns (reported at the end of the including file) is moot.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace jax_hetero {
namespace scoring {

typedef float f32x4 __attribute__((vector_size(16)));
typedef float f32x8 __attribute__((vector_size(32)));
typedef float f32x16 __attribute__((vector_size(64)));

#define JH_INLINE __attribute__((always_inline)) inline
#define JH_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx2,fma")))
#define JH_TARGET_AVX2 __attribute__((target("avx2,fma")))

enum class Isa { kBase, kAvx2, kAvx512 };

inline Isa best_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::kBase;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (best == Isa::kAvx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl"))
      best = Isa::kAvx512;
    if (const char* cap = std::getenv("JAX_HETERO_CPU_ISA")) {
      const std::string s = cap;
      if (s == "base") best = Isa::kBase;
      if (s == "avx2" && best == Isa::kAvx512) best = Isa::kAvx2;
    }
    return best;
  }();
  return isa;
}

template <class V> constexpr int kLanes = int(sizeof(V) / sizeof(float));

template <class V> JH_INLINE V load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

// Pairwise sum of the lanes: a short dependency chain, and a fixed order.
template <class V> JH_INLINE float lane_sum(V v) {
  float s[kLanes<V>];
  std::memcpy(s, &v, sizeof(v));
  for (int width = kLanes<V> / 2; width >= 1; width /= 2)
    for (int i = 0; i < width; ++i) s[i] += s[i + width];
  return s[0];
}

// max that returns NaN when either side is NaN (jnp.maximum), unlike maxps.
template <class V> JH_INLINE V nan_max(V a, V b) {
  const V m = a > b ? a : b;
  return a != a ? a : m;
}
JH_INLINE float nan_max(float a, float b) { return a != a ? a : (a > b ? a : b); }

// ReLU that keeps NaN (jax.nn.relu is max(x, 0)).
template <class V> JH_INLINE V relu(V x) {
  const V zero = {};
  return x < zero ? zero : x;
}

typedef uint16_t u16x8 __attribute__((vector_size(16)));
typedef uint32_t u32x8 __attribute__((vector_size(32)));
typedef int32_t i32x8 __attribute__((vector_size(32)));

// Exact, branch-free widening of 8 halves / bfloat16s (same results as to_float).  Integer
// arithmetic only, so denormal flushing modes of the calling thread cannot change it.
JH_INLINE f32x8 widen8(const bfloat16_bits* src) {
  u16x8 h;
  std::memcpy(&h, src, sizeof(h));
  const u32x8 bits = __builtin_convertvector(h, u32x8) << 16;
  f32x8 f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}
JH_INLINE f32x8 widen8(const float16_bits* src) {
  u16x8 h;
  std::memcpy(&h, src, sizeof(h));
  const u32x8 x = __builtin_convertvector(h, u32x8), sign = (x & 0x8000u) << 16, mag = x & 0x7fffu;
  const u32x8 normal = (mag << 13) + (112u << 23);                // rebias 15 -> 127
  const u32x8 special = (mag << 13) | 0x7f800000u;                // inf / NaN
  const f32x8 small_value = __builtin_convertvector(__builtin_convertvector(mag, i32x8), f32x8) *
                            (1.0f / 16777216.0f);                 // subnormal or zero: mag * 2^-24
  u32x8 small;
  std::memcpy(&small, &small_value, sizeof(small));
  const u32x8 bits = sign | (mag >= 0x7c00u ? special : (mag >= 0x0400u ? normal : small));
  f32x8 f;
  std::memcpy(&f, &bits, sizeof(f));
  return f;
}

// Float32 view of n contiguous elements: the input itself for float, else converted into dst.
template <class T> JH_INLINE const float* as_float(const T* src, int64_t n, float* dst) {
  if constexpr (std::is_same_v<T, float>) {
    return src;
  } else {
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
      const f32x8 v = widen8(src + i);
      std::memcpy(dst + i, &v, sizeof(v));
    }
    for (; i < n; ++i) dst[i] = to_float(src[i]);
    return dst;
  }
}

// Entries of a block-kind row lie hkv * d elements apart, a stride the hardware prefetchers
// follow poorly: fetch the entry `kPrefetchEntries` ahead explicitly.
constexpr int64_t kPrefetchEntries = 4;
template <class T> JH_INLINE void prefetch_entry(const T* entry, int64_t d) {
  const char* p = reinterpret_cast<const char*>(entry);
  for (int64_t offset = 0; offset < d * int64_t(sizeof(T)); offset += 64) __builtin_prefetch(p + offset);
}

template <class V> JH_INLINE float dot(const float* a, const float* b, int64_t d) {
  constexpr int L = kLanes<V>;
  V acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * L <= d; i += 2 * L) {
    acc0 += load<V>(a + i) * load<V>(b + i);
    acc1 += load<V>(a + i + L) * load<V>(b + i + L);
  }
  for (; i + L <= d; i += L) acc0 += load<V>(a + i) * load<V>(b + i);
  float s = lane_sum(acc0 + acc1);
  for (; i < d; ++i) s += a[i] * b[i];
  return s;
}

// --- dot: score = (sum of the group's query heads) . summary ------------------------------
// Block kinds: entries of one row (batch, KV head) lie `stride` elements apart.
template <class V, class T>
JH_INLINE void dot_tile_impl(const float* qsum, const T* entries, int64_t stride, int64_t d,
                             int64_t begin, int64_t end, float* out, float* scratch) {
  for (int64_t t = begin; t < end; ++t) {
    if (t + kPrefetchEntries < end) prefetch_entry(entries + (t + kPrefetchEntries) * stride, d);
    out[t - begin] = dot<V>(qsum, as_float(entries + t * stride, d, scratch), d);
  }
}

// --- quest: score = sum_j sum_d max(q_jd * min_d, q_jd * max_d) over the group's heads j ----
template <class V, class T>
JH_INLINE void quest_tile_impl(const float* q, int64_t group, const T* lo_entries, const T* hi_entries,
                               int64_t stride, int64_t d, int64_t begin, int64_t end, float* out,
                               float* scratch) {
  constexpr int L = kLanes<V>;
  for (int64_t t = begin; t < end; ++t) {
    if (t + kPrefetchEntries < end) {
      prefetch_entry(lo_entries + (t + kPrefetchEntries) * stride, d);
      prefetch_entry(hi_entries + (t + kPrefetchEntries) * stride, d);
    }
    const float* lo = as_float(lo_entries + t * stride, d, scratch);
    const float* hi = as_float(hi_entries + t * stride, d, scratch + d);
    V acc[2] = {};  // two chains: even and odd feature vectors
    int64_t i = 0;
    for (; i + L <= d; i += L) {
      const V l = load<V>(lo + i), h = load<V>(hi + i);
      V part = {};
      for (int64_t j = 0; j < group; ++j) {
        const V qj = load<V>(q + j * d + i);
        part += nan_max(qj * l, qj * h);
      }
      acc[(i / L) & 1] += part;
    }
    float s = lane_sum(acc[0] + acc[1]);
    for (; i < d; ++i)
      for (int64_t j = 0; j < group; ++j) s += nan_max(q[j * d + i] * lo[i], q[j * d + i] * hi[i]);
    out[t - begin] = s;
  }
}

// --- dsa: score_t = sum_h w_h * ReLU(q_h . k_t) -------------------------------------------
// Vectorised over heads: the query is stored transposed ([feature][head], heads padded to a
// multiple of kHeadPad), each key element is broadcast and multiplies a vector of heads.  Keys
// are read in their own layout, and every token goes through the same lane arithmetic
// whether it is scored in a group of kDsaTokens or alone.
constexpr int64_t kHeadPad = 16;  // the widest vector
constexpr int kDsaTokens = 4;

// Register block of head vectors per token group (16 accumulators with 32 registers, 8 with 16).
template <class V> constexpr int dsa_head_block() { return kLanes<V> == 16 ? 4 : 2; }

// One group of TB tokens (k: TB rows of dim floats) over head vectors [v0, v0 + HB).
template <class V, int TB, int HB>
JH_INLINE void dsa_head_group(const float* qt, int64_t stride, int64_t dim, const float* k, int64_t v0,
                              const float* w, const float* live, V* total) {
  constexpr int L = kLanes<V>;
  V acc[TB][HB] = {};
  for (int64_t f = 0; f < dim; ++f) {
    V qv[HB];
#pragma GCC unroll 4
    for (int j = 0; j < HB; ++j) qv[j] = load<V>(qt + f * stride + (v0 + j) * L);
#pragma GCC unroll 4
    for (int t = 0; t < TB; ++t) {
      const float ks = k[t * dim + f];
#pragma GCC unroll 4
      for (int j = 0; j < HB; ++j) acc[t][j] += ks * qv[j];
    }
  }
  const V zero = {};
#pragma GCC unroll 4
  for (int j = 0; j < HB; ++j) {
    const V wj = load<V>(w + (v0 + j) * L);
    // Padding heads must add nothing, even when a key holds inf or NaN.
    const V keep = load<V>(live + (v0 + j) * L);
#pragma GCC unroll 4
    for (int t = 0; t < TB; ++t) total[t] += keep > zero ? wj * relu(acc[t][j]) : zero;
  }
}

template <class V, int TB>
JH_INLINE void dsa_tokens(const float* qt, int64_t stride, int64_t head_vectors, int64_t dim,
                          const float* k, const float* w, const float* live, float* out) {
  constexpr int HB = dsa_head_block<V>();
  V total[TB] = {};
  int64_t v = 0;
  for (; v + HB <= head_vectors; v += HB) dsa_head_group<V, TB, HB>(qt, stride, dim, k, v, w, live, total);
  for (; v < head_vectors; ++v) dsa_head_group<V, TB, 1>(qt, stride, dim, k, v, w, live, total);
#pragma GCC unroll 4
  for (int t = 0; t < TB; ++t) out[t] = lane_sum(total[t]);
}

// qt [dim][stride], w and live [stride]: the prepared query (see DsaScorer::prepare).
template <class V, class T>
JH_INLINE void dsa_tile_width(const float* qt, const float* w, const float* live, int64_t heads,
                              int64_t stride, int64_t dim, const T* keys, int64_t begin, int64_t end,
                              float* out, float* scratch) {
  const int64_t count = end - begin, head_vectors = (heads + kLanes<V> - 1) / kLanes<V>;
  const float* k = as_float(keys + begin * dim, count * dim, scratch);
  int64_t t = 0;
  for (; t + kDsaTokens <= count; t += kDsaTokens)
    dsa_tokens<V, kDsaTokens>(qt, stride, head_vectors, dim, k + t * dim, w, live, out + t);
  for (; t < count; ++t) dsa_tokens<V, 1>(qt, stride, head_vectors, dim, k + t * dim, w, live, out + t);
}

// The vector width follows the head count so that few heads do not waste lanes.
template <class V, class T>
JH_INLINE void dsa_tile_impl(const float* qt, const float* w, const float* live, int64_t heads,
                             int64_t stride, int64_t dim, const T* keys, int64_t begin, int64_t end,
                             float* out, float* scratch) {
  if (kLanes<V> >= 16 && heads > 8)
    return dsa_tile_width<f32x16>(qt, w, live, heads, stride, dim, keys, begin, end, out, scratch);
  if (kLanes<V> >= 8 && heads > 4)
    return dsa_tile_width<f32x8>(qt, w, live, heads, stride, dim, keys, begin, end, out, scratch);
  dsa_tile_width<f32x4>(qt, w, live, heads, stride, dim, keys, begin, end, out, scratch);
}

// One compiled copy of each kernel per ISA.  T is the element type of the memory operand;
// wide is the vector type of the AVX-512 copy.
#define JH_SCORING_VARIANTS(name, wide, params, args)                                        \
  template <class T> JH_TARGET_AVX512 void name##_avx512 params { name##_impl<wide, T> args; }  \
  template <class T> JH_TARGET_AVX2 void name##_avx2 params { name##_impl<f32x8, T> args; }     \
  template <class T> void name##_base params { name##_impl<f32x4, T> args; }                    \
  template <class T> void name params {                                                      \
    switch (best_isa()) {                                                                     \
      case Isa::kAvx512: return name##_avx512<T> args;                                        \
      case Isa::kAvx2: return name##_avx2<T> args;                                            \
      default: return name##_base<T> args;                                                    \
    }                                                                                         \
  }

JH_SCORING_VARIANTS(dot_tile, f32x16,
                    (const float* qsum, const T* entries, int64_t stride, int64_t d, int64_t begin,
                     int64_t end, float* out, float* scratch),
                    (qsum, entries, stride, d, begin, end, out, scratch))
// 8 lanes under AVX-512 too: GCC (12) scalarises the two-compare select of nan_max on
// 16-lane vectors in an always-inline template.
JH_SCORING_VARIANTS(quest_tile, f32x8,
                    (const float* q, int64_t group, const T* lo, const T* hi, int64_t stride,
                     int64_t d, int64_t begin, int64_t end, float* out, float* scratch),
                    (q, group, lo, hi, stride, d, begin, end, out, scratch))
JH_SCORING_VARIANTS(dsa_tile, f32x16,
                    (const float* qt, const float* w, const float* live, int64_t heads, int64_t stride,
                     int64_t dim, const T* keys, int64_t begin, int64_t end, float* out, float* scratch),
                    (qt, w, live, heads, stride, dim, keys, begin, end, out, scratch))
#undef JH_SCORING_VARIANTS

// Per-thread buffers of one row being scored.
struct Workspace {
  std::vector<float> query, scratch;
};

// Scorers: prepare(row, ws) converts a row's query once; score(row, ws, begin, end, out)
// writes the float32 scores of entries [begin, end) of that row to out[0, end - begin).
// Rows are (batch, KV head) for the block kinds and batch for dsa; q_of[b] and mem_of[b] are
// the batch elements of q and of the memory that serve output batch element b (broadcast).

template <class T>
struct DotScorer {
  const T* q;        // [*, hq, d]
  const T* summary;  // [*, nb, hkv, d]
  const int64_t *q_of, *mem_of;
  int64_t batch, hq, hkv, nb, d;
  static constexpr int64_t kTile = 1024;

  int64_t rows() const { return batch * hkv; }
  int64_t entries() const { return nb; }
  int64_t batch_of(int64_t row) const { return row / hkv; }
  void prepare(int64_t row, Workspace& ws) const {
    const int64_t b = row / hkv, g = row % hkv, group = hq / hkv;
    ws.query.assign(d, 0.0f);
    ws.scratch.resize(d);
    for (int64_t j = 0; j < group; ++j) {
      const T* qj = q + (q_of[b] * hq + g * group + j) * d;
      for (int64_t i = 0; i < d; ++i) ws.query[i] += to_float(qj[i]);
    }
  }
  void score(int64_t row, Workspace& ws, int64_t begin, int64_t end, float* out) const {
    const int64_t b = row / hkv, g = row % hkv;
    dot_tile<T>(ws.query.data(), summary + (mem_of[b] * nb * hkv + g) * d, hkv * d, d, begin, end, out,
                ws.scratch.data());
  }
};

template <class T>
struct QuestScorer {
  const T* q;       // [*, hq, d]
  const T *lo, *hi;  // [*, nb, hkv, d]
  const int64_t *q_of, *mem_of;
  int64_t batch, hq, hkv, nb, d;
  static constexpr int64_t kTile = 1024;

  int64_t rows() const { return batch * hkv; }
  int64_t entries() const { return nb; }
  int64_t batch_of(int64_t row) const { return row / hkv; }
  void prepare(int64_t row, Workspace& ws) const {
    const int64_t b = row / hkv, g = row % hkv, group = hq / hkv;
    ws.query.resize(group * d);
    ws.scratch.resize(2 * d);
    const T* qg = q + (q_of[b] * hq + g * group) * d;
    for (int64_t i = 0; i < group * d; ++i) ws.query[i] = to_float(qg[i]);
  }
  void score(int64_t row, Workspace& ws, int64_t begin, int64_t end, float* out) const {
    const int64_t b = row / hkv, g = row % hkv, offset = (mem_of[b] * nb * hkv + g) * d;
    quest_tile<T>(ws.query.data(), hq / hkv, lo + offset, hi + offset, hkv * d, d, begin, end, out,
                  ws.scratch.data());
  }
};

template <class T>
struct DsaScorer {
  const T* q;            // [*, heads, dim]
  const T* keys;         // [*, n, dim]
  const float* weights;  // [batch, heads] (already broadcast to the output's batch)
  const int64_t *q_of, *mem_of;
  int64_t batch, heads, n, dim;
  static constexpr int64_t kTile = 256;

  int64_t rows() const { return batch; }
  int64_t entries() const { return n; }
  int64_t batch_of(int64_t row) const { return row; }
  int64_t stride() const { return (heads + kHeadPad - 1) / kHeadPad * kHeadPad; }
  // ws.query = [transposed query [dim][stride] | weights [stride] | live-head flags [stride]],
  // zero in the padding heads.
  void prepare(int64_t row, Workspace& ws) const {
    const int64_t s = stride();
    ws.query.assign((dim + 2) * s, 0.0f);
    const T* qb = q + q_of[row] * heads * dim;
    for (int64_t h = 0; h < heads; ++h) {
      for (int64_t f = 0; f < dim; ++f) ws.query[f * s + h] = to_float(qb[h * dim + f]);
      ws.query[dim * s + h] = weights[row * heads + h];
      ws.query[(dim + 1) * s + h] = 1.0f;
    }
    ws.scratch.resize(kTile * dim);
  }
  void score(int64_t row, Workspace& ws, int64_t begin, int64_t end, float* out) const {
    const int64_t s = stride();
    const float* qt = ws.query.data();
    dsa_tile<T>(qt, qt + dim * s, qt + (dim + 1) * s, heads, s, dim, keys + mem_of[row] * n * dim, begin, end,
                out, ws.scratch.data());
  }
};

}  // namespace scoring
}  // namespace jax_hetero

