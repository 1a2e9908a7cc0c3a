// Exact top-k of one row with a running threshold: one pass over the input that keeps only
// entries that can still enter the best k, compacting the candidate buffer when it fills.
// Order: larger order key first, then the lower index (jax.lax.top_k's tie rule).
//
// Candidates travel packed in one uint64 (key in the high half, the bitwise complement of
// the index in the low half), so "ranks before" is a plain integer `>`: selection and
// sorting compare integers instead of two fields.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <vector>

#include "common/float_bits.h"

namespace jax_hetero {

struct Candidate {
  uint32_t key;
  int32_t index;
};

inline bool ranks_before(const Candidate& a, const Candidate& b) {
  return a.key != b.key ? a.key > b.key : a.index < b.index;
}

inline uint64_t pack_candidate(uint32_t key, int64_t index) {
  return (uint64_t(key) << 32) | uint64_t(~uint32_t(index));
}
inline uint32_t packed_key(uint64_t packed) { return uint32_t(packed >> 32); }
inline int32_t packed_index(uint64_t packed) { return int32_t(~uint32_t(packed)); }

// order_key(to_float(x)) written without branches so that scan loops vectorise.  For
// float16 it is an order-equivalent key taken from the half's own bits (the candidate keys
// of one row are only compared with each other).
inline uint32_t key_of(float x) {
  const uint32_t b = float_to_bits(x);
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);
}
inline uint32_t key_of(bfloat16_bits x) {
  const uint32_t b = uint32_t(x.bits) << 16;
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);
}
inline uint32_t key_of(float16_bits x) {
  const uint32_t b = uint32_t(x.bits) << 16;  // same sign-magnitude layout as a float
  return b ^ (uint32_t(int32_t(b) >> 31) | 0x80000000u);
}

// The element's bits as a signed integer (16-bit types shifted into the high half, as in
// key_of).  Among non-negative floats this orders like the key, and every negative float is
// below them: a threshold at or above +0.0 can be tested on these bits without building keys.
inline int32_t signed_bits(float x) { return int32_t(float_to_bits(x)); }
inline int32_t signed_bits(bfloat16_bits x) { return int32_t(uint32_t(x.bits) << 16); }
inline int32_t signed_bits(float16_bits x) { return int32_t(uint32_t(x.bits) << 16); }
inline int32_t signed_bits(uint32_t key) { return int32_t(key ^ 0x80000000u); }

// Already a key (the sampled keys of sample_admit).
inline uint32_t key_of(uint32_t key) { return key; }

// Keeps the best k of packed[0:count) in packed[0:k) (unordered); returns the new count.
inline int64_t keep_best_packed(uint64_t* packed, int64_t count, int64_t k) {
  if (count <= k) return count;
  std::nth_element(packed, packed + (k - 1), packed + count, std::greater<uint64_t>());
  return k;
}

// Appends to `out` the best k of the entries of x[begin, end) whose key is >= admit, as
// packed candidates (unordered; at most k of them).  admit = 0 admits everything.
template <class T>
void select_packed(const T* x, int64_t begin, int64_t end, int64_t k, std::vector<uint64_t>& out,
                   uint32_t admit = 0) {
  constexpr int64_t kBlock = 32;
  // Twice k: a compaction (linear in the buffer) runs only after k more entries arrived,
  // and the threshold still follows the k-th best closely for small k.  A block and the
  // tail may overshoot the capacity by less than a block each.
  const int64_t capacity = 2 * k;
  thread_local std::vector<uint64_t> storage;
  if (int64_t(storage.size()) < capacity + 2 * kBlock) storage.resize(capacity + 2 * kBlock);
  uint64_t* buf = storage.data();
  int64_t count = 0, i = begin;
  // Fill phase (nothing known yet): take everything until the buffer holds the capacity.
  if (admit == 0)
    for (const int64_t stop = std::min(end, begin + capacity); i < stop; ++i)
      buf[count++] = pack_candidate(key_of(x[i]), i);
  // After a compaction entries need key > the k-th best so far: it has a lower index than
  // anything to come, so an equal key ranks after it.
  auto compact = [&] {  // false when no later entry can enter
    count = keep_best_packed(buf, count, k);  // count > k here, so buf[k - 1] is the k-th
    const uint32_t kth = packed_key(buf[k - 1]);
    if (kth == UINT32_MAX) return false;
    admit = kth + 1;
    return true;
  };
  if (count >= capacity && i < end && !compact()) i = end;
  for (; i + kBlock <= end; i += kBlock) {
    if (admit > 0x80000000u) {  // only positive floats can enter: compare raw bits
      int32_t block_max = INT32_MIN;
      for (int64_t j = 0; j < kBlock; ++j) block_max = std::max(block_max, signed_bits(x[i + j]));
      if (block_max < int32_t(admit - 0x80000000u)) continue;
    } else {
      uint32_t block_max = 0;
      for (int64_t j = 0; j < kBlock; ++j) block_max = std::max(block_max, key_of(x[i + j]));
      if (block_max < admit) continue;
    }
    for (int64_t j = 0; j < kBlock; ++j) {  // branch-free append of the passing entries
      const uint32_t key = key_of(x[i + j]);
      buf[count] = pack_candidate(key, i + j);
      count += key >= admit;
    }
    if (count >= capacity && !compact()) i = end - kBlock;  // loop step ends the scan
  }
  for (; i < end; ++i) {
    const uint32_t key = key_of(x[i]);
    if (key >= admit) buf[count++] = pack_candidate(key, i);
  }
  count = keep_best_packed(buf, count, k);
  out.insert(out.end(), buf, buf + count);
}

