#include "fpga/memory_mirror.h"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace jax_hetero::fpga {
namespace {

// Staging for one upload step; larger uploads go in several steps.
constexpr uint64_t kStagingBytes = uint64_t(64) << 20;

uint64_t mix(uint64_t h) {  // murmur3's 64-bit finaliser
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  return h ^ (h >> 33);
}

// snprintf, not iostreams: formatting numbers through an ostream crashed inside the module
// on the GPU machine (see common/ffi_util.h).
std::string gib(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.3g GiB", double(bytes) / double(uint64_t(1) << 30));
  return text;
}

}  // namespace

uint64_t hash_bytes(const uint8_t* data, size_t bytes, uint64_t seed) {
  uint64_t h = mix(seed ^ (bytes * 0x9e3779b97f4a7c15ULL));
  size_t i = 0;
  for (; i + 8 <= bytes; i += 8) {
    uint64_t w;
    std::memcpy(&w, data + i, 8);
    h = (h ^ mix(w)) * 0x9e3779b97f4a7c15ULL;
  }
  if (i < bytes) {
    uint64_t w = 0;
    std::memcpy(&w, data + i, bytes - i);
    h = (h ^ mix(w)) * 0x9e3779b97f4a7c15ULL;
  }
  h = mix(h);
  return h ? h : 1;  // 0 marks "not resident"
}

void HostRowSource::fetch(const std::vector<RowRange>& ranges, uint8_t* dst) {
  for (const auto& r : ranges) {
    const size_t bytes = size_t(r.count * row_bytes_);
    std::memcpy(dst, data_ + (r.batch * rows_ + r.first) * row_bytes_, bytes);
    dst += bytes;
  }
}

MemoryMirror::Entry& MemoryMirror::lookup(const Layout& layout, RowSource& source,
                                          SyncReport& report) {
  const int64_t fields[] = {int64_t(layout.role), int64_t(layout.dtype), layout.batch, layout.rows,
                            layout.segments, layout.segment_bytes, layout.entry_bytes};
  uint64_t key = hash_bytes(reinterpret_cast<const uint8_t*>(fields), sizeof(fields), 0x51ab);
  if (layout.rows > 0) {
    std::vector<RowRange> first_rows;
    for (int64_t b = 0; b < layout.batch; ++b) first_rows.push_back({b, 0, 1});
    std::vector<uint8_t> data(size_t(layout.batch * layout.host_row_bytes()));
    source.fetch(first_rows, data.data());
    key = hash_bytes(data.data(), data.size(), key);
  }
  auto it = entries_.find(key);
  if (it != entries_.end()) {
    it->second->last_use = tick_;
    return *it->second;
  }
  make_room(layout.device_bytes());
  auto entry = std::make_unique<Entry>();
  entry->id = next_id_++;
  entry->key = key;
  entry->layout = layout;
  entry->buffer = device_.allocate(layout.device_bytes(), layout.role);
  entry->resident.assign(size_t(layout.batch), 0);
  entry->row_hash.assign(size_t(layout.batch * layout.rows), 0);
  entry->last_use = tick_;
  report.new_entry = true;
  return *entries_.emplace(key, std::move(entry)).first->second;
}

void MemoryMirror::make_room(uint64_t bytes) {
  const uint64_t capacity = device_.info().memory_bytes;
  if (bytes > capacity) {
    throw DeviceError(DeviceError::Code::kResourceExhausted,
                      "the memory tensor needs " + gib(bytes) + " of device memory but the " +
                          device_.info().kind + " device has " + gib(capacity) +
                          ". Fix: shorten the context or batch (or split the batch over calls), "
                          "or run this op with backend='cpu' or 'xla'");
  }
  while (device_.allocated_bytes() + bytes > capacity) {
    // Evict the least recently used entry that this call does not use.
    auto victim = entries_.end();
    for (auto it = entries_.begin(); it != entries_.end(); ++it) {
      if (it->second->last_use == tick_) continue;
      if (victim == entries_.end() || it->second->last_use < victim->second->last_use) victim = it;
    }
    if (victim == entries_.end()) {
      throw DeviceError(DeviceError::Code::kResourceExhausted,
                        "the memory tensors of this call need " +
                            gib(device_.allocated_bytes() + bytes) + " of device memory together "
                            "but the " + device_.info().kind + " device has " + gib(capacity) +
                            ". Fix: shorten the context or batch, or use backend='cpu' or 'xla'");
    }
    entries_.erase(victim);
  }
}

