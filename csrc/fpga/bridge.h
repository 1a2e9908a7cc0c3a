// The bridge: one device per process (opened on first use from the environment), the memory
// mirror, per-call statistics, and the two ops as the FFI handlers of every platform see
// them (host arrays for the small inputs and outputs, RowSources for the memory tensors).
// Every entry point holds one mutex, so calls from several threads are serialised and the
// device runs one launch at a time.
#pragma once
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "fpga/device.h"
#include "fpga/memory_mirror.h"

namespace jax_hetero::fpga {

struct IndexerRequest {
  IndexerKind kind = IndexerKind::kDot;
  ElementType dtype = ElementType::kF32;  // q and memory
  int64_t batch = 0;
  int64_t entries = 0;   // blocks (dot, quest) or tokens (dsa)
  int64_t heads = 0;     // hq, or indexer heads h for dsa
  int64_t kv_heads = 1;  // hkv; 1 for dsa
  int64_t dim = 0;
  int64_t k = 0;
  const void* q = nullptr;          // host [batch, heads, dim] of dtype
  const float* weights = nullptr;   // host [batch, heads] (dsa)
  const int32_t* valid = nullptr;   // host [batch]
  RowSource* memory[2] = {nullptr, nullptr};  // [batch, entries, kv_heads * dim]; quest: (min, max)
  float* values = nullptr;          // host [batch, kv_heads, k]
  int32_t* indices = nullptr;       // host [batch, kv_heads, k]
};

struct GatherRequest {
  ElementType dtype = ElementType::kF32;
  int64_t table_batch = 1;
  std::vector<int64_t> table_of;  // [index_batch]: the table batch element each index batch reads
  int64_t table_rows = 0;
  int64_t row_bytes = 0;
  int64_t index_batch = 1;
  int64_t count = 0;                 // indices per index batch
  RowSource* table = nullptr;        // [table_batch, table_rows, row_bytes]
  const int32_t* indices = nullptr;  // host [index_batch, count]
  uint8_t* out = nullptr;            // host [index_batch, count, row_bytes]
  bool check_indices = true;         // false: an index outside [-1, table_rows) reads as -1
};

// What one call did; the Python side turns it into modelled device time (timing_model.py).
struct CallRecord {
  std::string op;      // "indexer" or "gather"
  std::string kind;    // dot / quest / dsa for the indexer
  std::string dtype;
  std::string device;  // "emulated" or "xrt"
  int64_t rows = 0;             // kernel rows (indexer) or indices (gather)
  int64_t num_entries = 0;
  int64_t scanned_entries = 0;  // sum of the valid lengths over kernel rows
  int64_t heads = 0, dim = 0, k = 0;
  int64_t row_bytes = 0;        // gather
  TransferCounters transfers;
  uint64_t memory_rows_uploaded = 0;
  uint64_t memory_rows_checked = 0;
  bool new_memory = false;
  bool stale_detected = false;
  double host_seconds = 0;  // wall time of the bridge call on this machine
};

class Bridge {
 public:
  static Bridge& instance();

  // Throw DeviceError with a message that starts with the op name.
  void indexer(const IndexerRequest& request);
  void gather(const GatherRequest& request);

  DeviceInfo device_info();                 // opens the device if needed
  void reset();                             // closes the device; the next call reopens it
  std::vector<CallRecord> stats();
  void reset_stats();
  size_t mirror_entries();

  // Records kept; the oldest are dropped beyond this.
  static constexpr size_t kMaxRecords = 100000;

 private:
  Device& device_locked();
  Device& device_for(const char* op);  // device_locked(), its errors naming `op`
  void record(CallRecord rec, const TransferCounters& before);

  std::mutex mutex_;
  std::unique_ptr<Device> device_;
  std::unique_ptr<MemoryMirror> mirror_;  // destroyed before device_ (declared after)
  std::vector<CallRecord> records_;
};

}  // namespace jax_hetero::fpga
