#include "fpga/gpu_copy.h"

namespace jax_hetero::fpga {
namespace {

[[noreturn]] void refuse() {
  throw DeviceError(DeviceError::Code::kUnavailable,
                    "this call runs on a GPU but jax_hetero's FPGA bridge was built without the CUDA "
                    "toolkit, so it cannot move GPU buffers. Fix: rebuild on a machine with nvcc "
                    "(`JAX_HETERO_CUDA=ON pip install .`), or run the op on the CPU platform");
}

}  // namespace

bool gpu_copy_compiled() { return false; }
void gpu_to_host_async(void*, const void*, size_t, void*) { refuse(); }
void host_to_gpu_async(void*, const void*, size_t, void*) { refuse(); }
void gpu_stream_sync(void*) { refuse(); }

}  // namespace jax_hetero::fpga
