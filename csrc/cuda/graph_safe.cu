// CallSiteScratch: the per-call-site GPU scratch of the handlers that XLA may trace into a
// command buffer (see graph_safe.h).
#include <memory>

#include "cuda/cuda_util.h"

namespace jax_hetero {

ffi::TypeId CallSiteScratch::id = {};

ffi::Error CallSiteScratch::get(const char* op, int device, int slot, size_t bytes, void** out) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto& held = buffers_[{device, slot}];
  if (!held.empty() && held.back().second >= bytes) {
    *out = held.back().first;
    return ffi::Error::Success();
  }
  // Stream capture forbids cudaMalloc by default because a graph does not record it; this
  // buffer outlives every graph that uses it, so the relaxed mode is right here.
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  JH_CUDA_CHECK(op, cudaThreadExchangeStreamCaptureMode(&mode));
  int current = -1;
  cudaError_t err = cudaGetDevice(&current);
  if (err == cudaSuccess && current != device) err = cudaSetDevice(device);
  void* mem = nullptr;
  if (err == cudaSuccess) err = cudaMalloc(&mem, bytes);
  if (current >= 0 && current != device) cudaSetDevice(current);
  cudaThreadExchangeStreamCaptureMode(&mode);
  if (err != cudaSuccess) return cuda_error(op, err, "cudaMalloc of the call site's scratch memory");
  held.emplace_back(mem, bytes);
  *out = mem;
  return ffi::Error::Success();
}

CallSiteScratch::~CallSiteScratch() {
  int current = -1;
  if (cudaGetDevice(&current) != cudaSuccess) return;  // the CUDA runtime is gone (process exit)
  for (auto& [where, held] : buffers_) {
    if (cudaSetDevice(where.first) != cudaSuccess) continue;
    for (auto& buffer : held) cudaFree(buffer.first);  // waits for the work that still uses it
  }
  cudaSetDevice(current);
  cudaGetLastError();  // a failure here must not surface in a later, unrelated check
}

const XLA_FFI_TypeInfo* call_site_scratch_type_info() {
  static const XLA_FFI_TypeInfo info = ffi::MakeTypeInfo<CallSiteScratch>();
  return &info;
}

namespace {
ffi::ErrorOr<std::unique_ptr<CallSiteScratch>> make_call_site_scratch() {
  return std::make_unique<CallSiteScratch>();
}
}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(CallSiteScratchInstantiate, make_call_site_scratch, ffi::Ffi::BindInstantiate());

}  // namespace jax_hetero
