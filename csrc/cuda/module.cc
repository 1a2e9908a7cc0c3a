// Python module of the CUDA backend: exposes every registered handler as a PyCapsule, and
// what XLA needs to trace the graph-safe ones into command buffers.
#include <pybind11/pybind11.h>

#include "common/registry.h"
#include "cuda/graph_safe.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;

PYBIND11_MODULE(_jax_hetero_cuda, m) {
  m.def("registrations", [] {
    py::dict out;
    for (auto& [name, fn] : jax_hetero::handler_registry()) out[py::str(name)] = py::capsule(fn);
    return out;
  });
  // The instantiate-stage handler of every target (each call site's scratch state), and the
  // targets to register with XLA's command-buffer trait.
  m.def("instantiate", [] { return py::capsule(reinterpret_cast<void*>(jax_hetero::CallSiteScratchInstantiate)); });
  m.def("graph_safe", [] {
    py::list out;
    for (const auto& name : jax_hetero::graph_safe_ops()) out.append(py::str(name));
    return out;
  });
  // FFI types to register with jax.ffi.register_ffi_type before the handlers.
  m.def("ffi_types", [] {
    py::dict scratch;
    scratch["type_id"] = py::capsule(static_cast<void*>(&jax_hetero::CallSiteScratch::id));
    scratch["type_info"] =
        py::capsule(const_cast<void*>(static_cast<const void*>(jax_hetero::call_site_scratch_type_info())));
    py::dict out;
    out["jax_hetero.cuda.call_site_scratch"] = scratch;
    return out;
  });
  m.def("graph_traced_calls", [] { return jax_hetero::graph_traced_calls().load(); });
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}
