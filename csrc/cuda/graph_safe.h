// What lets XLA trace a CUDA handler into a command buffer (a CUDA graph) and replay it: the
// handler launches the same work at every call, never synchronises or asks the stream for its
// device while the stream is captured, and keeps its scratch memory in a CallSiteScratch
// (graph_safe.cu) instead of XLA's per-call scratch allocator.  Handlers registered with
// JAX_HETERO_REGISTER_GRAPH_SAFE carry XLA's command-buffer trait.
#pragma once
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/ffi_util.h"
#include "common/registry.h"

namespace jax_hetero {

// GPU scratch memory of one custom call of one executable, kept from call to call: the FFI
// state of every CUDA handler (module.cc registers them all with its instantiate handler).  A
// handler that XLA may trace into a command buffer cannot take XLA's scratch allocator, whose
// memory is freed when the handler returns while the graph keeps its address.  A call's n-th
// allocation gets the call site's n-th buffer on that device (an executable's thunks run on
// every local device), allocated the first time; a call site's plan, and so its allocations,
// are the same at every call.  Reusing them from call to call is safe because the runs of one
// executable on one device follow one another on its stream.
class CallSiteScratch {
 public:
  static ffi::TypeId id;
  ~CallSiteScratch();
  // `bytes` (> 0) of scratch (256-byte aligned): buffer `slot` of `device`.
  ffi::Error get(const char* op, int device, int slot, size_t bytes, void** out);

 private:
  std::mutex mutex_;
  // Per (device, slot), every buffer handed out: a larger request keeps the older ones alive,
  // since a graph recorded before may still use them.
  std::map<std::pair<int, int>, std::vector<std::pair<void*, size_t>>> buffers_;
};

// One call's scratch: its call site's state, the device of XLA's stream, and the call's next
// allocation (each allocation of a call gets its own buffer).
struct DeviceScratch {
  CallSiteScratch& site;
  int device;
  int next_slot = 0;
};

// Handler calls made while XLA traced them into a command buffer, for tests and diagnostics.
inline std::atomic<int64_t>& graph_traced_calls() {
  static std::atomic<int64_t> calls{0};
  return calls;
}

inline std::set<std::string>& graph_safe_ops() {
  static std::set<std::string> ops;
  return ops;
}

struct RegisterGraphSafe : RegisterHandler {
  RegisterGraphSafe(const char* name, void* handler) : RegisterHandler(name, handler) {
    graph_safe_ops().insert(name);
  }
};

// The instantiate-stage handler that gives each call site its CallSiteScratch, and the type
// registration XLA needs for it (its deleter).
XLA_FFI_DECLARE_HANDLER_SYMBOL(CallSiteScratchInstantiate);
const XLA_FFI_TypeInfo* call_site_scratch_type_info();

}  // namespace jax_hetero

// Registers a CUDA handler under `name` as one that XLA may trace into a command buffer (see
// above); one symbol may also be registered plainly under another name.
#define JH_CONCAT_(a, b) a##b
#define JH_CONCAT(a, b) JH_CONCAT_(a, b)
#define JAX_HETERO_REGISTER_GRAPH_SAFE(name, symbol)                                      \
  static ::jax_hetero::RegisterGraphSafe JH_CONCAT(register_graph_safe_, __LINE__)(name, \
                                                                                  reinterpret_cast<void*>(symbol))
