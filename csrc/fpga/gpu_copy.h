// Copies between GPU memory and the host on XLA's CUDA stream: the CUDA-platform path of the
// FPGA bridge (query and memory rows GPU -> host -> card, results back).  Implemented by
// gpu_copy_cuda.cc when the CUDA toolkit is found, else by gpu_copy_none.cc, which refuses.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "fpga/memory_mirror.h"

namespace jax_hetero::fpga {

bool gpu_copy_compiled();
// Enqueue on `stream`; gpu_stream_sync waits and throws DeviceError on a CUDA error.
void gpu_to_host_async(void* dst, const void* src, size_t bytes, void* stream);
void host_to_gpu_async(void* dst, const void* src, size_t bytes, void* stream);
void gpu_stream_sync(void* stream);

// A memory tensor [batch][rows][row_bytes] in GPU memory.
class GpuRowSource : public RowSource {
 public:
  GpuRowSource(const void* data, int64_t rows, int64_t row_bytes, void* stream)
      : data_(static_cast<const uint8_t*>(data)), rows_(rows), row_bytes_(row_bytes), stream_(stream) {}
  void fetch(const std::vector<RowRange>& ranges, uint8_t* dst) override {
    for (const auto& r : ranges) {
      const size_t bytes = size_t(r.count * row_bytes_);
      gpu_to_host_async(dst, data_ + (r.batch * rows_ + r.first) * row_bytes_, bytes, stream_);
      dst += bytes;
    }
    gpu_stream_sync(stream_);
  }

 private:
  const uint8_t* data_;
  int64_t rows_, row_bytes_;
  void* stream_;
};

}  // namespace jax_hetero::fpga
