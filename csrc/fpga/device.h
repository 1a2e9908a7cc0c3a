// The accelerator as the bridge sees it: device memory ("HBM") buffers, host<->device
// transfers, and kernel launches.  Two implementations: XrtDevice (a real card through
// XRT's native C++ API) and EmulatedDevice (host memory + the hls/ kernel sources run
// in-process).  Plain C++: no XLA, no Python, so the bridge tests drive it directly.
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

namespace jax_hetero::fpga {

// Every failure of the device layer; the message names the cause and the fix.  The code
// picks the XLA error code the handler returns.
class DeviceError : public std::runtime_error {
 public:
  enum class Code { kUnavailable, kInvalidArgument, kResourceExhausted, kInternal };
  DeviceError(Code code, const std::string& message) : std::runtime_error(message), code_(code) {}
  Code code() const { return code_; }

 private:
  Code code_;
};

enum class ElementType : uint8_t { kF32, kBF16, kF16 };
size_t element_size(ElementType t);
const char* element_name(ElementType t);

// Bytes moved and work done by one kernel launch, for the timing model (Python side).
struct TransferCounters {
  uint64_t bytes_to_device = 0;
  uint64_t bytes_from_device = 0;
  uint64_t transfers_to_device = 0;  // separate DMA operations (each pays the latency)
  uint64_t transfers_from_device = 0;
};

// Which kernel argument a buffer serves; XrtDevice places it in that argument's HBM bank.
enum class BufferRole : uint8_t { kIndexerMemory, kIndexerMemoryHi, kGatherTable };

// Buffers must not outlive the device that allocated them.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  virtual size_t size() const = 0;
};

enum class IndexerKind : uint8_t { kDot, kQuest, kDsa };
const char* indexer_kind_name(IndexerKind k);

// One hetero_indexer launch (hls/include/hetero_kernels.h): `rows` independent kernel rows
// (a (batch, KV head) pair for dot/quest, a batch element for dsa).  Memory tensors are
// resident device buffers laid out [rows][row_stride][entry_words] 64-byte words; the small
// inputs and outputs are host arrays that the device moves itself (and counts).
struct IndexerLaunch {
  IndexerKind kind = IndexerKind::kDot;
  ElementType dtype = ElementType::kF32;  // key format of the memory
  int64_t rows = 0;
  int64_t num_entries = 0;  // entries that may be valid (= row_stride here)
  int64_t row_stride = 0;
  int64_t heads = 0;        // query heads of a KV group, or indexer heads for dsa
  int64_t dim = 0;
  int64_t k = 0;
  const DeviceBuffer* memory = nullptr;     // summaries / keys / minima
  const DeviceBuffer* memory_hi = nullptr;  // maxima (quest)
  const float* query = nullptr;    // [rows][heads][dim]
  const float* weights = nullptr;  // [rows][heads], dsa only
  const int32_t* lengths = nullptr;  // [rows]
  float* values = nullptr;           // [rows][k]
  int32_t* indices = nullptr;        // [rows][k]
  int32_t* status = nullptr;         // [3], the kernel's hetero_status
};

// One hetero_gather launch: table rows [first_row, first_row + num_rows) of a resident
// buffer of rows of row_words 64-byte words.  A bad index is reported in *bad_position.
struct GatherLaunch {
  const DeviceBuffer* table = nullptr;
  int64_t first_row = 0;
  int64_t num_rows = 0;
  int64_t row_words = 0;
  int64_t count = 0;
  const int32_t* indices = nullptr;  // [count], host
  void* out = nullptr;               // [count][row_words] words, host
  int32_t* status = nullptr;         // [3], the kernel's hetero_status
};

struct DeviceInfo {
  std::string kind;         // "emulated" or "xrt"
  std::string name;         // board / shim name
  std::string xclbin;       // loaded xclbin path, empty if none
  uint64_t memory_bytes = 0;  // device memory the bridge may use
  int hbm_banks = 0;
};

class Device {
 public:
  virtual ~Device() = default;
  virtual DeviceInfo info() const = 0;

  // Throws DeviceError (capacity, XRT failure).
  virtual std::unique_ptr<DeviceBuffer> allocate(size_t bytes, BufferRole role) = 0;
  virtual void write(DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) = 0;
  virtual void read(const DeviceBuffer& src, size_t offset, void* dst, size_t bytes) = 0;

  // Kernel launches; small inputs/outputs are transferred and counted by the device.
  virtual void run_indexer(const IndexerLaunch& launch) = 0;
  virtual void run_gather(const GatherLaunch& launch) = 0;


  const TransferCounters& counters() const { return counters_; }
  // Bytes currently allocated on the device.
  uint64_t allocated_bytes() const { return allocated_; }

 protected:
  void count_to_device(uint64_t bytes) { counters_.bytes_to_device += bytes; ++counters_.transfers_to_device; }
  void count_from_device(uint64_t bytes) { counters_.bytes_from_device += bytes; ++counters_.transfers_from_device; }
  TransferCounters counters_;
  uint64_t allocated_ = 0;
};

// Device selection from the environment:
//   JAX_HETERO_FPGA_DEVICE = "emulated" | "xrt:<index>" | "auto" (default: xrt:0 when a card
//   is found, else emulated);  JAX_HETERO_XCLBIN = path of the xclbin for XRT devices;
//   JAX_HETERO_FPGA_MEMORY_BYTES = device memory the emulated device offers (default 16 GiB,
//   the U55C's HBM).
std::unique_ptr<Device> open_device_from_env();
std::unique_ptr<Device> make_emulated_device(uint64_t memory_bytes);
// Throws DeviceError naming the cause and the fix when XRT support was not compiled in or
// the card / xclbin / kernel is missing.
std::unique_ptr<Device> make_xrt_device(unsigned index, const std::string& xclbin_path);
// Whether XRT is compiled in, and how many cards it sees (0 without XRT).
bool xrt_compiled();
unsigned xrt_device_count();

}  // namespace jax_hetero::fpga
