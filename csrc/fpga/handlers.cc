// FFI handlers of the FPGA backend.  One symbol per target serves both XLA platforms it is
// registered for: on "CUDA" the call context carries a stream and the operands are GPU
// buffers (copied GPU <-> host on that stream around the bridge call); on "cpu" there is no
// stream and the operands are host arrays used in place.
#include <exception>
#include <new>
#include <vector>

#include "common/ffi_util.h"
#include "common/registry.h"
#include "fpga/bridge.h"
#include "fpga/gpu_copy.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

using fpga::DeviceError;
using fpga::ElementType;

ffi::Error to_ffi(const DeviceError& e) {
  switch (e.code()) {
    case DeviceError::Code::kInvalidArgument: return ffi::Error(ffi::ErrorCode::kInvalidArgument, e.what());
    case DeviceError::Code::kUnavailable: return ffi::Error(ffi::ErrorCode::kUnavailable, e.what());
    case DeviceError::Code::kResourceExhausted: return ffi::Error(ffi::ErrorCode::kResourceExhausted, e.what());
    case DeviceError::Code::kInternal: break;
  }
  return ffi::Error(ffi::ErrorCode::kInternal, e.what());
}

// Runs body() and turns every exception into an error naming the op: nothing escapes into XLA.
template <class Body>
ffi::Error guarded(const char* op, Body&& body) {
  try {
    body();
    return ffi::Error::Success();
  } catch (const DeviceError& e) {
    return to_ffi(e);
  } catch (const std::bad_alloc&) {
    return ffi::Error(ffi::ErrorCode::kResourceExhausted, std::string(op) + ": out of host memory in the FPGA bridge");
  } catch (const std::exception& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string(op) + ": FPGA bridge failure: " + e.what());
  }
}

bool element_type(ffi::DataType t, ElementType& out) {
  switch (t) {
    case ffi::DataType::F32: out = ElementType::kF32; return true;
    case ffi::DataType::BF16: out = ElementType::kBF16; return true;
    case ffi::DataType::F16: out = ElementType::kF16; return true;
    default: return false;
  }
}

// XLA's CUDA stream when the call runs on the GPU, else null (the CPU platform has none).
void* gpu_stream(ffi::Context& ctx) {
  auto stream = ctx.get<ffi::PlatformStream<void*>>();
  return stream.has_value() ? *stream : nullptr;
}

// Small operands: used in place on the host, staged through host memory on the GPU.
template <class T>
class HostArray {
 public:
  HostArray(const void* data, size_t count, void* stream) : data_(static_cast<const T*>(data)) {
    if (stream) {
      copy_.resize(count);
      fpga::gpu_to_host_async(copy_.data(), data, count * sizeof(T), stream);
      data_ = copy_.data();
    }
  }
  const T* get() const { return data_; }

 private:
  const T* data_;
  std::vector<T> copy_;
};

template <class T>
class HostResult {
 public:
  HostResult(void* device_data, size_t count, void* stream)
      : device_(static_cast<T*>(device_data)), count_(count), stream_(stream) {
    if (stream) copy_.resize(count);
  }
  T* get() { return stream_ ? copy_.data() : device_; }
  void finish() {
    if (!stream_) return;
    fpga::host_to_gpu_async(device_, copy_.data(), count_ * sizeof(T), stream_);
    fpga::gpu_stream_sync(stream_);
  }

 private:
  T* device_;
  size_t count_;
  void* stream_;
  std::vector<T> copy_;
};

std::unique_ptr<fpga::RowSource> row_source(const void* data, int64_t rows, int64_t row_bytes, void* stream) {
  if (stream) return std::make_unique<fpga::GpuRowSource>(data, rows, row_bytes, stream);
  return std::make_unique<fpga::HostRowSource>(data, rows, row_bytes);
}