void MemoryMirror::drop_contents(Entry& entry) {
  std::fill(entry.resident.begin(), entry.resident.end(), 0);
  std::fill(entry.row_hash.begin(), entry.row_hash.end(), 0);
  ++entry.generation;
}

void MemoryMirror::upload(Entry& entry, RowSource& source, const std::vector<RowRange>& ranges,
                          SyncReport& report) {
  const Layout& L = entry.layout;
  const int64_t row_bytes = L.host_row_bytes();
  const int64_t rows_per_step = std::max<int64_t>(1, int64_t(kStagingBytes) / row_bytes);
  std::vector<uint8_t> packed;
  for (RowRange range : ranges) {
    while (range.count > 0) {
      RowRange step{range.batch, range.first, std::min(range.count, rows_per_step)};
      staging_.resize(size_t(step.count * row_bytes));
      source.fetch({step}, staging_.data());
      packed.assign(size_t(step.count * L.entry_bytes), 0);
      // One contiguous device write per segment: entries [first, first + count) of its row.
      for (int64_t s = 0; s < L.segments; ++s) {
        for (int64_t r = 0; r < step.count; ++r) {
          std::memcpy(packed.data() + r * L.entry_bytes,
                      staging_.data() + r * row_bytes + s * L.segment_bytes, size_t(L.segment_bytes));
        }
        device_.write(*entry.buffer, L.device_offset(step.batch, step.first, s), packed.data(),
                      packed.size());
      }
      for (int64_t r = 0; r < step.count; ++r) {
        entry.row_hash[size_t(step.batch * L.rows + step.first + r)] =
            hash_bytes(staging_.data() + r * row_bytes, size_t(row_bytes), 0);
      }
      report.rows_uploaded += uint64_t(step.count);
      range.first += step.count;
      range.count -= step.count;
    }
  }
}

MemoryHandle MemoryMirror::sync_prefix(const Layout& layout, RowSource& source,
                                       const int32_t* needed, SyncReport& report) {
  Entry& entry = lookup(layout, source, report);
  const int64_t row_bytes = layout.host_row_bytes();
  // Rows past a shrunk length are no longer trusted (the batch slot may hold a new sequence).
  for (int64_t b = 0; b < layout.batch; ++b) {
    const int64_t n = std::clamp<int64_t>(needed[b], 0, layout.rows);
    for (int64_t r = n; r < entry.resident[b]; ++r) entry.row_hash[size_t(b * layout.rows + r)] = 0;
    entry.resident[b] = std::min(entry.resident[b], n);
  }

  // Verify the resident prefix.
  std::vector<RowRange> checks;
  for (int64_t b = 0; b < layout.batch; ++b) {
    const int64_t resident = entry.resident[b];
    if (resident == 0) continue;
    if (verify_ == Verify::kFull) {
      checks.push_back({b, 0, resident});
      continue;
    }
    // Evenly spaced samples whose offset advances with each check of this entry, so every
    // row of a stable prefix is looked at within `stride` calls.
    std::vector<int64_t> rows = {0, resident - 1};
    const int64_t stride = (resident + kSampleRows - 1) / kSampleRows;
    const int64_t offset = int64_t(entry.checks % uint64_t(stride));
    for (int64_t j = 0; j < kSampleRows; ++j) {
      const int64_t r = j * stride + offset;
      if (r < resident) rows.push_back(r);
    }
    std::sort(rows.begin(), rows.end());
    rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
    for (int64_t r : rows) checks.push_back({b, r, 1});
  }
  ++entry.checks;
  std::vector<RowRange> uploads;
  if (!checks.empty()) {
    int64_t total = 0;
    for (const auto& c : checks) total += c.count;
    std::vector<uint8_t> data(size_t(total * row_bytes));
    source.fetch(checks, data.data());
    report.rows_checked += uint64_t(total);
    const uint8_t* row = data.data();
    for (const auto& c : checks) {
      for (int64_t r = c.first; r < c.first + c.count; ++r, row += row_bytes) {
        if (hash_bytes(row, size_t(row_bytes), 0) == entry.row_hash[size_t(c.batch * layout.rows + r)])
          continue;
        report.stale_detected = true;
        if (verify_ == Verify::kFull) {
          if (!uploads.empty() && uploads.back().batch == c.batch &&
              uploads.back().first + uploads.back().count == r) {
            ++uploads.back().count;
          } else {
            uploads.push_back({c.batch, r, 1});
          }
        }
      }
    }
    if (report.stale_detected && verify_ == Verify::kSampled) {
      drop_contents(entry);
      uploads.clear();
    }
  }

  // Send the rows appended since the last call (all of them after a drop).
  for (int64_t b = 0; b < layout.batch; ++b) {
    const int64_t n = std::clamp<int64_t>(needed[b], 0, layout.rows);
    if (entry.resident[b] < n) uploads.push_back({b, entry.resident[b], n - entry.resident[b]});
  }
  upload(entry, source, uploads, report);
  for (int64_t b = 0; b < layout.batch; ++b)
    entry.resident[b] = std::max(entry.resident[b], std::clamp<int64_t>(needed[b], 0, layout.rows));
  return {entry.id, entry.generation};
}

