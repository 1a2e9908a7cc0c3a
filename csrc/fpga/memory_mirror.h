// Keeps memory tensors (block summaries, indexer keys, tables) resident in device memory and
// sends per call only what changed.  See docs/fpga_bridge.md ("Memory mirror").
//
// A memory tensor is seen as host rows [batch][rows][segments * segment_bytes] and stored on
// the device as [batch * segments][rows][entry_bytes]: segment s of host row (b, e) is the
// kernel's entry e of kernel row b * segments + s, zero-padded to whole 64-byte words.
//
// Identity: an entry is found by the layout plus a hash of host row 0 of every batch element,
// so the same growing tensor maps to one entry across calls while the equally-shaped memories
// of different layers map to different entries, whatever buffer address XLA gives them.
// Verification: the mirror stores a 64-bit hash of every resident row.  Prefix syncs (the
// indexer) check row 0, the last resident row and kSampleRows evenly spaced rows whose offset
// advances every call, so each row is checked within ceil(resident / kSampleRows) calls, and
// re-upload the whole tensor when one differs (Verify::kSampled); or they check every
// resident row and re-send the ones that differ (Verify::kFull).  Row syncs (gather) always
// check exactly the requested rows.
#pragma once
#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "fpga/device.h"

namespace jax_hetero::fpga {

struct Layout {
  BufferRole role = BufferRole::kIndexerMemory;  // also tells quest's min and max apart
  ElementType dtype = ElementType::kF32;
  int64_t batch = 1;
  int64_t rows = 0;           // capacity in host rows
  int64_t segments = 1;       // kernel rows per batch element (KV heads)
  int64_t segment_bytes = 0;  // bytes of one segment in the host row
  int64_t entry_bytes = 0;    // segment_bytes rounded up to whole 64-byte words

  int64_t host_row_bytes() const { return segments * segment_bytes; }
  uint64_t device_bytes() const { return uint64_t(batch * segments * rows * entry_bytes); }
  uint64_t device_offset(int64_t b, int64_t row, int64_t segment) const {
    return uint64_t(((b * segments + segment) * rows + row) * entry_bytes);
  }
};

struct RowRange {
  int64_t batch = 0;
  int64_t first = 0;
  int64_t count = 0;
};

// Where the tensor lives on the caller's side: host memory, or GPU memory for the CUDA
// platform.  fetch copies the ranges back to back into dst and returns when all arrived.
class RowSource {
 public:
  virtual ~RowSource() = default;
  virtual void fetch(const std::vector<RowRange>& ranges, uint8_t* dst) = 0;
};

// A host array [batch][rows][row_bytes].
class HostRowSource : public RowSource {
 public:
  HostRowSource(const void* data, int64_t rows, int64_t row_bytes)
      : data_(static_cast<const uint8_t*>(data)), rows_(rows), row_bytes_(row_bytes) {}
  void fetch(const std::vector<RowRange>& ranges, uint8_t* dst) override;

 private:
  const uint8_t* data_;
  int64_t rows_, row_bytes_;
};

struct SyncReport {
  uint64_t rows_uploaded = 0;
  uint64_t rows_checked = 0;
  bool new_entry = false;      // first sight of this tensor (or after eviction / reset)
  bool stale_detected = false; // a resident row no longer matched the caller's tensor
};

// Names an entry for the duration of a call.  An entry evicted or re-created since bumps its
// generation, so an old handle is refused instead of reading freed device memory.
struct MemoryHandle {
  uint64_t id = 0;
  uint64_t generation = 0;
};

class MemoryMirror {
 public:
  enum class Verify { kSampled, kFull };
  static constexpr int64_t kSampleRows = 16;

  MemoryMirror(Device& device, Verify verify) : device_(device), verify_(verify) {}

  // Starts a call: entries used from now on are not evicted until the next begin_call.
  void begin_call() { ++tick_; }

  // Makes host rows [0, needed[b]) of every batch element resident (indexer).
  MemoryHandle sync_prefix(const Layout& layout, RowSource& source, const int32_t* needed,
                           SyncReport& report);
  // Makes the listed host rows of batch element `b` resident and verified (gather); rows
  // outside [0, layout.rows) are skipped (the kernel reports them).
  MemoryHandle sync_rows(const Layout& layout, RowSource& source, int64_t b,
                         const int32_t* rows, int64_t count, SyncReport& report);

  // Throws DeviceError if the handle's entry was evicted or re-created.
  const DeviceBuffer& buffer(const MemoryHandle& handle) const;

  size_t entries() const { return entries_.size(); }

 private:
  struct Entry {
    uint64_t id = 0;
    uint64_t generation = 0;
    uint64_t key = 0;
    Layout layout;
    std::unique_ptr<DeviceBuffer> buffer;
    std::vector<int64_t> resident;   // resident prefix per batch element (prefix syncs)
    std::vector<uint64_t> row_hash;  // [batch * rows]; 0 = not resident
    uint64_t last_use = 0;
    uint64_t checks = 0;  // prefix verifications so far (rotates the sampled rows)
  };

  Entry& lookup(const Layout& layout, RowSource& source, SyncReport& report);
  void make_room(uint64_t bytes);
  void upload(Entry& entry, RowSource& source, const std::vector<RowRange>& ranges,
              SyncReport& report);
  void drop_contents(Entry& entry);

  Device& device_;
  Verify verify_;
  uint64_t tick_ = 0;
  uint64_t next_id_ = 1;
  std::unordered_map<uint64_t, std::unique_ptr<Entry>> entries_;  // by key
  std::vector<uint8_t> staging_;
};

uint64_t hash_bytes(const uint8_t* data, size_t bytes, uint64_t seed);

}  // namespace jax_hetero::fpga
