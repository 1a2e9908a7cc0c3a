// Streaming exact top-k over float32 scores that arrive in pieces (tiles computed on the
// fly by the fused indexer), in increasing index order.  Same running-threshold idea and
// packed candidates as common/topk_select.h, but the state lives across calls so the whole
// score row never needs to exist.  Ranking is jax.lax.top_k's: order key, then lower index.
#pragma once
#include <algorithm>
#include <cstdint>
#include <functional>
#include <vector>

#include "common/float_bits.h"
#include "common/topk_select.h"

namespace jax_hetero {

class StreamingTopK {
 public:
  explicit StreamingTopK(int64_t k)
      : k_(k), capacity_(std::max<int64_t>(2 * k, k + 512)), buf_(capacity_ + kBlock) {}

  // Offers x[0, count) as the entries first, first + 1, ...; indices must keep increasing.
  void push(const float* x, int64_t first, int64_t count) {
    if (closed_) return;
    uint64_t* buf = buf_.data();
    int64_t i = 0;
    for (; i + kBlock <= count; i += kBlock) {
      uint32_t block_max = 0;
      for (int64_t j = 0; j < kBlock; ++j) block_max = std::max(block_max, key_of(x[i + j]));
      if (block_max < admit_) continue;
      for (int64_t j = 0; j < kBlock; ++j) {  // branch-free append of the passing entries
        const uint32_t key = key_of(x[i + j]);
        buf[size_] = pack_candidate(key, first + i + j);
        size_ += key >= admit_;
      }
      if (size_ >= capacity_ && !compact()) return;
    }
    for (; i < count; ++i) {
      const uint32_t key = key_of(x[i]);
      if (key < admit_) continue;
      buf[size_++] = pack_candidate(key, first + i);
      if (size_ >= capacity_ && !compact()) return;
    }
  }

  // Appends the best k entries offered (unordered; fewer if fewer came) to `out`.
  void take(std::vector<uint64_t>& out) {
    size_ = keep_best_packed(buf_.data(), size_, k_);
    out.insert(out.end(), buf_.begin(), buf_.begin() + size_);
  }

 private:
  static constexpr int64_t kBlock = 32;

  // Keeps the best k and raises the admission key; false once no later entry can enter.
  bool compact() {
    size_ = keep_best_packed(buf_.data(), size_, k_);  // size_ > k here: buf_[k - 1] is the k-th
    const uint32_t kth = packed_key(buf_[k_ - 1]);
    // An entry equal to the k-th best comes later, so it ranks after it.
    closed_ = kth == UINT32_MAX;
    admit_ = closed_ ? kth : kth + 1;
    return !closed_;
  }

  int64_t k_, capacity_;
  std::vector<uint64_t> buf_;
  int64_t size_ = 0;
  uint32_t admit_ = 0;
  bool closed_ = false;
};

// Sorts packed float32-score candidates best first and writes k outputs (values from the
// keys, which encode the scores exactly); slots beyond the candidates get (-inf, -1).
inline void write_packed_scores(std::vector<uint64_t>& packed, int64_t k, float* values, int32_t* indices) {
  const int64_t count = keep_best_packed(packed.data(), int64_t(packed.size()), k);
  std::sort(packed.begin(), packed.begin() + count, std::greater<uint64_t>());
  for (int64_t j = 0; j < count; ++j) {
    values[j] = key_to_float(packed_key(packed[j]));
    indices[j] = packed_index(packed[j]);
  }
  for (int64_t j = count; j < k; ++j) {
    values[j] = -__builtin_inff();
    indices[j] = -1;
  }
}

}  // namespace jax_hetero
