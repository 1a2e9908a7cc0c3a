// The emulated device: "HBM" buffers in host memory and the hls/ kernel sources called
// in-process, so results are bit-identical to C simulation.  Transfers are memcpy but are
// counted exactly as XrtDevice would perform them, for the timing model.
#include <cstring>
#include <vector>

#include "fpga/device.h"
#include "hetero_kernels.h"

namespace jax_hetero::fpga {
namespace {

class HostBuffer : public DeviceBuffer {
 public:
  explicit HostBuffer(size_t bytes) : words_((bytes + 63) / 64), bytes_(bytes) {}
  size_t size() const override { return bytes_; }
  hetero_word_t* words() { return words_.data(); }
  const hetero_word_t* words() const { return words_.data(); }
  uint8_t* bytes() { return reinterpret_cast<uint8_t*>(words_.data()); }

 private:
  std::vector<hetero_word_t> words_;
  size_t bytes_;
};

const HostBuffer& host(const DeviceBuffer* b) { return *static_cast<const HostBuffer*>(b); }

class EmulatedDevice : public Device {
 public:
  explicit EmulatedDevice(uint64_t memory_bytes) : memory_bytes_(memory_bytes) {}

  DeviceInfo info() const override {
    DeviceInfo i;
    i.kind = "emulated";
    i.name = "emulated Alveo U55C (hls/ kernels in-process)";
    i.memory_bytes = memory_bytes_;
    i.hbm_banks = 32;
    return i;
  }

  std::unique_ptr<DeviceBuffer> allocate(size_t bytes, BufferRole) override {
    if (allocated_ + bytes > memory_bytes_) {
      throw DeviceError(DeviceError::Code::kResourceExhausted,
                        "emulated device out of memory: " + std::to_string(allocated_ + bytes) +
                            " bytes requested of " + std::to_string(memory_bytes_) +
                            " (JAX_HETERO_FPGA_MEMORY_BYTES)");
    }
    allocated_ += bytes;
    return std::unique_ptr<DeviceBuffer>(new Tracked(bytes, allocated_));
  }

  void write(DeviceBuffer& dst, size_t offset, const void* src, size_t bytes) override {
    check_range(dst, offset, bytes);
    std::memcpy(static_cast<HostBuffer&>(dst).bytes() + offset, src, bytes);
    count_to_device(bytes);
  }

  void read(const DeviceBuffer& src, size_t offset, void* dst, size_t bytes) override {
    check_range(src, offset, bytes);
    std::memcpy(dst, reinterpret_cast<const uint8_t*>(host(&src).words()) + offset, bytes);
    count_from_device(bytes);
  }

  void run_indexer(const IndexerLaunch& l) override {
    // Inputs the host sends per call: query, weights (dsa), lengths.
    count_to_device(uint64_t(l.rows * l.heads * l.dim) * sizeof(float));
    if (l.kind == IndexerKind::kDsa) count_to_device(uint64_t(l.rows * l.heads) * sizeof(float));
    count_to_device(uint64_t(l.rows) * sizeof(int32_t));
    hetero_indexer(host(l.memory).words(), l.memory_hi ? host(l.memory_hi).words() : nullptr,
                   l.query, l.weights, l.lengths, kernel_kind(l.kind), key_format(l.dtype), 1.0f,
                   int(l.num_entries), int(l.row_stride), int(l.dim), int(l.heads), int(l.k),
                   int(l.rows), l.values, l.indices, l.status);
    count_from_device(uint64_t(l.rows * l.k) * (sizeof(float) + sizeof(int32_t)));
  }

  void run_gather(const GatherLaunch& l) override {
    count_to_device(uint64_t(l.count) * sizeof(int32_t));
    hetero_gather(host(l.table).words() + l.first_row * l.row_words, l.indices,
                  static_cast<hetero_word_t*>(l.out), int(l.count), int(l.row_words),
                  int(l.num_rows), l.status);
    count_from_device(uint64_t(l.count * l.row_words) * 64);
  }

 private:
  // Gives its bytes back to the device's count when freed.
  class Tracked : public HostBuffer {
   public:
    Tracked(size_t bytes, uint64_t& allocated) : HostBuffer(bytes), allocated_(allocated) {}
    ~Tracked() override { allocated_ -= size(); }

   private:
    uint64_t& allocated_;
  };

  static void check_range(const DeviceBuffer& b, size_t offset, size_t bytes) {
    if (offset > b.size() || bytes > b.size() - offset) {
      throw DeviceError(DeviceError::Code::kInternal,
                        "transfer of " + std::to_string(bytes) + " bytes at offset " +
                            std::to_string(offset) + " overruns a device buffer of " +
                            std::to_string(b.size()) + " bytes");
    }
  }
  static int kernel_kind(IndexerKind k) {
    return k == IndexerKind::kDot ? HETERO_KIND_DOT : k == IndexerKind::kQuest ? HETERO_KIND_QUEST : HETERO_KIND_DSA;
  }
  static int key_format(ElementType t) { return t == ElementType::kBF16 ? HETERO_KEYS_BF16 : HETERO_KEYS_F32; }

  uint64_t memory_bytes_;
};

}  // namespace

std::unique_ptr<Device> make_emulated_device(uint64_t memory_bytes) {
  return std::make_unique<EmulatedDevice>(memory_bytes);
}

}  // namespace jax_hetero::fpga
