// XrtDevice: a real Alveo card through XRT's native C++ API.  Memory tensors live in device
// buffers (xrt::bo) placed in the HBM bank group of the kernel argument they feed; the
// kernels are the hetero_indexer / hetero_gather compute units of the xclbin.  Without an
// xclbin the device still offers buffers (that is what XCL_EMULATION_MODE=noop tests use)
// and refuses kernel launches with the fix.  Built only when XRT is found
// (JAX_HETERO_WITH_XRT); otherwise make_xrt_device explains how to get it.
#include <algorithm>
#include <cstdlib>
#include <string>

#include "fpga/device.h"

#ifdef JAX_HETERO_WITH_XRT
#include <sys/stat.h>

#include <experimental/xrt_system.h>
#include <experimental/xrt_xclbin.h>
#include <xrt/xrt_bo.h>
#include <xrt/xrt_device.h>
#include <xrt/xrt_kernel.h>

#include "hetero_kernels.h"
#endif

namespace jax_hetero::fpga {

#ifdef JAX_HETERO_WITH_XRT
namespace {

constexpr uint64_t kU55cHbmBytes = uint64_t(16) << 30;
// XRT backs a buffer with aligned_alloc(4096, size); C11 wants size to be a multiple of it.
size_t bo_bytes(size_t bytes) { return (std::max<size_t>(bytes, 1) + 4095) / 4096 * 4096; }
const char* const kFallbackHint =
    " Or set JAX_HETERO_FPGA_DEVICE=emulated to run the same kernels on the emulated device.";

DeviceError xrt_error(DeviceError::Code code, const std::string& what, const std::exception& e,
                      const std::string& fix) {
  return DeviceError(code, what + " (XRT: " + e.what() + "). Fix: " + fix);
}

class XrtBuffer : public DeviceBuffer {
 public:
  XrtBuffer(xrt::bo bo, uint64_t& allocated) : bo_(std::move(bo)), allocated_(allocated) {
    allocated_ += bo_.size();
  }
  ~XrtBuffer() override { allocated_ -= bo_.size(); }
  size_t size() const override { return bo_.size(); }
  xrt::bo& bo() { return bo_; }

 private:
  xrt::bo bo_;
  uint64_t& allocated_;
};

xrt::bo& bo_of(const DeviceBuffer* b) {
  return const_cast<XrtBuffer*>(static_cast<const XrtBuffer*>(b))->bo();
}

class XrtDevice : public Device {
 public:
  XrtDevice(unsigned index, const std::string& xclbin_path) : index_(index) {
    if (!std::getenv("XILINX_XRT")) {
      throw DeviceError(DeviceError::Code::kUnavailable,
                        "XRT needs the environment variable XILINX_XRT (XRT: XILINX_XRT not set). "
                        "Fix: point it at a folder whose lib/ holds libxrt_core.so.2; with Debian's "
                        "libxrt1: mkdir -p ~/.xrt && ln -sfn /usr/lib/x86_64-linux-gnu ~/.xrt/lib "
                        "&& export XILINX_XRT=~/.xrt." + std::string(kFallbackHint));
    }
    try {
      device_ = xrt::device(index);
    } catch (const std::exception& e) {
      throw xrt_error(DeviceError::Code::kUnavailable,
                      "no FPGA card at JAX_HETERO_FPGA_DEVICE=xrt:" + std::to_string(index), e,
                      "install the Alveo card and its XRT driver (`xbutil examine` must list it)." +
                          std::string(kFallbackHint));
    }
    try {
      name_ = device_.get_info<xrt::info::device::name>();
    } catch (const std::exception&) {
      name_ = "XRT device " + std::to_string(index);  // shims without queries (noop)
    }
    if (!xclbin_path.empty()) load(xclbin_path);
  }

  DeviceInfo info() const override {
    DeviceInfo i;
    i.kind = "xrt";
    i.name = name_;
    i.xclbin = xclbin_path_;
    i.memory_bytes = memory_bytes_;
    i.hbm_banks = 32;
    return i;
  }

  std::unique_ptr<DeviceBuffer> allocate(size_t bytes, BufferRole role) override {
    if (allocated_ + bytes > memory_bytes_) {
      throw DeviceError(DeviceError::Code::kResourceExhausted,
                        "XRT device out of memory: " + std::to_string(allocated_ + bytes) +
                            " bytes requested of " + std::to_string(memory_bytes_));
    }
    try {
      return std::make_unique<XrtBuffer>(xrt::bo(device_, bo_bytes(bytes), xrt::bo::flags::normal, group(role)),
                                         allocated_);
    } catch (const std::exception& e) {
      throw xrt_error(DeviceError::Code::kResourceExhausted,
                      "could not allocate " + std::to_string(bytes) + " bytes of device memory", e,
                      "shorten the context or batch, or use backend='cpu'");
    }
  }