ffi::Error run_indexer(fpga::IndexerKind kind, ffi::Context ctx, ffi::AnyBuffer q, ffi::AnyBuffer memory,
                       ffi::AnyBuffer* memory_hi, ffi::Buffer<ffi::F32>* weights,
                       ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> values,
                       ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  const char* op = "indexer";
  const bool dsa = kind == fpga::IndexerKind::kDsa;
  fpga::IndexerRequest r;
  r.kind = kind;
  if (!element_type(q.element_type(), r.dtype))
    return op_error(op, "q must be float32, bfloat16 or float16, got ", dtype_name(q.element_type()));
  r.batch = leading_size(q, 2);
  r.heads = dim_from_end(q, 1);
  r.dim = dim_from_end(q, 0);
  r.k = k;
  const size_t memory_core = dsa ? 2 : 3;
  r.entries = dim_from_end(memory, memory_core - 1);
  r.kv_heads = dsa ? 1 : dim_from_end(memory, 1);
  if (memory.element_type() != q.element_type())
    return op_error(op, "memory is ", dtype_name(memory.element_type()), " but q is ", dtype_name(q.element_type()));
  if (leading_size(memory, memory_core) != r.batch || dim_from_end(memory, 0) != r.dim)
    return op_error(op, "memory batch/feature dims do not match q");
  if (int64_t(valid.element_count()) != r.batch)
    return op_error(op, "lengths has ", valid.element_count(), " entries, expected ", r.batch);
  if (r.heads < 1 || r.kv_heads < 1 || r.dim < 1 || r.entries < 1)
    return op_error(op, "q and memory must not have empty head, feature or entry dims");
  if (r.heads % r.kv_heads) return op_error(op, "hq=", r.heads, " is not a multiple of hkv=", r.kv_heads);
  if (k < 1 || k > r.entries) return op_error(op, "k=", k, " must satisfy 1 <= k <= ", r.entries);
  const size_t out_count = size_t(r.batch * r.kv_heads * k);
  if (values->element_count() != out_count || indices->element_count() != out_count)
    return op_error(op, "results must hold ", out_count, " entries");

  return guarded(op, [&] {
    void* stream = gpu_stream(ctx);
    const size_t q_bytes = size_t(r.batch * r.heads * r.dim) * fpga::element_size(r.dtype);
    HostArray<uint8_t> q_host(q.untyped_data(), q_bytes, stream);
    HostArray<int32_t> valid_host(valid.typed_data(), size_t(r.batch), stream);
    std::unique_ptr<HostArray<float>> weights_host;
    if (weights) weights_host = std::make_unique<HostArray<float>>(weights->typed_data(), size_t(r.batch * r.heads), stream);
    if (stream) fpga::gpu_stream_sync(stream);
    const int64_t row_bytes = r.kv_heads * r.dim * int64_t(fpga::element_size(r.dtype));
    auto source = row_source(memory.untyped_data(), r.entries, row_bytes, stream);
    std::unique_ptr<fpga::RowSource> source_hi;
    if (memory_hi) source_hi = row_source(memory_hi->untyped_data(), r.entries, row_bytes, stream);
    HostResult<float> values_host(values->typed_data(), out_count, stream);
    HostResult<int32_t> indices_host(indices->typed_data(), out_count, stream);
    r.q = q_host.get();
    r.valid = valid_host.get();
    r.weights = weights_host ? weights_host->get() : nullptr;
    r.memory[0] = source.get();
    r.memory[1] = source_hi.get();
    r.values = values_host.get();
    r.indices = indices_host.get();
    fpga::Bridge::instance().indexer(r);
    values_host.finish();
    indices_host.finish();
  });
}

ffi::Error indexer_dot(ffi::Context ctx, ffi::AnyBuffer q, ffi::AnyBuffer summary, ffi::Buffer<ffi::S32> valid,
                       ffi::Result<ffi::Buffer<ffi::F32>> values, ffi::Result<ffi::Buffer<ffi::S32>> indices,
                       int64_t k) {
  return run_indexer(fpga::IndexerKind::kDot, ctx, q, summary, nullptr, nullptr, valid, values, indices, k);
}

ffi::Error indexer_quest(ffi::Context ctx, ffi::AnyBuffer q, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                         ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> values,
                         ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  if (hi.dimensions().size() != lo.dimensions().size() || hi.element_count() != lo.element_count())
    return op_error("indexer", "memory max must have the shape of memory min");
  return run_indexer(fpga::IndexerKind::kQuest, ctx, q, lo, &hi, nullptr, valid, values, indices, k);
}

