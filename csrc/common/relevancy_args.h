// Operand checks shared by the relevancy and indexer handlers: validates the buffers of one
// call and hands a typed scorer (common/score_kernels.h) to the caller.  Errors name the op.
#pragma once
#include <cstdint>

#include "common/ffi_util.h"
#include "common/score_kernels.h"

namespace jax_hetero {

inline ffi::Error check_same_dtype(const char* op, const char* name, ffi::AnyBuffer q, ffi::AnyBuffer mem) {
  if (q.element_type() == mem.element_type()) return ffi::Error::Success();
  return op_error(op, "q is ", dtype_name(q.element_type()), " but ", name, " is ",
                  dtype_name(mem.element_type()), "; cast one to match");
}

inline ffi::Error check_rank(const char* op, const char* name, size_t rank, size_t min_rank) {
  if (rank >= min_rank) return ffi::Error::Success();
  return op_error(op, name, " has rank ", rank, ", expected at least ", min_rank);
}

// Shared checks of the block kinds: q [B, hq, d] and block memory [B, nb, hkv, d].
inline ffi::Error check_block_operands(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer mem,
                                       ffi::Buffer<ffi::S32> valid) {
  if (auto e = check_rank(op, "q", q.dimensions().size(), 2); e.failure()) return e;
  if (auto e = check_rank(op, "memory", mem.dimensions().size(), 3); e.failure()) return e;
  if (auto e = check_same_dtype(op, "memory", q, mem); e.failure()) return e;
  const int64_t batch = leading_size(q, 2);
  if (leading_size(mem, 3) != batch)
    return op_error(op, "memory has ", leading_size(mem, 3), " batch rows, q has ", batch);
  if (int64_t(valid.element_count()) != batch)
    return op_error(op, "valid counts have ", valid.element_count(), " entries, expected ", batch);
  if (dim_from_end(mem, 0) != dim_from_end(q, 0))
    return op_error(op, "memory feature dim ", dim_from_end(mem, 0), " differs from q's ", dim_from_end(q, 0));
  const int64_t hq = dim_from_end(q, 1), hkv = dim_from_end(mem, 1);
  if (hkv < 1 || hq % hkv != 0)
    return op_error(op, "query heads hq=", hq, " must be a multiple of the KV heads hkv=", hkv);
  return ffi::Error::Success();
}

template <class Fn>
ffi::Error with_dot_scorer(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer summary,
                           ffi::Buffer<ffi::S32> valid, Fn&& fn) {
  if (auto e = check_block_operands(op, q, summary, valid); e.failure()) return e;
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const scoring::DotScorer<T> scorer{
        reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(summary.untyped_data()),
        leading_size(q, 2), dim_from_end(q, 1), dim_from_end(summary, 1), dim_from_end(summary, 2),
        dim_from_end(q, 0)};
    return fn(scorer);
  });
}

template <class Fn>
ffi::Error with_quest_scorer(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                             ffi::Buffer<ffi::S32> valid, Fn&& fn) {
  if (auto e = check_block_operands(op, q, lo, valid); e.failure()) return e;
  if (auto e = check_same_dtype(op, "memory[1]", q, hi); e.failure()) return e;
  auto lo_dims = lo.dimensions(), hi_dims = hi.dimensions();
  bool same = lo_dims.size() == hi_dims.size();
  for (size_t i = 0; same && i < lo_dims.size(); ++i) same = lo_dims[i] == hi_dims[i];
  if (!same) return op_error(op, "memory[1] (max) must have the shape of memory[0] (min)");
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const scoring::QuestScorer<T> scorer{
        reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(lo.untyped_data()),
        reinterpret_cast<const T*>(hi.untyped_data()), leading_size(q, 2), dim_from_end(q, 1),
        dim_from_end(lo, 1), dim_from_end(lo, 2), dim_from_end(q, 0)};
    return fn(scorer);
  });
}

// q [B, h, di], keys [B, n, di], weights float32 [B, h].
template <class Fn>
ffi::Error with_dsa_scorer(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer keys,
                           ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::S32> valid, Fn&& fn) {
  if (auto e = check_rank(op, "q", q.dimensions().size(), 2); e.failure()) return e;
  if (auto e = check_rank(op, "memory", keys.dimensions().size(), 2); e.failure()) return e;
  if (auto e = check_rank(op, "weights", weights.dimensions().size(), 1); e.failure()) return e;
  if (auto e = check_same_dtype(op, "memory", q, keys); e.failure()) return e;
  const int64_t batch = leading_size(q, 2), heads = dim_from_end(q, 1);
  if (leading_size(keys, 2) != batch)
    return op_error(op, "memory has ", leading_size(keys, 2), " batch rows, q has ", batch);
  if (int64_t(valid.element_count()) != batch)
    return op_error(op, "valid counts have ", valid.element_count(), " entries, expected ", batch);
  if (dim_from_end(keys, 0) != dim_from_end(q, 0))
    return op_error(op, "memory feature dim ", dim_from_end(keys, 0), " differs from q's ", dim_from_end(q, 0));
  if (leading_size(weights, 1) != batch || dim_from_end(weights, 0) != heads)
    return op_error(op, "weights must be [batch=", batch, ", heads=", heads, "], got ",
                    weights.element_count(), " elements");
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const scoring::DsaScorer<T> scorer{
        reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(keys.untyped_data()),
        weights.typed_data(), batch, heads, dim_from_end(keys, 1), dim_from_end(q, 0)};
    return fn(scorer);
  });
}

}  // namespace jax_hetero
