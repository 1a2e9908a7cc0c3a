// Python module of the FPGA backend: the FFI handlers as PyCapsules plus the bridge's device
// information and per-call statistics (turned into modelled time by jax_hetero/fpga).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/registry.h"
#include "fpga/bridge.h"
#include "fpga/gpu_copy.h"
#include "hetero_kernels.h"
#include "xla/ffi/api/c_api.h"

namespace py = pybind11;
using namespace jax_hetero::fpga;

namespace {

py::dict device_dict(const DeviceInfo& info) {
  py::dict d;
  d["kind"] = info.kind;
  d["name"] = info.name;
  d["xclbin"] = info.xclbin;
  d["memory_bytes"] = info.memory_bytes;
  d["hbm_banks"] = info.hbm_banks;
  return d;
}

// Device errors become RuntimeError carrying the bridge's message (cause and fix).
template <class Fn>
auto translate(Fn&& fn) {
  try {
    return fn();
  } catch (const DeviceError& e) {
    throw std::runtime_error(e.what());
  }
}

}  // namespace

PYBIND11_MODULE(_jax_hetero_fpga, m) {
  m.def("registrations", [] {
    py::dict out;
    for (auto& [name, fn] : jax_hetero::handler_registry()) out[py::str(name)] = py::capsule(fn);
    return out;
  });
  m.attr("ffi_api_version") = py::make_tuple(XLA_FFI_API_MAJOR, XLA_FFI_API_MINOR);

  m.def("details", [] {
    py::dict d;
    d["xrt_compiled"] = xrt_compiled();
    d["cuda_copies_compiled"] = gpu_copy_compiled();
    d["fpga_devices"] = xrt_compiled() ? "xrt and emulated" : "emulated only (built without XRT: install libxrt-dev and rebuild for cards)";
    d["fpga_kernels"] = "hls/src (hetero_indexer, hetero_gather), emulated in-process";
    d["fpga_max_k"] = int(HETERO_MAX_K);
    return d;
  });
  m.def("xrt_device_count", [] { return xrt_device_count(); },
        "Cards XRT enumerates (0 without XRT or without XILINX_XRT).");
  m.def("device_info", [] { return translate([] { return device_dict(Bridge::instance().device_info()); }); },
        "Opens the device selected by JAX_HETERO_FPGA_DEVICE if needed and describes it.");
  m.def("reset", [] { Bridge::instance().reset(); },
        "Closes the device and frees its memory; the next call reopens it from the environment.");
  // Close the device while XRT is still alive (see Bridge::instance).
  py::module_::import("atexit").attr("register")(py::cpp_function([] { Bridge::instance().reset(); }));
  m.def("mirror_entries", [] { return Bridge::instance().mirror_entries(); });
  m.def("reset_stats", [] { Bridge::instance().reset_stats(); });
  m.def("stats", [] {
    py::list out;
    for (const auto& r : Bridge::instance().stats()) {
      py::dict d;
      d["op"] = r.op;
      d["kind"] = r.kind;
      d["dtype"] = r.dtype;
      d["device"] = r.device;
      d["rows"] = r.rows;
      d["num_entries"] = r.num_entries;
      d["scanned_entries"] = r.scanned_entries;
      d["heads"] = r.heads;
      d["dim"] = r.dim;
      d["k"] = r.k;
      d["row_bytes"] = r.row_bytes;
      d["bytes_to_device"] = r.transfers.bytes_to_device;
      d["bytes_from_device"] = r.transfers.bytes_from_device;
      d["transfers_to_device"] = r.transfers.transfers_to_device;
      d["transfers_from_device"] = r.transfers.transfers_from_device;
      d["memory_rows_uploaded"] = r.memory_rows_uploaded;
      d["memory_rows_checked"] = r.memory_rows_checked;
      d["new_memory"] = r.new_memory;
      d["stale_detected"] = r.stale_detected;
      d["host_seconds"] = r.host_seconds;
      out.append(d);
    }
    return out;
  }, "One dict per bridge call (op, shapes, bytes and transfers each way, memory rows sent).");
}
