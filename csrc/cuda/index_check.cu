// Run-time check of an int32 index argument against [-1, upper) on the device.
#include "cuda/cuda_util.h"

namespace jax_hetero {
namespace {

constexpr int kCheckThreads = 256;

__global__ void find_bad_index_kernel(const int32_t* indices, int64_t count, int64_t upper, int* flag) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t v = indices[i];
    if ((v < -1 || v >= upper) && atomicCAS(flag, 0, 1) == 0) flag[1] = v;  // the first finder reports
  }
}

}  // namespace

ffi::Error zeroed_index_flag(const char* op, cudaStream_t stream, DeviceScratch& scratch, int** flag) {
  ScratchArena arena;
  arena.reserve(2 * sizeof(int));
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
  *flag = arena.take<int>(2 * sizeof(int));
  JH_CUDA_CHECK(op, cudaMemsetAsync(*flag, 0, 2 * sizeof(int), stream));
  return ffi::Error::Success();
}

ffi::Error queue_index_check(const char* op, cudaStream_t stream, DeviceScratch& scratch,
                             const int32_t* indices, int64_t count, int64_t upper, int sms, int** flag) {
  JH_RETURN_IF_ERROR(zeroed_index_flag(op, stream, scratch, flag));
  if (count == 0) return ffi::Error::Success();
  const int64_t blocks = std::min<int64_t>((count + kCheckThreads - 1) / kCheckThreads, int64_t(sms) * 4);
  find_bad_index_kernel<<<unsigned(blocks), kCheckThreads, 0, stream>>>(indices, count, upper, *flag);
  JH_CUDA_CHECK(op, cudaGetLastError());
  return ffi::Error::Success();
}

ffi::Error read_index_check(const char* op, cudaStream_t stream, const int* flag, const char* name, int64_t upper,
                            const std::string& what) {
  int host[2] = {0, 0};
  JH_CUDA_CHECK(op, cudaMemcpyAsync(host, flag, sizeof(host), cudaMemcpyDeviceToHost, stream));
  JH_CUDA_CHECK(op, cudaStreamSynchronize(stream));
  if (host[0])
    return data_error(op, name, " contains ", host[1], ", outside [0, ", upper, ") (", what,
                      "); use -1 for an unused slot");
  return ffi::Error::Success();
}

}  // namespace jax_hetero
