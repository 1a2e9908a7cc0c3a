#include "fpga/bridge.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

#include "common/float_bits.h"
#include "hetero_kernels.h"

namespace jax_hetero::fpga {
namespace {

using Code = DeviceError::Code;

DeviceError op_error(const char* op, Code code, const std::string& message) {
  return DeviceError(code, std::string(op) + ": " + message);
}

MemoryMirror::Verify verify_from_env() {
  const char* v = std::getenv("JAX_HETERO_FPGA_VERIFY");
  if (!v || !*v || std::string(v) == "sampled") return MemoryMirror::Verify::kSampled;
  if (std::string(v) == "full") return MemoryMirror::Verify::kFull;
  throw DeviceError(Code::kInvalidArgument,
                    std::string("JAX_HETERO_FPGA_VERIFY='") + v + "' is not 'sampled' or 'full'");
}

int64_t round_up_64(int64_t bytes) { return (bytes + 63) / 64 * 64; }

float element_to_float(const void* data, int64_t i, ElementType t) {
  switch (t) {
    case ElementType::kF32: return static_cast<const float*>(data)[i];
    case ElementType::kBF16: return to_float(static_cast<const bfloat16_bits*>(data)[i]);
    case ElementType::kF16: return to_float(static_cast<const float16_bits*>(data)[i]);
  }
  return 0;
}

void check_indexer(const IndexerRequest& r) {
  const char* op = "indexer";
  if (r.dtype == ElementType::kF16) {
    throw op_error(op, Code::kInvalidArgument,
                   "the FPGA kernel reads float32 or bfloat16 memory (HETERO_KEYS_F32 / _BF16), got "
                   "float16. Fix: cast q and memory to bfloat16 (x.astype(jnp.bfloat16)) or use "
                   "backend='cpu'");
  }
  if (r.k > HETERO_MAX_K) {
    throw op_error(op, Code::kInvalidArgument,
                   "k=" + std::to_string(r.k) + " exceeds the FPGA kernel's maximum k=" +
                       std::to_string(HETERO_MAX_K) + " (HETERO_MAX_K). Fix: use k <= " +
                       std::to_string(HETERO_MAX_K) + " or backend='cpu'");
  }
  if (r.dim > HETERO_MAX_DIM) {
    throw op_error(op, Code::kInvalidArgument,
                   "head dim " + std::to_string(r.dim) + " exceeds the FPGA kernel's maximum " +
                       std::to_string(HETERO_MAX_DIM) + " (HETERO_MAX_DIM). Fix: use backend='cpu'");
  }
  const int64_t group = r.heads / r.kv_heads;
  if (group > HETERO_MAX_HEADS) {
    throw op_error(op, Code::kInvalidArgument,
                   std::to_string(group) + (r.kind == IndexerKind::kDsa ? " indexer heads" : " query heads per KV head") +
                       " exceed the FPGA kernel's maximum " + std::to_string(HETERO_MAX_HEADS) +
                       " (HETERO_MAX_HEADS). Fix: use backend='cpu'");
  }
  if (r.entries >= (int64_t(1) << 31)) {
    throw op_error(op, Code::kInvalidArgument, "more than 2^31-1 memory entries per row");
  }
}

std::string status_message(const int32_t* status) {
  static const char* const what[] = {"?", "kind", "key_format", "dim", "heads", "k",
                                     "rows/num_entries/row_stride", "key_scale",
                                     "row_words/num_rows/num_indices"};
  const int32_t arg = status[1];
  return "the kernel rejected its arguments (HETERO_BAD_ARGUMENT: " +
         std::string(arg >= 1 && arg <= 8 ? what[arg] : what[0]) + ")";
}

// What the memory mirror did for a call, into the call's record.
void note_sync(CallRecord& rec, const SyncReport& report) {
  rec.memory_rows_uploaded = report.rows_uploaded;
  rec.memory_rows_checked = report.rows_checked;
  rec.new_memory = report.new_entry;
  rec.stale_detected = report.stale_detected;
}

}  // namespace

Bridge& Bridge::instance() {
  // Never destroyed: static destructors run in no defined order across libraries, and
  // closing an xrt::device after XRT's own statics are gone crashes.  Callers close the
  // device with reset() while XRT is alive (the Python module does so at interpreter exit).
  static Bridge* bridge = new Bridge;
  return *bridge;
}

Device& Bridge::device_locked() {
  if (!device_) {
    auto device = open_device_from_env();
    mirror_ = std::make_unique<MemoryMirror>(*device, verify_from_env());
    device_ = std::move(device);
  }
  return *device_;
}

Device& Bridge::device_for(const char* op) {
  try {
    return device_locked();
  } catch (const DeviceError& e) {
    throw op_error(op, e.code(), e.what());
  }
}

DeviceInfo Bridge::device_info() {
  std::lock_guard<std::mutex> lock(mutex_);
  return device_locked().info();
}

void Bridge::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  mirror_.reset();
  device_.reset();
}