MemoryHandle MemoryMirror::sync_rows(const Layout& layout, RowSource& source, int64_t b,
                                     const int32_t* rows, int64_t count, SyncReport& report) {
  Entry& entry = lookup(layout, source, report);
  std::vector<RowRange> uploads;
  if (report.new_entry) {  // first sight: the whole table in one bulk transfer per batch element
    for (int64_t t = 0; t < layout.batch; ++t) uploads.push_back({t, 0, layout.rows});
    upload(entry, source, uploads, report);
    for (int64_t t = 0; t < layout.batch; ++t) entry.resident[t] = layout.rows;
    return {entry.id, entry.generation};
  }
  std::vector<int64_t> wanted;
  for (int64_t i = 0; i < count; ++i)
    if (rows[i] >= 0 && rows[i] < layout.rows) wanted.push_back(rows[i]);
  std::sort(wanted.begin(), wanted.end());
  wanted.erase(std::unique(wanted.begin(), wanted.end()), wanted.end());
  if (wanted.empty()) return {entry.id, entry.generation};

  const int64_t row_bytes = layout.host_row_bytes();
  std::vector<RowRange> checks;
  for (int64_t r : wanted) checks.push_back({b, r, 1});
  std::vector<uint8_t> data(size_t(int64_t(wanted.size()) * row_bytes));
  source.fetch(checks, data.data());
  report.rows_checked += wanted.size();
  for (size_t i = 0; i < wanted.size(); ++i) {
    const uint64_t stored = entry.row_hash[size_t(b * layout.rows + wanted[i])];
    if (hash_bytes(data.data() + i * row_bytes, size_t(row_bytes), 0) == stored) continue;
    if (stored != 0) report.stale_detected = true;
    if (!uploads.empty() && uploads.back().first + uploads.back().count == wanted[i]) {
      ++uploads.back().count;
    } else {
      uploads.push_back({b, wanted[i], 1});
    }
  }
  upload(entry, source, uploads, report);
  return {entry.id, entry.generation};
}

const DeviceBuffer& MemoryMirror::buffer(const MemoryHandle& handle) const {
  for (const auto& [key, entry] : entries_) {
    if (entry->id != handle.id) continue;
    if (entry->generation != handle.generation) break;
    return *entry->buffer;
  }
  throw DeviceError(DeviceError::Code::kInternal,
                    "stale memory handle (entry " + std::to_string(handle.id) + ", generation " +
                        std::to_string(handle.generation) +
                        "): the device copy was evicted or re-uploaded since; sync the tensor again");
}

}  // namespace jax_hetero::fpga
