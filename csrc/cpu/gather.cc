// CPU handler for gather: out[..., r, :] = table[..., indices[..., r], :], index -1 -> zeros.
// vmap_method is "expand_dims": leading (batch) dims of the table and of the indices may be 1
// where the output's are not, and broadcast.  Rows are copied in parallel, memcpy per row.
#include <algorithm>
#include <atomic>
#include <cstring>
#include <vector>

#include "common/broadcast.h"
#include "common/ffi_util.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr const char* kOp = "gather";

ffi::Error gather_cpu(ffi::AnyBuffer table, ffi::Buffer<ffi::S32> indices, ffi::Result<ffi::AnyBuffer> out,
                      bool check_indices) {
  auto table_dims = table.dimensions(), index_dims = indices.dimensions(), out_dims = out->dimensions();
  if (table_dims.size() < 2 || index_dims.size() < 1 || out_dims.size() < 2)
    return op_error(kOp, "expected table [..., m, F], indices [..., R] and out [..., R, F]");
  if (out->element_type() != table.element_type())
    return op_error(kOp, "output is ", dtype_name(out->element_type()), " but table is ",
                    dtype_name(table.element_type()));
  const int64_t m = dim_from_end(table, 1), features = dim_from_end(table, 0);
  const int64_t rows = dim_from_end(indices, 0);
  if (dim_from_end(*out, 0) != features || dim_from_end(*out, 1) != rows)
    return op_error(kOp, "output rows must be [", rows, ", ", features, "]");
  const auto out_batch = ffi::Span<const int64_t>(out_dims.begin(), out_dims.size() - 2);
  std::vector<int64_t> table_offset, index_offset;
  if (auto e = batch_offsets(kOp, "table", table_dims, 2, out_batch, table_offset); e.failure()) return e;
  if (auto e = batch_offsets(kOp, "indices", index_dims, 1, out_batch, index_offset); e.failure()) return e;

  const size_t row_bytes = ffi::ByteWidth(table.element_type()) * size_t(features);
  const auto* src = static_cast<const char*>(table.untyped_data());
  auto* dst = static_cast<char*>(out->untyped_data());
  const int32_t* idx = indices.typed_data();
  const int64_t total_rows = int64_t(table_offset.size()) * rows;
  // About 256 KiB of copying per task.
  const int64_t rows_per_task = std::max<int64_t>(1, int64_t((size_t(1) << 18) / std::max<size_t>(row_bytes, 1)));
  const int64_t tasks = (total_rows + rows_per_task - 1) / rows_per_task;
  std::atomic<int64_t> first_bad{INT64_MAX};  // lowest flat output row with a bad index
  parallel_for(tasks, [&](int64_t task) {
    const int64_t begin = task * rows_per_task, end = std::min(total_rows, begin + rows_per_task);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t batch = row / rows, r = row % rows;
      const int32_t i = idx[index_offset[batch] * rows + r];
      char* to = dst + row * row_bytes;
      if (i >= 0 && i < m) {
        std::memcpy(to, src + (table_offset[batch] * m + i) * row_bytes, row_bytes);
        continue;
      }
      std::memset(to, 0, row_bytes);
      if (check_indices && i != -1) {
        int64_t seen = first_bad.load();
        while (row < seen && !first_bad.compare_exchange_weak(seen, row)) {}
      }
    }
  });
  if (const int64_t row = first_bad.load(); row != INT64_MAX) {
    const int64_t batch = row / rows, r = row % rows;
    return data_error(kOp, "indices contains ", idx[index_offset[batch] * rows + r], " (at row ", r,
                    " of batch element ", batch, "), outside [0, ", m, ") (table has m=", m,
                    " rows); use -1 for an unused slot");
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatherCpu, gather_cpu, gather_signature(ffi::Ffi::Bind()));
JAX_HETERO_REGISTER("gather", GatherCpu);

}  // namespace jax_hetero