std::vector<CallRecord> Bridge::stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  return records_;
}

void Bridge::reset_stats() {
  std::lock_guard<std::mutex> lock(mutex_);
  records_.clear();
}

size_t Bridge::mirror_entries() {
  std::lock_guard<std::mutex> lock(mutex_);
  return mirror_ ? mirror_->entries() : 0;
}

void Bridge::record(CallRecord rec, const TransferCounters& before) {
  const TransferCounters& now = device_->counters();
  rec.device = device_->info().kind;
  rec.transfers.bytes_to_device = now.bytes_to_device - before.bytes_to_device;
  rec.transfers.bytes_from_device = now.bytes_from_device - before.bytes_from_device;
  rec.transfers.transfers_to_device = now.transfers_to_device - before.transfers_to_device;
  rec.transfers.transfers_from_device = now.transfers_from_device - before.transfers_from_device;
  if (records_.size() >= kMaxRecords) records_.erase(records_.begin(), records_.begin() + kMaxRecords / 2);
  records_.push_back(std::move(rec));
}

void Bridge::indexer(const IndexerRequest& r) {
  check_indexer(r);
  const auto start = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  Device* device = &device_for("indexer");
  const TransferCounters before = device->counters();
  const bool dsa = r.kind == IndexerKind::kDsa;
  const int64_t segments = dsa ? 1 : r.kv_heads;
  const int64_t rows = r.batch * segments;
  const int64_t group = r.heads / r.kv_heads;

  Layout layout;
  layout.dtype = r.dtype;
  layout.batch = r.batch;
  layout.rows = r.entries;
  layout.segments = segments;
  layout.segment_bytes = r.dim * int64_t(element_size(r.dtype));
  layout.entry_bytes = round_up_64(layout.segment_bytes);

  CallRecord rec;
  rec.op = "indexer";
  rec.kind = indexer_kind_name(r.kind);
  rec.dtype = element_name(r.dtype);
  rec.rows = rows;
  rec.num_entries = r.entries;
  rec.heads = group;
  rec.dim = r.dim;
  rec.k = r.k;

  std::vector<float> query(size_t(r.batch * r.heads * r.dim));
  for (size_t i = 0; i < query.size(); ++i) query[i] = element_to_float(r.q, int64_t(i), r.dtype);
  std::vector<int32_t> lengths(static_cast<size_t>(rows));
  for (int64_t b = 0; b < r.batch; ++b) {
    const int32_t n = std::clamp<int32_t>(r.valid[b], 0, int32_t(r.entries));
    for (int64_t s = 0; s < segments; ++s) lengths[size_t(b * segments + s)] = n;
    rec.scanned_entries += int64_t(n) * segments;
  }
  int32_t status[3] = {0, 0, 0};
  try {
    mirror_->begin_call();
    SyncReport report;
    const int parts = r.kind == IndexerKind::kQuest ? 2 : 1;
    MemoryHandle handles[2];
    for (int p = 0; p < parts; ++p) {
      layout.role = p == 0 ? BufferRole::kIndexerMemory : BufferRole::kIndexerMemoryHi;
      handles[p] = mirror_->sync_prefix(layout, *r.memory[p], r.valid, report);
    }
    IndexerLaunch launch;
    launch.kind = r.kind;
    launch.dtype = r.dtype;
    launch.rows = rows;
    launch.num_entries = r.entries;
    launch.row_stride = r.entries;
    launch.heads = group;
    launch.dim = r.dim;
    launch.k = r.k;
    launch.memory = &mirror_->buffer(handles[0]);
    launch.memory_hi = parts == 2 ? &mirror_->buffer(handles[1]) : nullptr;
    launch.query = query.data();
    launch.weights = dsa ? r.weights : nullptr;
    launch.lengths = lengths.data();
    launch.values = r.values;
    launch.indices = r.indices;
    launch.status = status;
    device->run_indexer(launch);
    note_sync(rec, report);
  } catch (const DeviceError& e) {
    throw op_error("indexer", e.code(), e.what());
  }
  if (status[0] != HETERO_OK) throw op_error("indexer", Code::kInvalidArgument, status_message(status));
  rec.host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  record(std::move(rec), before);
}

