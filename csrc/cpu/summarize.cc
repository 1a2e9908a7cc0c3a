// CPU handlers for summarize_minmax and summarize_mean: per-block min/max or mean of the
// keys k [..., n, hkv, d] over the tokens < the row's valid count; an empty block gives
// zeros.  Every leading dim (b included) is batch; (row, block) pairs run in parallel.
#include <algorithm>
#include <vector>

#include "common/ffi_util.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/score_driver.h"
#include "common/score_kernels.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr const char* kOp = "summarize";

struct Shape {
  int64_t rows, n, features, block_size, blocks;
};

ffi::Error check(ffi::AnyBuffer k, ffi::Buffer<ffi::S32> lengths, int64_t block_size,
                 std::initializer_list<ffi::AnyBuffer*> outs, Shape& s) {
  if (k.dimensions().size() < 3) return op_error(kOp, "k must be [..., n, hkv, d]");
  if (block_size < 1) return op_error(kOp, "block_size=", block_size, " must be >= 1");
  s.rows = leading_size(k, 3);
  s.n = dim_from_end(k, 2);
  s.features = dim_from_end(k, 1) * dim_from_end(k, 0);
  s.block_size = block_size;
  s.blocks = (s.n + block_size - 1) / block_size;
  if (int64_t(lengths.element_count()) != s.rows)
    return op_error(kOp, "lengths has ", lengths.element_count(), " entries, expected ", s.rows);
  for (ffi::AnyBuffer* out : outs) {
    if (out->element_type() != k.element_type() ||
        int64_t(out->element_count()) != s.rows * s.blocks * s.features)
      return op_error(kOp, "each output must be [..., nb=", s.blocks, ", hkv, d] of k's dtype");
  }
  return ffi::Error::Success();
}

// Calls fn(row, block, first, end) for the valid tokens [first, end) of every block.
template <class Fn>
void for_blocks(const Shape& s, const int32_t* lengths, Fn&& fn) {
  const unsigned fp_mode = _mm_getcsr();
  parallel_for(s.rows * s.blocks, [&](int64_t task) {
    const ScopedFpMode mode(fp_mode);  // the caller's denormal handling on every thread
    const int64_t row = task / s.blocks, block = task % s.blocks;
    const int64_t valid = std::clamp<int64_t>(lengths[row], 0, s.n);
    const int64_t first = block * s.block_size;
    fn(row, block, first, std::max(first, std::min(valid, first + s.block_size)));
  });
}

template <class T>
void minmax_blocks(const Shape& s, const T* k, const int32_t* lengths, T* lo, T* hi) {
  for_blocks(s, lengths, [&](int64_t row, int64_t block, int64_t first, int64_t end) {
    std::vector<float> mn(s.features, 0.0f), mx(s.features, 0.0f), nan(s.features, 0.0f), buf(s.features);
    if (first < end) {
      const float* x = scoring::as_float(k + (row * s.n + first) * s.features, s.features, buf.data());
      for (int64_t f = 0; f < s.features; ++f) mn[f] = mx[f] = nan[f] = x[f];
    }
    for (int64_t t = first + 1; t < end; ++t) {
      const float* x = scoring::as_float(k + (row * s.n + t) * s.features, s.features, buf.data());
      // One comparison per select keeps the loop vectorised; NaNs are tracked on the side.
      for (int64_t f = 0; f < s.features; ++f) {
        const float v = x[f];
        mn[f] = v < mn[f] ? v : mn[f];
        mx[f] = v > mx[f] ? v : mx[f];
        nan[f] = v != v ? v : nan[f];
      }
    }
    T* lo_out = lo + (row * s.blocks + block) * s.features;
    T* hi_out = hi + (row * s.blocks + block) * s.features;
    for (int64_t f = 0; f < s.features; ++f) {  // NaN propagates, as in jnp.min / jnp.max
      lo_out[f] = from_float<T>(nan[f] != nan[f] ? nan[f] : mn[f]);
      hi_out[f] = from_float<T>(nan[f] != nan[f] ? nan[f] : mx[f]);
    }
  });
}

template <class T>
void mean_blocks(const Shape& s, const T* k, const int32_t* lengths, T* mean) {
  for_blocks(s, lengths, [&](int64_t row, int64_t block, int64_t first, int64_t end) {
    std::vector<float> sum(s.features, 0.0f), buf(s.features);
    for (int64_t t = first; t < end; ++t) {
      const float* x = scoring::as_float(k + (row * s.n + t) * s.features, s.features, buf.data());
      for (int64_t f = 0; f < s.features; ++f) sum[f] += x[f];
    }
    const float count = float(std::max<int64_t>(end - first, 1));
    T* out = mean + (row * s.blocks + block) * s.features;
    for (int64_t f = 0; f < s.features; ++f) out[f] = from_float<T>(sum[f] / count);
  });
}

ffi::Error summarize_minmax_cpu(ffi::AnyBuffer k, ffi::Buffer<ffi::S32> lengths,
                                ffi::Result<ffi::AnyBuffer> lo, ffi::Result<ffi::AnyBuffer> hi,
                                int64_t block_size) {
  Shape s;
  if (auto e = check(k, lengths, block_size, {&*lo, &*hi}, s); e.failure()) return e;
  return dispatch_float(kOp, "k", k.element_type(), [&](auto tag) {
    using T = decltype(tag);
    minmax_blocks(s, reinterpret_cast<const T*>(k.untyped_data()), lengths.typed_data(),
                  reinterpret_cast<T*>(lo->untyped_data()), reinterpret_cast<T*>(hi->untyped_data()));
    return ffi::Error::Success();
  });
}

ffi::Error summarize_mean_cpu(ffi::AnyBuffer k, ffi::Buffer<ffi::S32> lengths,
                              ffi::Result<ffi::AnyBuffer> mean, int64_t block_size) {
  Shape s;
  if (auto e = check(k, lengths, block_size, {&*mean}, s); e.failure()) return e;
  return dispatch_float(kOp, "k", k.element_type(), [&](auto tag) {
    using T = decltype(tag);
    mean_blocks(s, reinterpret_cast<const T*>(k.untyped_data()), lengths.typed_data(),
                reinterpret_cast<T*>(mean->untyped_data()));
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SummarizeMinmaxCpu, summarize_minmax_cpu,
                              summarize_minmax_signature(ffi::Ffi::Bind()));
XLA_FFI_DEFINE_HANDLER_SYMBOL(SummarizeMeanCpu, summarize_mean_cpu,
                              summarize_mean_signature(ffi::Ffi::Bind()));
JAX_HETERO_REGISTER("summarize_minmax", SummarizeMinmaxCpu);
JAX_HETERO_REGISTER("summarize_mean", SummarizeMeanCpu);

}  // namespace jax_hetero
