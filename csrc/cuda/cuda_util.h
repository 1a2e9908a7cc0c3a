// Helpers shared by the CUDA handlers: CUDA error checking that returns ffi::Error, the device
// of XLA's stream, scratch allocation and the top-k key order on the device.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <mutex>
#include <string>
#include <utility>
#include <type_traits>

#include "common/ffi_util.h"
#include "cuda/graph_safe.h"

namespace jax_hetero {

inline ffi::Error cuda_error(const char* op, cudaError_t err, const char* what) {
  return ffi::Error(ffi::ErrorCode::kInternal,
                    std::string(op) + ": CUDA error in " + what + ": " + cudaGetErrorString(err));
}

#define JH_CUDA_CHECK(op, expr)                                                   \
  do {                                                                            \
    cudaError_t jh_err_ = (expr);                                                 \
    if (jh_err_ != cudaSuccess) return ::jax_hetero::cuda_error(op, jh_err_, #expr); \
  } while (0)

#define JH_RETURN_IF_ERROR(expr)               \
  do {                                         \
    ::xla::ffi::Error jh_status_ = (expr);     \
    if (jh_status_.failure()) return jh_status_; \
  } while (0)

// Run-time check of an index argument (index_check.cu): queue_index_check launches, before
// the op's kernels (which must skip entries outside [-1, upper) on their own), a kernel that
// records an offending entry in a 2-int scratch flag; read_index_check, after them, copies the
// flag back (one stream sync, so the host cannot run ahead of this call) and reports the entry
// as "<op>: <name> contains <value>, outside [0, upper) (<what>); use -1 ...".  A kernel that
// checks its indices itself (gather) takes the flag from zeroed_index_flag.
ffi::Error zeroed_index_flag(const char* op, cudaStream_t stream, DeviceScratch& scratch, int** flag);
ffi::Error queue_index_check(const char* op, cudaStream_t stream, DeviceScratch& scratch,
                             const int32_t* indices, int64_t count, int64_t upper, int sms, int** flag);
ffi::Error read_index_check(const char* op, cudaStream_t stream, const int* flag, const char* name, int64_t upper,
                            const std::string& what);

// The value of query() for (device, key), asked once: occupancy and cluster queries cost host
// time at every call otherwise.  Each call site (its own Query type) has its own table.
template <class Query>
int remembered(int device, int64_t key, const Query& query) {
  static std::mutex mutex;
  static std::map<std::pair<int, int64_t>, int> known;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = known.find({device, key});
  if (it == known.end()) it = known.emplace(std::make_pair(device, key), query()).first;
  return it->second;
}

// Lets `kernel` use `bytes` of dynamic shared memory on the current device (and, with
// `big_clusters`, clusters of 16), calling the driver only when the limit has to grow: two
// cudaFuncSetAttribute calls per launch are host time that short top-k calls pay every time.
// Every caller goes through here, so the limit only grows and the table stays true.
template <class Kernel>
cudaError_t allow_smem(Kernel* kernel, size_t bytes, bool big_clusters = false) {
  struct Granted {
    size_t bytes = 0;
    bool big_clusters = false;
  };
  static std::mutex mutex;
  static std::map<std::pair<int, const void*>, Granted> granted;
  int device = 0;
  if (const cudaError_t err = cudaGetDevice(&device); err != cudaSuccess) return err;
  std::lock_guard<std::mutex> lock(mutex);
  Granted& g = granted[{device, reinterpret_cast<const void*>(kernel)}];
  if (bytes > g.bytes) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
    if (err != cudaSuccess) return err;
    g.bytes = bytes;
  }
  if (big_clusters && !g.big_clusters) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1);
    if (err != cudaSuccess) return err;
    g.big_clusters = true;
  }
  return cudaSuccess;
}

// The device that owns XLA's stream (never assume device 0) and its SM count.
struct DeviceInfo {
  int device = 0;
  int sms = 0;
};

inline ffi::Error device_info(const char* op, cudaStream_t stream, DeviceInfo* info) {
  // While XLA traces the stream into a command buffer, asking the stream for its device is not
  // allowed (and would end the capture); XLA traces with that device current.
  cudaStreamCaptureStatus capture = cudaStreamCaptureStatusNone;
  JH_CUDA_CHECK(op, cudaStreamIsCapturing(stream, &capture));
  if (capture == cudaStreamCaptureStatusNone) {
    JH_CUDA_CHECK(op, cudaStreamGetDevice(stream, &info->device));
  } else {
    ++graph_traced_calls();
    JH_CUDA_CHECK(op, cudaGetDevice(&info->device));
  }
  JH_CUDA_CHECK(op, cudaDeviceGetAttribute(&info->sms, cudaDevAttrMultiProcessorCount, info->device));
  return ffi::Error::Success();
}

