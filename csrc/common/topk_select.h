// Exact top-k of one row with a running threshold: one pass over the input that keeps only
// entries beating the current k-th best, compacting the candidate buffer when it fills.
// Order: larger order_key first, then the lower index (jax.lax.top_k's tie rule).
#pragma once
#include <algorithm>
#include <cstdint>
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
  std::vector<Candidate> buf;
  const int64_t capacity = std::max<int64_t>(2 * k, k + 1024);
  buf.reserve(capacity);
  int64_t i = begin;
  // Fill phase: take everything until the buffer holds k entries.
  for (; i < end && int64_t(buf.size()) < capacity; ++i)
    buf.push_back({order_key(to_float(x[i])), int32_t(i)});
  keep_best(buf, k);
  uint32_t threshold = 0;
  auto refresh_threshold = [&] {
    threshold = buf.empty() ? 0 : std::min_element(buf.begin(), buf.end(), [](auto& a, auto& b) {
      return a.key < b.key;
    })->key;
  };
  refresh_threshold();
  const bool full = int64_t(buf.size()) >= k;
  if (!full) {  // fewer than k entries in the range
    out.insert(out.end(), buf.begin(), buf.end());
    return;
  }
  // Filter phase: an entry with key <= threshold and a larger index can never enter.
  constexpr int64_t kBlock = 16;
  for (; i < end;) {
    if (i + kBlock <= end) {
      uint32_t block_max = 0;
      for (int64_t j = 0; j < kBlock; ++j) block_max = std::max(block_max, order_key(to_float(x[i + j])));
      if (block_max <= threshold) {
        i += kBlock;
        continue;
      }
    }
    const int64_t stop = std::min(end, i + kBlock);
    for (; i < stop; ++i) {
      const uint32_t key = order_key(to_float(x[i]));
      if (key > threshold) {
        buf.push_back({key, int32_t(i)});
        if (int64_t(buf.size()) >= capacity) {
          keep_best(buf, k);
          refresh_threshold();
        }
      }
    }
  }
  keep_best(buf, k);
  out.insert(out.end(), buf.begin(), buf.end());
}

// Sorts the candidates and writes k outputs; slots beyond the candidates get (-inf, -1).
template <class T>
void write_topk(std::vector<Candidate>& cands, int64_t k, const T* x, T* values, int32_t* indices) {
  keep_best(cands, k);
  std::sort(cands.begin(), cands.end(), ranks_before);
  const int64_t found = int64_t(cands.size());
  for (int64_t j = 0; j < found; ++j) {
    values[j] = x[cands[j].index];
    indices[j] = cands[j].index;
  }
  for (int64_t j = found; j < k; ++j) {
    values[j] = from_float<T>(-__builtin_inff());
    indices[j] = -1;
  }
}

}  // namespace jax_hetero
