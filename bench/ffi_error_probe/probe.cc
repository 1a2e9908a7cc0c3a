// Minimal CUDA-platform FFI handlers that fail in different ways, to find which error path
// of XLA:GPU (jax 0.11) ends the process.  Built and run by run_probe.py on the GPU machine.
#include <cuda_runtime.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

static ffi::Error ok(cudaStream_t, ffi::AnyBuffer, ffi::Result<ffi::AnyBuffer>) {
  return ffi::Error::Success();
}
static ffi::Error fail_plain(cudaStream_t, ffi::AnyBuffer, ffi::Result<ffi::AnyBuffer>) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, "probe: plain failure");
}
static ffi::Error fail_out_of_range(cudaStream_t, ffi::AnyBuffer, ffi::Result<ffi::AnyBuffer>) {
  return ffi::Error(ffi::ErrorCode::kOutOfRange, "probe: out of range");
}
static ffi::Error fail_after_sync(cudaStream_t s, ffi::AnyBuffer, ffi::Result<ffi::AnyBuffer>) {
  cudaStreamSynchronize(s);
  return ffi::Error(ffi::ErrorCode::kOutOfRange, "probe: after sync");
}
static ffi::Error fail_scratch(cudaStream_t, ffi::ScratchAllocator scratch, ffi::AnyBuffer,
                               ffi::Result<ffi::AnyBuffer>) {
  (void)scratch.Allocate(1024, 16);
  return ffi::Error(ffi::ErrorCode::kOutOfRange, "probe: after scratch");
}
static ffi::Error ok_scratch(cudaStream_t, ffi::ScratchAllocator scratch, ffi::AnyBuffer,
                             ffi::Result<ffi::AnyBuffer>) {
  (void)scratch.Allocate(1024, 16);
  return ffi::Error::Success();
}

#define PLAIN(name)                                                                        \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(probe_##name, name,                                        \
                                ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>() \
                                    .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>())
#define SCRATCH(name)                                                                      \
  XLA_FFI_DEFINE_HANDLER_SYMBOL(probe_##name, name,                                        \
                                ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>() \
                                    .Ctx<ffi::ScratchAllocator>()                          \
                                    .Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>())
PLAIN(ok);
PLAIN(fail_plain);
PLAIN(fail_out_of_range);
PLAIN(fail_after_sync);
SCRATCH(fail_scratch);
SCRATCH(ok_scratch);
