// The operands the sparse_attention forward and backward handlers share, read and checked in
// one place so both accept exactly the same inputs and say the same things about bad ones.
#pragma once
#include <algorithm>
#include <cstdint>

#include "common/ffi_util.h"

namespace jax_hetero {

struct AttentionShapes {
  int64_t batch, hq, hkv, d, n, kb, block_size;
};

template <class A, class B>
bool same_shape(const A& a, const B& b) {
  return std::equal(a.dimensions().begin(), a.dimensions().end(), b.dimensions().begin(),
                    b.dimensions().end());
}

// q [..., hq, d], k and v [..., n, hkv, d], block_indices [..., hkv, kb] (-1 or a block of
// k), lengths [...]; q, k and v share a dtype.
inline ffi::Error read_attention_args(const char* op, const ffi::AnyBuffer& q, const ffi::AnyBuffer& k,
                                      const ffi::AnyBuffer& v, const ffi::Buffer<ffi::S32>& block_indices,
                                      const ffi::Buffer<ffi::S32>& lengths, int64_t block_size,
                                      AttentionShapes& s, bool check_indices) {
  if (q.dimensions().size() < 2 || k.dimensions().size() < 3 || block_indices.dimensions().size() < 2)
    return op_error(op, "expected q [..., hq, d], k/v [..., n, hkv, d] and block_indices [..., hkv, kb]");
  s.hq = dim_from_end(q, 1);
  s.d = dim_from_end(q, 0);
  s.n = dim_from_end(k, 2);
  s.hkv = dim_from_end(k, 1);
  s.kb = dim_from_end(block_indices, 0);
  s.block_size = block_size;
  s.batch = leading_size(q, 2);
  if (block_size < 1) return op_error(op, "block_size=", block_size, " must be >= 1");
  if (dim_from_end(k, 0) != s.d || leading_size(k, 3) != s.batch)
    return op_error(op, "k must be [..., n, hkv, d] with q's batch and head dim d=", s.d);
  if (!same_shape(v, k)) return op_error(op, "v must have the shape of k");
  if (s.hkv < 1 || s.hq % s.hkv != 0)
    return op_error(op, "query heads hq=", s.hq, " must be a multiple of the KV heads hkv=", s.hkv);
  if (dim_from_end(block_indices, 1) != s.hkv || leading_size(block_indices, 2) != s.batch)
    return op_error(op, "block_indices must be [..., hkv, kb] with hkv=", s.hkv);
  if (lengths.element_count() != size_t(s.batch))
    return op_error(op, "lengths has ", lengths.element_count(), " entries, expected ", s.batch);
  if (k.element_type() != q.element_type() || v.element_type() != q.element_type())
    return op_error(op, "q, k and v must share a dtype, got ", dtype_name(q.element_type()), ", ",
                    dtype_name(k.element_type()), ", ", dtype_name(v.element_type()));
  if (!check_indices) return ffi::Error::Success();  // select_token_ranges skips bad blocks
  const int64_t nb = (s.n + block_size - 1) / block_size;
  const int32_t* indices = block_indices.typed_data();
  for (size_t i = 0; i < block_indices.element_count(); ++i)
    if (indices[i] < -1 || indices[i] >= nb)
      return data_error(op, "block_indices contains ", indices[i], ", outside [0, ", nb, ") (k has ", nb,
                        " blocks of ", block_size, " tokens); use -1 for an unused slot");
  return ffi::Error::Success();
}

}  // namespace jax_hetero