  void write(DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) override {
    guard("host-to-device transfer", [&] {
      auto& bo = static_cast<XrtBuffer&>(dst).bo();
      bo.write(src, bytes, offset);
      bo.sync(XCL_BO_SYNC_BO_TO_DEVICE, bytes, offset);
    });
    count_to_device(bytes);
  }

  void read(const DeviceBuffer& src, size_t offset, void* dst, size_t bytes) override {
    guard("device-to-host transfer", [&] {
      auto& bo = bo_of(&src);
      bo.sync(XCL_BO_SYNC_BO_FROM_DEVICE, bytes, offset);
      bo.read(dst, bytes, offset);
    });
    count_from_device(bytes);
  }

  void run_indexer(const IndexerLaunch& l) override {
    require_kernels();
    guard("hetero_indexer run", [&] {
      auto query = input(indexer_, 2, l.query, size_t(l.rows * l.heads * l.dim) * sizeof(float));
      auto weights = l.weights ? input(indexer_, 3, l.weights, size_t(l.rows * l.heads) * sizeof(float))
                               : xrt::bo(device_, bo_bytes(64), xrt::bo::flags::normal, indexer_.group_id(3));
      auto lengths = input(indexer_, 4, l.lengths, size_t(l.rows) * sizeof(int32_t));
      const size_t out_bytes = size_t(l.rows * l.k) * 4;
      xrt::bo values(device_, bo_bytes(out_bytes), xrt::bo::flags::normal, indexer_.group_id(14));
      xrt::bo indices(device_, bo_bytes(out_bytes), xrt::bo::flags::normal, indexer_.group_id(15));
      xrt::bo status(device_, bo_bytes(64), xrt::bo::flags::normal, indexer_.group_id(16));
      const int kind = l.kind == IndexerKind::kDot ? HETERO_KIND_DOT
                       : l.kind == IndexerKind::kQuest ? HETERO_KIND_QUEST : HETERO_KIND_DSA;
      const int format = l.dtype == ElementType::kBF16 ? HETERO_KEYS_BF16 : HETERO_KEYS_F32;
      auto& memory = bo_of(l.memory);
      auto run = indexer_(memory, l.memory_hi ? bo_of(l.memory_hi) : memory, query, weights, lengths,
                          kind, format, 1.0f, int(l.num_entries), int(l.row_stride), int(l.dim),
                          int(l.heads), int(l.k), int(l.rows), values, indices, status);
      finish(run, "hetero_indexer");
      output(values, l.values, out_bytes);
      output(indices, l.indices, out_bytes);
      output(status, l.status, 3 * sizeof(int32_t));
    });
  }

  void run_gather(const GatherLaunch& l) override {
    require_kernels();
    guard("hetero_gather run", [&] {
      auto& table = bo_of(l.table);
      const size_t row_bytes = size_t(l.row_words) * 64;
      xrt::bo rows(table, size_t(l.num_rows) * row_bytes, size_t(l.first_row) * row_bytes);
      auto indices = input(gather_, 1, l.indices, size_t(l.count) * 4);
      const size_t out_bytes = size_t(l.count) * row_bytes;
      xrt::bo out(device_, bo_bytes(out_bytes), xrt::bo::flags::normal, gather_.group_id(2));
      xrt::bo status(device_, bo_bytes(64), xrt::bo::flags::normal, gather_.group_id(6));
      auto run = gather_(rows, indices, out, int(l.count), int(l.row_words), int(l.num_rows), status);
      finish(run, "hetero_gather");
      output(out, l.out, size_t(l.count) * row_bytes);
      output(status, l.status, 3 * sizeof(int32_t));
    });
  }

