#include <cuda_runtime_api.h>

#include <string>

#include "fpga/gpu_copy.h"

namespace jax_hetero::fpga {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw DeviceError(DeviceError::Code::kInternal,
                      std::string(what) + " failed: " + cudaGetErrorString(err));
  }
}

}  // namespace

bool gpu_copy_compiled() { return true; }

void gpu_to_host_async(void* dst, const void* src, size_t bytes, void* stream) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, static_cast<cudaStream_t>(stream)),
        "GPU-to-host copy");
}

void host_to_gpu_async(void* dst, const void* src, size_t bytes, void* stream) {
  check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, static_cast<cudaStream_t>(stream)),
        "host-to-GPU copy");
}

void gpu_stream_sync(void* stream) {
  check(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "CUDA stream synchronisation");
}

}  // namespace jax_hetero::fpga
