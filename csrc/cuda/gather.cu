// CUDA handler for gather: out[b, r, :] = table[b', indices[b, r], :] (zeros for -1), where
// b' broadcasts the table's batch dimensions of size 1 (vmap_method="expand_dims").
// An index outside [-1, m) sets a device flag that is copied back after the kernel; that
// check costs one device-to-host copy and a stream synchronisation per call.
#include "common/registry.h"
#include "cuda/cuda_util.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr int kMaxBatchDims = 8;
constexpr int kGatherThreads = 256;

struct BatchMap {  // output batch index -> table batch index
  int dims;
  int64_t size[kMaxBatchDims];
  int64_t table_stride[kMaxBatchDims];  // 0 where the table's dimension is 1
};

template <class Unit>
__global__ void gather_kernel(const Unit* table, const int32_t* indices, Unit* out, BatchMap map,
                              int64_t batches, int64_t rows_per_batch, int64_t m, int64_t units,
                              int group, int* bad) {
  const int groups_per_block = kGatherThreads / group;
  const int g = threadIdx.x / group, t = threadIdx.x % group;
  const int64_t total_rows = batches * rows_per_batch;
  for (int64_t r = int64_t(blockIdx.x) * groups_per_block + g; r < total_rows;
       r += int64_t(gridDim.x) * groups_per_block) {
    const int32_t index = indices[r];
    Unit* dst = out + r * units;
    if (index < 0 || index >= m) {  // -1, or out of range: a zero row (and a report if checked)
      for (int64_t u = t; u < units; u += group) dst[u] = Unit{};
      if (index != -1 && bad != nullptr && t == 0) {
        atomicExch(bad, 1);
        atomicExch(bad + 1, index);
      }
      continue;
    }
    int64_t b = r / rows_per_batch, table_batch = 0;
    for (int d = map.dims - 1; d >= 0; --d) {
      table_batch += (b % map.size[d]) * map.table_stride[d];
      b /= map.size[d];
    }
    const Unit* src = table + (table_batch * m + index) * units;
    for (int64_t u = t; u < units; u += group) dst[u] = src[u];
  }
}

template <class Unit>
ffi::Error launch_gather(cudaStream_t stream, const void* table, const int32_t* indices, void* out,
                         const BatchMap& map, int64_t batches, int64_t rows, int64_t m, int64_t row_bytes,
                         int sms, int* bad) {
  const int64_t units = row_bytes / int64_t(sizeof(Unit));
  const int group = units >= 4 * 32 ? kGatherThreads : 32;  // a block per long row, a warp per short
  const int64_t total_rows = batches * rows;
  const int64_t blocks = std::min<int64_t>((total_rows + kGatherThreads / group - 1) / (kGatherThreads / group),
                                           int64_t(sms) * 16);
  gather_kernel<Unit><<<unsigned(std::max<int64_t>(blocks, 1)), kGatherThreads, 0, stream>>>(
      static_cast<const Unit*>(table), indices, static_cast<Unit*>(out), map, batches, rows, m, units, group, bad);
  JH_CUDA_CHECK("gather", cudaGetLastError());
  return ffi::Error::Success();
}

ffi::Error gather_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer table,
                       ffi::Buffer<ffi::S32> indices, ffi::Result<ffi::AnyBuffer> out, bool check_indices) {
  const char* op = "gather";
  auto tdims = table.dimensions();
  auto idims = indices.dimensions();
  if (tdims.size() < 2 || idims.size() < 1)
    return op_error(op, "expected table [..., m, F] and indices [..., R]");
  const size_t tb = tdims.size() - 2, ib = idims.size() - 1;
  if (tb > ib || ib > size_t(kMaxBatchDims))
    return op_error(op, "table has ", tb, " batch dimensions and indices ", ib, "; expected at most as many, <= ",
                    kMaxBatchDims);
  const int64_t m = tdims[tb], features = tdims[tb + 1], rows = idims[ib];
  const int64_t batches = product(idims, 0, ib);
  BatchMap map{};
  map.dims = int(ib);
  int64_t stride = 1;
  for (int d = int(ib) - 1; d >= 0; --d) {
    map.size[d] = idims[d];
    const int td = d - int(ib - tb);  // table dims align to the right
    const int64_t tsize = td >= 0 ? tdims[td] : 1;
    if (tsize != 1 && tsize != idims[d])
      return op_error(op, "table batch dimension ", tsize, " does not broadcast to indices' ", idims[d]);
    map.table_stride[d] = tsize == 1 ? 0 : stride;
    stride *= tsize;
  }
  const int64_t esize = int64_t(ffi::ByteWidth(table.element_type()));
  const int64_t row_bytes = features * esize;
  if (batches * rows == 0 || row_bytes == 0) return ffi::Error::Success();
  if (m == 0) return op_error(op, "table has no rows but indices are not empty");
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(op, stream, &dev));
  int* bad = nullptr;  // the check's flag: only a checked call pays for reading it back
  if (check_indices) {
    DeviceScratch scratch{*site, dev.device};
    JH_RETURN_IF_ERROR(zeroed_index_flag(op, stream, scratch, &bad));
  }
  const void* src = table.untyped_data();
  void* dst = out->untyped_data();
  ffi::Error launched = ffi::Error::Success();
  if (row_bytes % 16 == 0) launched = launch_gather<uint4>(stream, src, indices.typed_data(), dst, map, batches, rows, m, row_bytes, dev.sms, bad);
  else if (row_bytes % 8 == 0) launched = launch_gather<uint2>(stream, src, indices.typed_data(), dst, map, batches, rows, m, row_bytes, dev.sms, bad);
  else if (row_bytes % 4 == 0) launched = launch_gather<uint32_t>(stream, src, indices.typed_data(), dst, map, batches, rows, m, row_bytes, dev.sms, bad);
  else launched = launch_gather<uint16_t>(stream, src, indices.typed_data(), dst, map, batches, rows, m, row_bytes, dev.sms, bad);
  JH_RETURN_IF_ERROR(launched);
  if (!check_indices) return ffi::Error::Success();
  return read_index_check(op, stream, bad, "indices", m, "table has " + std::to_string(m) + " rows");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatherCuda, gather_cuda,
                              gather_signature(bind_stream_and_scratch()));
JAX_HETERO_REGISTER("gather", GatherCuda);
// Called with check_indices=false only: no host synchronisation, so XLA may trace it.
JAX_HETERO_REGISTER_GRAPH_SAFE("gather_unchecked", GatherCuda);

}  // namespace jax_hetero
