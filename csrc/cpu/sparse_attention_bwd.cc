// CPU handler for sparse_attention_bwd: the gradients of sparse_attention with respect to q,
// k and v.  Each (batch, KV head) pair recomputes its softmax over its selected tokens; a
// token belongs to one KV head, so each pair owns its rows of dk and dv and the pairs run in
// parallel without atomics.
#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "common/attention.h"
#include "common/ffi_util.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/signatures.h"
#include "cpu/attention_args.h"

namespace jax_hetero {
namespace {

constexpr const char* kOp = "sparse_attention_bwd";
constexpr int64_t kTile = kAttentionTile;

// One (batch, KV head) pair.  q, g: its query heads [heads][d]; k, v, dk, dv: the row of its
// first token, consecutive tokens `token_stride` elements apart; dq: [heads][d].  dk and dv
// rows of unselected tokens are left as they are (the caller zeroes them).
template <class T>
JAX_HETERO_KERNEL void pair_gradients(const T* q, const T* g, const T* k, const T* v, int64_t token_stride,
                                      const std::vector<TokenRange>& ranges, int64_t heads, int64_t d,
                                      float scale, T* dq, T* dk, T* dv) {
  thread_local std::vector<int64_t> tokens;
  thread_local std::vector<float> rows, probs, grads;
  tokens.clear();
  for (const TokenRange& r : ranges)
    for (int64_t t = r.begin; t < r.end; ++t) tokens.push_back(t);
  const int64_t count = int64_t(tokens.size()), tiles = (count + kTile - 1) / kTile;
  // q (scaled), g, the dq sums, and conversion space for K, V and one output row.
  rows.resize(3 * heads * d + (2 * kTile + 1) * d);
  float* qs = rows.data();
  float* gs = qs + heads * d;
  float* dq_sum = gs + heads * d;
  float* k_rows = dq_sum + heads * d;
  float* v_rows = k_rows + kTile * d;
  float* out_row = v_rows + kTile * d;
  // Per tile [heads][kTile]: probs holds logits, then probabilities; grads holds g . v, then
  // the logit gradients.
  probs.resize(tiles * heads * kTile);
  grads.resize(tiles * heads * kTile);
  for (int64_t i = 0; i < heads * d; ++i) {
    qs[i] = to_float(q[i]) * scale;
    gs[i] = to_float(g[i]);
    dq_sum[i] = 0;
  }
  const float* k_ptr[kTile];
  const float* v_ptr[kTile];
  auto tile_rows = [&](int64_t tile_index, const T* base, float* scratch, const float** ptr) {
    const int64_t first = tile_index * kTile, size = std::min(kTile, count - first);
    for (int64_t t = 0; t < size; ++t)
      ptr[t] = row_as_float(base + tokens[first + t] * token_stride, scratch + t * d, d);
    return size;
  };
  for (int64_t i = 0; i < tiles; ++i) {
    const int64_t size = tile_rows(i, k, k_rows, k_ptr);
    tile_rows(i, v, v_rows, v_ptr);
    heads_logits(qs, heads, d, k_ptr, size, probs.data() + i * heads * kTile);
    heads_logits(gs, heads, d, v_ptr, size, grads.data() + i * heads * kTile);
  }
  // Softmax per head, then dS = P * (dP - sum(P * dP)).
  for (int64_t j = 0; j < heads; ++j) {
    auto each = [&](auto fn) {
      for (int64_t i = 0; i < tiles; ++i) {
        float* p = probs.data() + (i * heads + j) * kTile;
        float* dp = grads.data() + (i * heads + j) * kTile;
        const int64_t size = std::min(kTile, count - i * kTile);
        for (int64_t t = 0; t < size; ++t) fn(p[t], dp[t]);
      }
    };
    float peak = -std::numeric_limits<float>::infinity();
    each([&](float& p, float&) { peak = std::max(peak, p); });
    // As the forward: a maximum of -inf shifts by 0.
    const float shift = peak == -std::numeric_limits<float>::infinity() ? 0.0f : peak;
    float total = 0;
    each([&](float& p, float&) {
      p = exp_approx(p - shift);
      total += p;
    });
    const float inverse = total > 0 ? 1.0f / total : 0.0f;
    float dot = 0;
    each([&](float& p, float& dp) { dot += (p *= inverse) * dp; });
    each([&](float& p, float& dp) { dp = p * (dp - dot); });
  }
  // dq = scale dS k;  dk[t] = scale dS^T q;  dv[t] = P^T g.
  auto write_row = [&](const float* weights, const float* by, T* out) {
    std::fill(out_row, out_row + d, 0.0f);
    for (int64_t j = 0; j < heads; ++j) {
      const float w = weights[j * kTile];
      for (int64_t e = 0; e < d; ++e) out_row[e] += w * by[j * d + e];
    }
    for (int64_t e = 0; e < d; ++e) out[e] = from_float<T>(out_row[e]);
  };
  for (int64_t i = 0; i < tiles; ++i) {
    const float* p = probs.data() + i * heads * kTile;
    const float* ds = grads.data() + i * heads * kTile;
    const int64_t size = tile_rows(i, k, k_rows, k_ptr);
    heads_accumulate(ds, k_ptr, size, heads, d, dq_sum);
    for (int64_t t = 0; t < size; ++t) {
      const int64_t token = tokens[i * kTile + t];
      write_row(ds + t, qs, dk + token * token_stride);
      write_row(p + t, gs, dv + token * token_stride);
    }
  }
  for (int64_t i = 0; i < heads * d; ++i) dq[i] = from_float<T>(dq_sum[i] * scale);
}

JAX_HETERO_CLONES void gradients(const float* q, const float* g, const float* k, const float* v,
                                 int64_t token_stride, const std::vector<TokenRange>& ranges, int64_t heads,
                                 int64_t d, float scale, float* dq, float* dk, float* dv) {
  pair_gradients(q, g, k, v, token_stride, ranges, heads, d, scale, dq, dk, dv);
}
JAX_HETERO_CLONES void gradients(const bfloat16_bits* q, const bfloat16_bits* g, const bfloat16_bits* k,
                                 const bfloat16_bits* v, int64_t token_stride,
                                 const std::vector<TokenRange>& ranges, int64_t heads, int64_t d, float scale,
                                 bfloat16_bits* dq, bfloat16_bits* dk, bfloat16_bits* dv) {
  pair_gradients(q, g, k, v, token_stride, ranges, heads, d, scale, dq, dk, dv);
}
JAX_HETERO_CLONES void gradients(const float16_bits* q, const float16_bits* g, const float16_bits* k,
                                 const float16_bits* v, int64_t token_stride,
                                 const std::vector<TokenRange>& ranges, int64_t heads, int64_t d, float scale,
                                 float16_bits* dq, float16_bits* dk, float16_bits* dv) {
  pair_gradients(q, g, k, v, token_stride, ranges, heads, d, scale, dq, dk, dv);
}

template <class T>
void backward(const T* q, const T* k, const T* v, const int32_t* block_indices, const int32_t* lengths,
              const T* g, const AttentionShapes& s, float scale, T* dq, T* dk, T* dv) {
  const int64_t group = s.hq / s.hkv, nb = (s.n + s.block_size - 1) / s.block_size;
  const int64_t token_stride = s.hkv * s.d;
  parallel_for(s.batch * s.hkv, [&](int64_t pair) {
    thread_local std::vector<uint64_t> seen;
    thread_local std::vector<TokenRange> ranges;
    if (int64_t(seen.size()) < (nb + 63) / 64) seen.assign((nb + 63) / 64, 0);
    const int64_t b = pair / s.hkv, h = pair % s.hkv;
    const int64_t head_offset = (b * s.n * s.hkv + h) * s.d;
    for (int64_t t = 0; t < s.n; ++t) {  // unselected tokens get zero gradients
      std::memset(dk + head_offset + t * token_stride, 0, s.d * sizeof(T));
      std::memset(dv + head_offset + t * token_stride, 0, s.d * sizeof(T));
    }
    select_token_ranges(block_indices + pair * s.kb, s.kb, s.block_size,
                        std::clamp<int64_t>(lengths[b], 0, s.n), seen, ranges);
    const int64_t q_offset = (b * s.hq + h * group) * s.d;
    gradients(q + q_offset, g + q_offset, k + head_offset, v + head_offset, token_stride, ranges, group,
              s.d, scale, dq + q_offset, dk + head_offset, dv + head_offset);
  });
}

ffi::Error sparse_attention_bwd_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                                    ffi::Buffer<ffi::S32> block_indices, ffi::Buffer<ffi::S32> lengths,
                                    ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dq,
                                    ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                                    int64_t block_size, float scale) {
  AttentionShapes s;
  // No index check: the forward checked (or was told not to, and skipped bad blocks, as here).
  if (ffi::Error err = read_attention_args(kOp, q, k, v, block_indices, lengths, block_size, s,
                                           /*check_indices=*/false); err.failure())
    return err;
  const ffi::DataType type = q.element_type();
  if (!same_shape(g, q) || g.element_type() != type) return op_error(kOp, "g must have q's shape and dtype");
  if (!same_shape(*dq, q) || !same_shape(*dk, k) || !same_shape(*dv, k) || dq->element_type() != type ||
      dk->element_type() != type || dv->element_type() != type)
    return op_error(kOp, "dq must have the shape and dtype of q, dk and dv those of k");
  const int32_t* indices = block_indices.typed_data();
  if (s.batch == 0 || s.d == 0) return ffi::Error::Success();
  return dispatch_float(kOp, "q", type, [&](auto tag) {
    using T = decltype(tag);
    const auto in = [](const ffi::AnyBuffer& buf) { return reinterpret_cast<const T*>(buf.untyped_data()); };
    const auto out = [](ffi::Result<ffi::AnyBuffer>& buf) { return reinterpret_cast<T*>(buf->untyped_data()); };
    backward(in(q), in(k), in(v), indices, lengths.typed_data(), in(g), s, scale, out(dq), out(dk), out(dv));
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseAttentionBwdCpu, sparse_attention_bwd_cpu,
                              sparse_attention_bwd_signature(ffi::Ffi::Bind()));
JAX_HETERO_REGISTER("sparse_attention_bwd", SparseAttentionBwdCpu);

}  // namespace jax_hetero