// A key that, judged from a sample of x[begin, end), a little more than k entries reach:
// selecting only entries with key >= it skips most of the candidate-buffer work when k is
// large.  0 (admit everything) where a sample would not pay.  The sample is 64 evenly spaced
// runs of contiguous entries, so sorted or clustered rows are sampled evenly too.
template <class T>
uint32_t sample_admit(const T* x, int64_t begin, int64_t end, int64_t k) {
  const int64_t length = end - begin;
  if (k < 256 || length < 16 * k) return 0;
  constexpr int64_t kRuns = 64;
  // About 128 sampled entries expected above the k-th best, within an eighth of the row.
  const int64_t run = std::max<int64_t>(8, std::min(length / 8, 128 * length / k) / kRuns);
  thread_local std::vector<uint32_t> keys;
  keys.clear();
  for (int64_t r = 0; r < kRuns; ++r) {
    const int64_t start = begin + (length - run) * r / (kRuns - 1);
    for (int64_t i = start; i < start + run; ++i) keys.push_back(key_of(x[i]));
  }
  const double expected = double(keys.size()) * double(k) / double(length);
  // Four standard deviations of margin (binomial count) so a retry is rare.
  const int64_t rank = std::min<int64_t>(int64_t(keys.size()),
                                         int64_t(expected + 4.0 * std::sqrt(expected) + 8.0));
  thread_local std::vector<uint64_t> best;
  best.clear();
  select_packed(keys.data(), 0, int64_t(keys.size()), rank, best);
  if (int64_t(best.size()) < rank) return 0;
  return packed_key(*std::min_element(best.begin(), best.end()));
}

// Appends to `out` the best k entries of x[begin, end) (unordered; at most k of them),
// starting from a sampled threshold when that pays and falling back to a full pass in the
// rare case that fewer than k entries reached it.
template <class T>
void select_row(const T* x, int64_t begin, int64_t end, int64_t k, std::vector<uint64_t>& out) {
  const size_t before = out.size();
  const uint32_t admit = sample_admit(x, begin, end, k);
  select_packed(x, begin, end, k, out, admit);
  if (admit != 0 && int64_t(out.size() - before) < k) {
    out.resize(before);
    select_packed(x, begin, end, k, out);
  }
}

// Sorts packed candidates best first and writes k outputs; slots beyond the candidates get
// (-inf, -1).  `sorted` says the candidates are already in order.
template <class T>
void write_packed(uint64_t* packed, int64_t count, int64_t k, bool sorted, const T* x, T* values,
                  int32_t* indices) {
  if (!sorted) {
    count = keep_best_packed(packed, count, k);
    std::sort(packed, packed + count, std::greater<uint64_t>());
  }
  const int64_t found = std::min(count, k);
  for (int64_t j = 0; j < found; ++j) {
    const int32_t index = packed_index(packed[j]);
    values[j] = x[index];
    indices[j] = index;
  }
  for (int64_t j = found; j < k; ++j) {
    values[j] = from_float<T>(-__builtin_inff());
    indices[j] = -1;
  }
}

// --- The Candidate interface (kept for callers that hold Candidate vectors). ---

// Keeps the best k of `cands` (unordered) in cands[0:k).
inline void keep_best(std::vector<Candidate>& cands, int64_t k) {
  if (int64_t(cands.size()) <= k) return;
  std::nth_element(cands.begin(), cands.begin() + (k - 1), cands.end(), ranks_before);
  cands.resize(k);
}

// Appends to `out` the best k entries of x[begin, end) (unordered; at most k of them).
template <class T>
void select_candidates(const T* x, int64_t begin, int64_t end, int64_t k,
                       std::vector<Candidate>& out) {
  std::vector<uint64_t> packed;
  select_row(x, begin, end, k, packed);
  for (uint64_t p : packed) out.push_back({packed_key(p), packed_index(p)});
}

// Sorts the candidates and writes k outputs; slots beyond the candidates get (-inf, -1).
template <class T>
void write_topk(std::vector<Candidate>& cands, int64_t k, const T* x, T* values, int32_t* indices) {
  std::vector<uint64_t> packed;
  packed.reserve(cands.size());
  for (const Candidate& c : cands) packed.push_back(pack_candidate(c.key, c.index));
  write_packed(packed.data(), int64_t(packed.size()), k, false, x, values, indices);
}

}  // namespace jax_hetero
