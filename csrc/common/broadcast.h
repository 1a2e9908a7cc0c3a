// Batch broadcasting of FFI operands, as vmap_method="expand_dims" hands them to a handler:
// an operand's leading (batch) dims, before its `core_rank` own dims, are right-aligned
// against the output's batch dims, and its size-1 dims broadcast.  So a vmap over queries
// against one shared memory never copies the memory.
#pragma once
#include <cstdint>
#include <vector>

#include "common/ffi_util.h"

namespace jax_hetero {

// offsets[i] = the operand's batch element (in units of one element of its core dims) that
// serves output batch element i (flat, last dim fastest).
inline ffi::Error batch_offsets(const char* op, const char* arg, ffi::Span<const int64_t> dims, size_t core_rank,
                                ffi::Span<const int64_t> out_batch, std::vector<int64_t>& offsets) {
  if (dims.size() < core_rank) return op_error(op, arg, " has rank ", dims.size(), ", expected at least ", core_rank);
  const size_t rank = dims.size() - core_rank, out_rank = out_batch.size();
  if (rank > out_rank)
    return op_error(op, arg, " has ", rank, " leading dims, the output only ", out_rank);
  std::vector<int64_t> stride(out_rank, 0);  // operand stride along each output dim (0 = broadcast)
  int64_t s = 1;
  for (size_t i = rank; i-- > 0;) {
    const size_t o = out_rank - rank + i;
    if (dims[i] != 1 && dims[i] != out_batch[o])
      return op_error(op, arg, " leading dim ", i, " is ", dims[i], ", expected 1 or ", out_batch[o]);
    stride[o] = dims[i] == 1 ? 0 : s;
    s *= dims[i];
  }
  const int64_t total = product(out_batch, 0, out_rank);
  offsets.assign(total, 0);
  std::vector<int64_t> coord(out_rank, 0);
  for (int64_t flat = 0; flat < total; ++flat) {
    int64_t off = 0;
    for (size_t o = 0; o < out_rank; ++o) off += coord[o] * stride[o];
    offsets[flat] = off;
    for (size_t o = out_rank; o-- > 0;) {  // next coordinate, last dim fastest
      if (++coord[o] < out_batch[o]) break;
      coord[o] = 0;
    }
  }
  return ffi::Error::Success();
}

// The output's batch dims: all but its last `core_rank`.
template <class Buf>
ffi::Span<const int64_t> batch_dims(const Buf& out, size_t core_rank) {
  auto dims = out.dimensions();
  return ffi::Span<const int64_t>(dims.begin(), dims.size() - core_rank);
}

}  // namespace jax_hetero
