// Python module of the CPU backend: exposes every registered handler as a PyCapsule.
#include <pybind11/pybind11.h>

#include "common/registry.h"
#include "common/parallel.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;

PYBIND11_MODULE(_jax_hetero_cpu, m) {
  m.def("registrations", [] {
    py::dict out;
    for (auto& [name, fn] : jax_hetero::handler_registry()) out[py::str(name)] = py::capsule(fn);
    return out;
  });
  m.def("num_threads", [] { return jax_hetero::ThreadPool::instance().num_threads(); });
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);
}
