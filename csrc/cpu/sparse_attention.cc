// CPU handler for sparse_attention: decode attention of each query head over the selected
// blocks of its KV head.  Work is spread over (batch, KV head) pairs; when there are too few
// pairs to keep every thread busy, each pair's tokens are split into parts whose softmax
// states are merged by log-sum-exp.
#include <algorithm>
#include <vector>

#include "common/attention.h"
#include "common/ffi_util.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/signatures.h"
#include "cpu/attention_args.h"

namespace jax_hetero {
namespace {

constexpr const char* kOp = "sparse_attention";
// A part smaller than this costs more in scheduling and merging than it saves.
constexpr int64_t kMinTokensPerPart = 512;

JAX_HETERO_CLONES void attend(const float* q, const float* k, const float* v, int64_t token_stride,
                              const TokenRange* ranges, int64_t num_ranges, SoftmaxState& state) {
  attend_ranges(q, k, v, token_stride, ranges, num_ranges, state);
}
JAX_HETERO_CLONES void attend(const float* q, const bfloat16_bits* k, const bfloat16_bits* v,
                              int64_t token_stride, const TokenRange* ranges, int64_t num_ranges,
                              SoftmaxState& state) {
  attend_ranges(q, k, v, token_stride, ranges, num_ranges, state);
}
JAX_HETERO_CLONES void attend(const float* q, const float16_bits* k, const float16_bits* v,
                              int64_t token_stride, const TokenRange* ranges, int64_t num_ranges,
                              SoftmaxState& state) {
  attend_ranges(q, k, v, token_stride, ranges, num_ranges, state);
}

// The ranges covering tokens [lo, hi) of the concatenation of `ranges`.
void part_of(const std::vector<TokenRange>& ranges, int64_t lo, int64_t hi,
             std::vector<TokenRange>& out) {
  out.clear();
  int64_t offset = 0;
  for (const TokenRange& r : ranges) {
    const int64_t size = r.end - r.begin;
    const int64_t from = std::max(lo, offset), to = std::min(hi, offset + size);
    if (from < to) out.push_back({r.begin + (from - offset), r.begin + (to - offset)});
    offset += size;
    if (offset >= hi) break;
  }
}

template <class T>
void attention(const T* q, const T* k, const T* v, const int32_t* block_indices,
               const int32_t* lengths, const AttentionShapes& s, float scale, T* out) {
  const int64_t pairs = s.batch * s.hkv, group = s.hq / s.hkv, nb = (s.n + s.block_size - 1) / s.block_size;
  // Token ranges of every pair first: their sizes decide how to split the work.
  std::vector<std::vector<TokenRange>> ranges(pairs);
  std::vector<int64_t> tokens(pairs, 0);
  parallel_for(pairs, [&](int64_t pair) {
    thread_local std::vector<uint64_t> seen;
    if (int64_t(seen.size()) < (nb + 63) / 64) seen.assign((nb + 63) / 64, 0);
    const int64_t b = pair / s.hkv;
    const int64_t limit = std::clamp<int64_t>(lengths[b], 0, s.n);
    select_token_ranges(block_indices + pair * s.kb, s.kb, s.block_size, limit, seen, ranges[pair]);
    for (const TokenRange& r : ranges[pair]) tokens[pair] += r.end - r.begin;
  });
  const int64_t threads = ThreadPool::instance().num_threads();
  const int64_t most = *std::max_element(tokens.begin(), tokens.end());
  // Enough tasks for about four per thread (dynamic scheduling evens out the rest).
  const int64_t parts = std::clamp<int64_t>((4 * threads + pairs - 1) / pairs, 1,
                                            std::max<int64_t>(1, most / kMinTokensPerPart));
  std::vector<SoftmaxState> states(pairs * parts);
  parallel_for(pairs * parts, [&](int64_t task) {
    const int64_t pair = task / parts, part = task % parts;
    const int64_t b = pair / s.hkv, h = pair % s.hkv;
    thread_local std::vector<float> q_scaled;
    thread_local std::vector<TokenRange> mine;
    q_scaled.resize(group * s.d);
    const T* q_group = q + (b * s.hq + h * group) * s.d;
    for (int64_t i = 0; i < group * s.d; ++i) q_scaled[i] = to_float(q_group[i]) * scale;
    part_of(ranges[pair], tokens[pair] * part / parts, tokens[pair] * (part + 1) / parts, mine);
    SoftmaxState& state = states[task];
    state.reset(group, s.d);
    const int64_t head_offset = (b * s.n * s.hkv + h) * s.d;
    attend(q_scaled.data(), k + head_offset, v + head_offset, s.hkv * s.d, mine.data(),
                  int64_t(mine.size()), state);
    if (parts == 1) merge_states(&state, 1, out + (b * s.hq + h * group) * s.d);
  });
  if (parts == 1) return;
  parallel_for(pairs, [&](int64_t pair) {
    const int64_t b = pair / s.hkv, h = pair % s.hkv;
    merge_states(&states[pair * parts], parts, out + (b * s.hq + h * group) * s.d);
  });
}

ffi::Error sparse_attention_cpu(ffi::AnyBuffer q, ffi::AnyBuffer k, ffi::AnyBuffer v,
                                ffi::Buffer<ffi::S32> block_indices, ffi::Buffer<ffi::S32> lengths,
                                ffi::Result<ffi::AnyBuffer> out, int64_t block_size, float scale,
                                bool check_indices) {
  AttentionShapes s;
  if (ffi::Error err = read_attention_args(kOp, q, k, v, block_indices, lengths, block_size, s, check_indices);
      err.failure())
    return err;
  if (out->element_type() != q.element_type() || !same_shape(*out, q))
    return op_error(kOp, "the output must have q's shape and dtype");
  const int32_t* indices = block_indices.typed_data();
  if (s.batch == 0 || s.hq == 0 || s.d == 0) return ffi::Error::Success();
  return dispatch_float(kOp, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    attention(reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(k.untyped_data()),
              reinterpret_cast<const T*>(v.untyped_data()), indices, lengths.typed_data(), s, scale,
              reinterpret_cast<T*>(out->untyped_data()));
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseAttentionCpu, sparse_attention_cpu,
                              sparse_attention_signature(ffi::Ffi::Bind()));
JAX_HETERO_REGISTER("sparse_attention", SparseAttentionCpu);

}  // namespace jax_hetero