ffi::Error indexer_dsa(ffi::Context ctx, ffi::AnyBuffer q, ffi::AnyBuffer keys, ffi::Buffer<ffi::F32> weights,
                       ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> values,
                       ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  if (int64_t(weights.element_count()) != leading_size(q, 2) * dim_from_end(q, 1))
    return op_error("indexer", "weights must have shape [b, h] of q");
  return run_indexer(fpga::IndexerKind::kDsa, ctx, q, keys, nullptr, &weights, valid, values, indices, k);
}

ffi::Error gather_fpga(ffi::Context ctx, ffi::AnyBuffer table, ffi::Buffer<ffi::S32> indices,
                       ffi::Result<ffi::AnyBuffer> out, bool check_indices) {
  const char* op = "gather";
  fpga::GatherRequest r;
  if (!element_type(table.element_type(), r.dtype))
    return op_error(op, "table must be float32, bfloat16 or float16, got ", dtype_name(table.element_type()));
  auto tdims = table.dimensions();
  auto idims = indices.dimensions();
  if (tdims.size() < 2 || idims.size() < 1 || tdims.size() - 2 != idims.size() - 1)
    return op_error(op, "table [..., m, F] and indices [..., R] must have the same leading dims");
  r.table_rows = dim_from_end(table, 1);
  r.row_bytes = dim_from_end(table, 0) * int64_t(fpga::element_size(r.dtype));
  r.table_batch = leading_size(table, 2);
  r.index_batch = leading_size(indices, 1);
  r.count = dim_from_end(indices, 0);
  r.check_indices = check_indices;
  // expand_dims batching: a leading table dim of 1 broadcasts against the indices'.
  const size_t lead = idims.size() - 1;
  for (size_t d = 0; d < lead; ++d) {
    if (tdims[d] != idims[d] && tdims[d] != 1)
      return op_error(op, "table leading dim ", tdims[d], " does not broadcast to ", idims[d]);
  }
  r.table_of.resize(size_t(r.index_batch));
  for (int64_t i = 0; i < r.index_batch; ++i) {
    int64_t rest = i, t = 0, t_stride = 1;
    for (size_t d = lead; d-- > 0;) {
      const int64_t coord = rest % idims[d];
      rest /= idims[d];
      if (tdims[d] != 1) t += coord * t_stride;
      t_stride *= tdims[d];
    }
    r.table_of[size_t(i)] = t;
  }
  if (out->element_count() != size_t(r.index_batch * r.count * dim_from_end(table, 0)))
    return op_error(op, "result has the wrong size");
  if (r.table_rows == 0 && r.count > 0) return op_error(op, "the table has no rows");

  return guarded(op, [&] {
    void* stream = gpu_stream(ctx);
    HostArray<int32_t> idx_host(indices.typed_data(), size_t(r.index_batch * r.count), stream);
    if (stream) fpga::gpu_stream_sync(stream);
    auto source = row_source(table.untyped_data(), r.table_rows, r.row_bytes, stream);
    HostResult<uint8_t> out_host(out->untyped_data(), size_t(r.index_batch * r.count * r.row_bytes), stream);
    r.table = source.get();
    r.indices = idx_host.get();
    r.out = out_host.get();
    if (r.count > 0) fpga::Bridge::instance().gather(r);
    out_host.finish();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerDotFpga, indexer_dot,
                              indexer_results(dot_operands(ffi::Ffi::Bind().Ctx<ffi::Context>())));
JAX_HETERO_REGISTER("indexer_dot", IndexerDotFpga);

XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerQuestFpga, indexer_quest,
                              indexer_results(quest_operands(ffi::Ffi::Bind().Ctx<ffi::Context>())));
JAX_HETERO_REGISTER("indexer_quest", IndexerQuestFpga);

XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerDsaFpga, indexer_dsa,
                              indexer_results(dsa_operands(ffi::Ffi::Bind().Ctx<ffi::Context>())));
JAX_HETERO_REGISTER("indexer_dsa", IndexerDsaFpga);

XLA_FFI_DEFINE_HANDLER_SYMBOL(GatherFpga, gather_fpga,
                              gather_signature(ffi::Ffi::Bind().Ctx<ffi::Context>()));
JAX_HETERO_REGISTER("gather", GatherFpga);

}  // namespace jax_hetero
