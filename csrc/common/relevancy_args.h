// Operand checks shared by the relevancy and indexer handlers: validates the buffers of one
// call, maps the operands' batch elements onto the output's (vmap_method="expand_dims": a
// memory shared by a vmapped batch of queries is read in place, never copied) and hands a
// typed scorer (common/score_kernels.h) and the valid count of every output batch element
// to the caller.  Errors name the op.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>

#include "common/broadcast.h"
#include "common/ffi_util.h"
#include "common/score_kernels.h"

namespace jax_hetero {

// Each operand's batch element for every output batch element, and the valid counts.
struct BatchPlan {
  std::vector<int64_t> q_of, mem_of;
  std::vector<int32_t> valid;
  int64_t batch() const { return int64_t(q_of.size()); }
};

inline ffi::Error plan_batches(const char* op, ffi::AnyBuffer q, size_t q_core, ffi::AnyBuffer mem, size_t mem_core,
                               ffi::Buffer<ffi::S32> valid, ffi::Span<const int64_t> out_batch, BatchPlan& plan) {
  std::vector<int64_t> valid_of;
  if (auto e = batch_offsets(op, "q", q.dimensions(), q_core, out_batch, plan.q_of); e.failure()) return e;
  if (auto e = batch_offsets(op, "memory", mem.dimensions(), mem_core, out_batch, plan.mem_of); e.failure()) return e;
  if (auto e = batch_offsets(op, "valid counts", valid.dimensions(), 0, out_batch, valid_of); e.failure()) return e;
  plan.valid.resize(valid_of.size());
  for (size_t i = 0; i < valid_of.size(); ++i) plan.valid[i] = valid.typed_data()[valid_of[i]];
  return ffi::Error::Success();
}

inline ffi::Error check_same_dtype(const char* op, const char* name, ffi::AnyBuffer q, ffi::AnyBuffer mem) {
  if (q.element_type() == mem.element_type()) return ffi::Error::Success();
  return op_error(op, "q is ", dtype_name(q.element_type()), " but ", name, " is ",
                  dtype_name(mem.element_type()), "; cast one to match");
}

inline ffi::Error check_rank(const char* op, const char* name, size_t rank, size_t min_rank) {
  if (rank >= min_rank) return ffi::Error::Success();
  return op_error(op, name, " has rank ", rank, ", expected at least ", min_rank);
}

// Shared checks of the block kinds: q [*, hq, d] and block memory [*, nb, hkv, d]; out_batch:
// the output's batch dims.
inline ffi::Error check_block_operands(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer mem,
                                       ffi::Buffer<ffi::S32> valid, ffi::Span<const int64_t> out_batch,
                                       BatchPlan& plan) {
  if (auto e = check_rank(op, "q", q.dimensions().size(), 2); e.failure()) return e;
  if (auto e = check_rank(op, "memory", mem.dimensions().size(), 3); e.failure()) return e;
  if (auto e = check_same_dtype(op, "memory", q, mem); e.failure()) return e;
  if (auto e = plan_batches(op, q, 2, mem, 3, valid, out_batch, plan); e.failure()) return e;
  if (dim_from_end(mem, 0) != dim_from_end(q, 0))
    return op_error(op, "memory feature dim ", dim_from_end(mem, 0), " differs from q's ", dim_from_end(q, 0));
  const int64_t hq = dim_from_end(q, 1), hkv = dim_from_end(mem, 1);
  if (hkv < 1 || hq % hkv != 0)
    return op_error(op, "query heads hq=", hq, " must be a multiple of the KV heads hkv=", hkv);
  return ffi::Error::Success();
}

// fn(scorer, valid counts of the output's batch elements).
template <class Fn>
ffi::Error with_dot_scorer(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer summary, ffi::Buffer<ffi::S32> valid,
                           ffi::Span<const int64_t> out_batch, Fn&& fn) {
  BatchPlan plan;
  if (auto e = check_block_operands(op, q, summary, valid, out_batch, plan); e.failure()) return e;
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const scoring::DotScorer<T> scorer{
        reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(summary.untyped_data()),
        plan.q_of.data(), plan.mem_of.data(), plan.batch(), dim_from_end(q, 1), dim_from_end(summary, 1),
        dim_from_end(summary, 2), dim_from_end(q, 0)};
    return fn(scorer, plan.valid.data());
  });
}

template <class Fn>
ffi::Error with_quest_scorer(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                             ffi::Buffer<ffi::S32> valid, ffi::Span<const int64_t> out_batch, Fn&& fn) {
  BatchPlan plan;
  if (auto e = check_block_operands(op, q, lo, valid, out_batch, plan); e.failure()) return e;
  if (auto e = check_same_dtype(op, "memory[1]", q, hi); e.failure()) return e;
  auto lo_dims = lo.dimensions(), hi_dims = hi.dimensions();
  bool same = lo_dims.size() == hi_dims.size();
  for (size_t i = 0; same && i < lo_dims.size(); ++i) same = lo_dims[i] == hi_dims[i];
  if (!same) return op_error(op, "memory[1] (max) must have the shape of memory[0] (min)");
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const scoring::QuestScorer<T> scorer{
        reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(lo.untyped_data()),
        reinterpret_cast<const T*>(hi.untyped_data()), plan.q_of.data(), plan.mem_of.data(), plan.batch(),
        dim_from_end(q, 1), dim_from_end(lo, 1), dim_from_end(lo, 2), dim_from_end(q, 0)};
    return fn(scorer, plan.valid.data());
  });
}

// q [*, h, di], keys [*, n, di], weights float32 [*, h].
template <class Fn>
ffi::Error with_dsa_scorer(const char* op, ffi::AnyBuffer q, ffi::AnyBuffer keys, ffi::Buffer<ffi::F32> weights,
                           ffi::Buffer<ffi::S32> valid, ffi::Span<const int64_t> out_batch, Fn&& fn) {
  if (auto e = check_rank(op, "q", q.dimensions().size(), 2); e.failure()) return e;
  if (auto e = check_rank(op, "memory", keys.dimensions().size(), 2); e.failure()) return e;
  if (auto e = check_rank(op, "weights", weights.dimensions().size(), 1); e.failure()) return e;
  if (auto e = check_same_dtype(op, "memory", q, keys); e.failure()) return e;
  BatchPlan plan;
  if (auto e = plan_batches(op, q, 2, keys, 2, valid, out_batch, plan); e.failure()) return e;
  const int64_t heads = dim_from_end(q, 1);
  if (dim_from_end(keys, 0) != dim_from_end(q, 0))
    return op_error(op, "memory feature dim ", dim_from_end(keys, 0), " differs from q's ", dim_from_end(q, 0));
  if (dim_from_end(weights, 0) != heads)
    return op_error(op, "weights must be [..., heads=", heads, "], got last dim ", dim_from_end(weights, 0));
  std::vector<int64_t> weights_of;
  if (auto e = batch_offsets(op, "weights", weights.dimensions(), 1, out_batch, weights_of); e.failure()) return e;
  std::vector<float> w(weights_of.size() * heads);
  for (size_t b = 0; b < weights_of.size(); ++b)
    std::copy_n(weights.typed_data() + weights_of[b] * heads, heads, w.begin() + b * heads);
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const scoring::DsaScorer<T> scorer{
        reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(keys.untyped_data()), w.data(),
        plan.q_of.data(), plan.mem_of.data(), plan.batch(), heads, dim_from_end(keys, 1), dim_from_end(q, 0)};
    return fn(scorer, plan.valid.data());
  });
}

}  // namespace jax_hetero