void Bridge::gather(const GatherRequest& r) {
  const auto start = std::chrono::steady_clock::now();
  std::lock_guard<std::mutex> lock(mutex_);
  Device* device = &device_for("gather");
  const TransferCounters before = device->counters();
  Layout layout;
  layout.role = BufferRole::kGatherTable;
  layout.dtype = r.dtype;
  layout.batch = r.table_batch;
  layout.rows = r.table_rows;
  layout.segments = 1;
  layout.segment_bytes = r.row_bytes;
  layout.entry_bytes = round_up_64(r.row_bytes);
  const int64_t row_words = layout.entry_bytes / 64;

  CallRecord rec;
  rec.op = "gather";
  rec.dtype = element_name(r.dtype);
  rec.rows = r.index_batch * r.count;
  rec.num_entries = r.table_rows;
  rec.row_bytes = r.row_bytes;

  std::vector<uint8_t> words(size_t(r.count * layout.entry_bytes));
  std::vector<int32_t> unchecked;
  try {
    mirror_->begin_call();
    SyncReport report;
    for (int64_t i = 0; i < r.index_batch; ++i) {
      const int64_t t = r.table_of[size_t(i)];
      const int32_t* indices = r.indices + i * r.count;
      if (!r.check_indices) {  // the kernel reports bad indices: hand it -1 for them instead
        unchecked.assign(indices, indices + r.count);
        for (int32_t& index : unchecked)
          if (index < -1 || index >= r.table_rows) index = -1;
        indices = unchecked.data();
      }
      const MemoryHandle handle = mirror_->sync_rows(layout, *r.table, t, indices, r.count, report);
      int32_t status[3] = {0, 0, 0};
      GatherLaunch launch;
      launch.table = &mirror_->buffer(handle);
      launch.first_row = t * r.table_rows;
      launch.num_rows = r.table_rows;
      launch.row_words = row_words;
      launch.count = r.count;
      launch.indices = indices;
      launch.out = words.data();
      launch.status = status;
      device->run_gather(launch);
      if (status[0] == HETERO_INDEX_OUT_OF_RANGE) {
        throw DeviceError(Code::kInvalidArgument,
                          "indices[" + std::to_string(i * r.count + status[1]) + "]=" +
                              std::to_string(status[2]) + " is outside [-1, " +
                              std::to_string(r.table_rows) + ") (table has " +
                              std::to_string(r.table_rows) + " rows)");
      }
      if (status[0] != HETERO_OK) throw DeviceError(Code::kInvalidArgument, status_message(status));
      for (int64_t j = 0; j < r.count; ++j) {
        std::memcpy(r.out + (i * r.count + j) * r.row_bytes, words.data() + j * layout.entry_bytes,
                    size_t(r.row_bytes));
      }
    }
    note_sync(rec, report);
  } catch (const DeviceError& e) {
    throw op_error("gather", e.code(), e.what());
  }
  rec.host_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  record(std::move(rec), before);
}

}  // namespace jax_hetero::fpga