// The context every CUDA handler that allocates scratch binds first: XLA's stream and the call
// site's CallSiteScratch.
inline auto bind_stream_and_scratch() {
  return ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::State<CallSiteScratch>>();
}

// Bump allocator over one scratch allocation, so a handler asks for memory once.
class ScratchArena {
 public:
  void reserve(size_t bytes) { total_ += round(bytes); }
  ffi::Error allocate(const char* op, DeviceScratch& scratch) {
    if (total_ == 0) return ffi::Error::Success();
    void* mem = nullptr;
    JH_RETURN_IF_ERROR(scratch.site.get(op, scratch.device, scratch.next_slot++, total_, &mem));
    base_ = static_cast<char*>(mem);
    return ffi::Error::Success();
  }
  template <class T>
  T* take(size_t bytes) {
    T* p = reinterpret_cast<T*>(base_ + used_);
    used_ += round(bytes);
    return p;
  }

 private:
  static size_t round(size_t b) { return (b + 255) & ~size_t(255); }
  size_t total_ = 0, used_ = 0;
  char* base_ = nullptr;
};

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
__host__ __device__ __forceinline__ int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

// Development timing (build with CUDAFLAGS=-DJH_SELECT_TRACE): in a kernel that starts with
// JH_TRACE_START, thread 0 of block 0 notes the SM clock at each JH_TRACE(phase) and, at
// JH_TRACE_END(format, ...), prints that header line and the cycles of every phase.
#ifdef JH_SELECT_TRACE
#define JH_TRACE_START long long jh_t[24]; const char* jh_name[24]; int jh_n = 0; const long long jh_t0 = clock64()
#define JH_TRACE(name) \
  if (blockIdx.x == 0 && threadIdx.x == 0 && jh_n < 24) jh_t[jh_n] = clock64(), jh_name[jh_n++] = (name)
#define JH_TRACE_END(...)                                                               \
  if (blockIdx.x == 0 && threadIdx.x == 0) {                                            \
    printf(__VA_ARGS__);                                                                \
    for (int i = 0; i < jh_n; ++i)                                                      \
      printf("  %-8s %8lld cycles\n", jh_name[i], jh_t[i] - (i ? jh_t[i - 1] : jh_t0)); \
  }
#else
#define JH_TRACE_START
#define JH_TRACE(name)
#define JH_TRACE_END(...)
#endif

// ---- key order on the device (same order as common/float_bits.h's order_key) ----
// 32-bit keys; 16-bit types keep their own 16-bit key in the upper half, so radix passes
// can stop at bit 16.
__device__ __forceinline__ uint32_t key_of(float x) {
  const uint32_t b = __float_as_uint(x);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ uint32_t key_of_bits16(uint16_t h) {
  const uint32_t k16 = (h & 0x8000u) ? (~uint32_t(h) & 0xffffu) : (uint32_t(h) | 0x8000u);
  return k16 << 16;
}
__device__ __forceinline__ uint32_t key_of(bfloat16_bits x) { return key_of_bits16(x.bits); }
__device__ __forceinline__ uint32_t key_of(float16_bits x) { return key_of_bits16(x.bits); }

__device__ __forceinline__ uint32_t bits32_of_key(uint32_t key) {
  return (key & 0x80000000u) ? (key & 0x7fffffffu) : ~key;
}
__device__ __forceinline__ uint16_t bits16_of_key(uint32_t key) {
  const uint32_t k16 = key >> 16;
  return uint16_t((k16 & 0x8000u) ? (k16 & 0x7fffu) : (~k16 & 0xffffu));
}

// Device-side float conversions of the storage types.
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bfloat16_bits x) { return __uint_as_float(uint32_t(x.bits) << 16); }
__device__ __forceinline__ float to_f32(float16_bits x) {
  return __half2float(__ushort_as_half(x.bits));
}

// Round-to-nearest float conversions back to the storage types.
template <class T>
__device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bfloat16_bits from_f32<bfloat16_bits>(float x) {
  return bfloat16_bits{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
}
template <> __device__ __forceinline__ float16_bits from_f32<float16_bits>(float x) {
  return float16_bits{__half_as_ushort(__float2half_rn(x))};
}

}  // namespace jax_hetero
