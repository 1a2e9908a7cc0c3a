// Python module of the CUDA backend: exposes every registered handler as a PyCapsule.
#include <pybind11/pybind11.h>

#include "common/registry.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;

PYBIND11_MODULE(_jax_hetero_cuda, m) {
  m.def("registrations", [] {
    py::dict out;
    for (auto& [name, fn] : jax_hetero::handler_registry()) out[py::str(name)] = py::capsule(fn);
    return out;
  });
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}