 private:
  void load(const std::string& path) {
    struct stat st;
    if (stat(path.c_str(), &st) != 0) {
      throw DeviceError(DeviceError::Code::kUnavailable,
                        "JAX_HETERO_XCLBIN='" + path + "' does not exist. Fix: build the kernels "
                        "with the v++ flow in hls/ and point JAX_HETERO_XCLBIN at the .xclbin." +
                            std::string(kFallbackHint));
    }
    xrt::xclbin xclbin;
    try {
      xclbin = xrt::xclbin(path);
    } catch (const std::exception& e) {
      throw xrt_error(DeviceError::Code::kUnavailable, "cannot read xclbin '" + path + "'", e,
                      "rebuild it with the v++ flow in hls/");
    }
    std::string names;
    bool has_indexer = false, has_gather = false;
    for (const auto& k : xclbin.get_kernels()) {
      names += (names.empty() ? "" : ", ") + k.get_name();
      has_indexer |= k.get_name() == "hetero_indexer";
      has_gather |= k.get_name() == "hetero_gather";
    }
    if (!has_indexer || !has_gather) {
      throw DeviceError(DeviceError::Code::kUnavailable,
                        "xclbin '" + path + "' lacks the kernel '" +
                            std::string(has_indexer ? "hetero_gather" : "hetero_indexer") +
                            "' (it has: " + (names.empty() ? "none" : names) +
                            "). Fix: build it from hls/ (both hetero_indexer and hetero_gather)." +
                            std::string(kFallbackHint));
    }
    try {
      const auto uuid = device_.load_xclbin(xclbin);
      indexer_ = xrt::kernel(device_, uuid, "hetero_indexer");
      gather_ = xrt::kernel(device_, uuid, "hetero_gather");
    } catch (const std::exception& e) {
      throw xrt_error(DeviceError::Code::kUnavailable, "cannot load xclbin '" + path + "' on xrt:" +
                      std::to_string(index_), e, "check that it was built for this card's shell "
                      "(`xbutil examine` shows it)");
    }
    uint64_t hbm = 0;
    for (const auto& mem : xclbin.get_mems())
      if (mem.get_used() && mem.get_tag().rfind("HBM", 0) == 0) hbm += uint64_t(mem.get_size_kb()) * 1024;
    if (hbm) memory_bytes_ = hbm;
    xclbin_path_ = path;
  }

  void require_kernels() const {
    if (!xclbin_path_.empty()) return;
    throw DeviceError(DeviceError::Code::kUnavailable,
                      "the XRT device xrt:" + std::to_string(index_) + " has no xclbin loaded, so "
                      "it cannot run kernels. Fix: set JAX_HETERO_XCLBIN to the xclbin built by the "
                      "v++ flow in hls/." + std::string(kFallbackHint));
  }

  int group(BufferRole role) const {
    if (xclbin_path_.empty()) return 0;  // buffers-only device: the default bank
    switch (role) {
      case BufferRole::kIndexerMemory: return indexer_.group_id(0);
      case BufferRole::kIndexerMemoryHi: return indexer_.group_id(1);
      case BufferRole::kGatherTable: return gather_.group_id(0);
    }
    return 0;
  }

  xrt::bo input(const xrt::kernel& kernel, int arg, const void* data, size_t bytes) {
    xrt::bo bo(device_, bo_bytes(bytes), xrt::bo::flags::normal, kernel.group_id(arg));
    bo.write(data, bytes, 0);
    bo.sync(XCL_BO_SYNC_BO_TO_DEVICE, bytes, 0);
    count_to_device(bytes);
    return bo;
  }

  void output(xrt::bo& bo, void* dst, size_t bytes) {
    bo.sync(XCL_BO_SYNC_BO_FROM_DEVICE, bytes, 0);
    bo.read(dst, bytes, 0);
    count_from_device(bytes);
  }

  static void finish(xrt::run& run, const char* kernel) {
    const auto state = run.wait();
    if (state != ERT_CMD_STATE_COMPLETED) {
      throw DeviceError(DeviceError::Code::kInternal,
                        std::string(kernel) + " did not complete (ERT state " +
                            std::to_string(int(state)) + "). Fix: check `xbutil examine` and dmesg; "
                            "reset the card with `xbutil reset` if it hangs");
    }
  }

  template <class Fn>
  void guard(const char* what, Fn&& fn) {
    try {
      fn();
    } catch (const DeviceError&) {
      throw;
    } catch (const std::exception& e) {
      throw xrt_error(DeviceError::Code::kInternal, std::string(what) + " failed on xrt:" +
                      std::to_string(index_), e, "check the card with `xbutil examine`");
    }
  }

  unsigned index_;
  xrt::device device_;
  xrt::kernel indexer_, gather_;
  std::string name_, xclbin_path_;
  uint64_t memory_bytes_ = kU55cHbmBytes;
};

}  // namespace

bool xrt_compiled() { return true; }

unsigned xrt_device_count() {
  if (!std::getenv("XILINX_XRT")) return 0;  // XRT cannot even look without it
  try {
    return xrt::system::enumerate_devices();
  } catch (const std::exception&) {
    return 0;
  }
}

std::unique_ptr<Device> make_xrt_device(unsigned index, const std::string& xclbin_path) {
  return std::make_unique<XrtDevice>(index, xclbin_path);
}

#else  // built without XRT

bool xrt_compiled() { return false; }
unsigned xrt_device_count() { return 0; }

std::unique_ptr<Device> make_xrt_device(unsigned, const std::string&) {
  throw DeviceError(DeviceError::Code::kUnavailable,
                    "jax_hetero's FPGA bridge was built without XRT, so JAX_HETERO_FPGA_DEVICE=xrt:* "
                    "is unavailable. Fix: install Debian's libxrt-dev and rebuild (`pip install .`), "
                    "or set JAX_HETERO_FPGA_DEVICE=emulated");
}

#endif

}  // namespace jax_hetero::fpga
