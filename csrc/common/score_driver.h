// Runs a scorer (common/score_kernels.h) over all rows of a relevancy or indexer call.
// Rows and chunks of each row's valid entries run in parallel, so one decode row also uses
// every core.  Chunks start at multiples of the scorer's tile; relevancy and indexer use the
// same plan, and scores never depend on the split anyway.
#pragma once
#include <algorithm>
#include <cstdint>
#include <vector>
#include <xmmintrin.h>

#include "common/parallel.h"
#include "common/score_kernels.h"
#include "common/stream_select.h"

namespace jax_hetero {

struct ChunkPlan {
  int64_t rows, chunks_per_row, tile;

  ChunkPlan(int64_t rows, int64_t entries, int64_t tile) : rows(rows), tile(tile) {
    const int64_t threads = ThreadPool::instance().num_threads();
    const int64_t tiles = std::max<int64_t>(1, (entries + tile - 1) / tile);
    // A few tasks per thread so that rows of different lengths still balance.
    const int64_t wanted = rows >= 4 * threads ? 1 : (4 * threads + rows - 1) / rows;
    chunks_per_row = std::min(tiles, wanted);
  }
  int64_t tasks() const { return rows * chunks_per_row; }
  // Entries [begin, end) of chunk c of a row with `valid` entries to score.
  void range(int64_t valid, int64_t c, int64_t& begin, int64_t& end) const {
    const int64_t tiles = (valid + tile - 1) / tile;
    begin = std::min(valid, tiles * c / chunks_per_row * tile);
    end = std::min(valid, tiles * (c + 1) / chunks_per_row * tile);
  }
};

// XLA runs handlers with denormals flushed (MXCSR FTZ/DAZ) while pool threads start with the
// default mode: tasks adopt the caller's mode so a score never depends on the thread.
class ScopedFpMode {
 public:
  explicit ScopedFpMode(unsigned mode) : saved_(_mm_getcsr()) { _mm_setcsr(mode); }
  ~ScopedFpMode() { _mm_setcsr(saved_); }

 private:
  unsigned saved_;
};

inline int64_t valid_entries(const int32_t* valid, int64_t batch_index, int64_t entries) {
  return std::clamp<int64_t>(valid[batch_index], 0, entries);
}

// scores[row, entry] for every row; entries at or after the valid count score -inf.
template <class Scorer>
void relevancy_rows(const Scorer& scorer, const int32_t* valid, float* scores) {
  const int64_t entries = scorer.entries();
  const ChunkPlan plan(scorer.rows(), entries, Scorer::kTile);
  const unsigned fp_mode = _mm_getcsr();
  parallel_for(plan.tasks(), [&](int64_t task) {
    const ScopedFpMode mode(fp_mode);
    const int64_t row = task / plan.chunks_per_row, chunk = task % plan.chunks_per_row;
    const int64_t count = valid_entries(valid, scorer.batch_of(row), entries);
    float* out = scores + row * entries;
    if (chunk == plan.chunks_per_row - 1) std::fill(out + count, out + entries, -__builtin_inff());
    int64_t begin, end;
    plan.range(count, chunk, begin, end);
    if (begin == end) return;
    scoring::Workspace ws;
    scorer.prepare(row, ws);
    for (int64_t a = begin; a < end; a += Scorer::kTile)
      scorer.score(row, ws, a, std::min(end, a + Scorer::kTile), out + a);
  });
}

// Fused scoring and top-k: each chunk scores one tile at a time into a small buffer and
// feeds a running-threshold selector; the chunks' candidates are merged per row.
template <class Scorer>
void indexer_rows(const Scorer& scorer, const int32_t* valid, int64_t k, float* values,
                  int32_t* indices) {
  const int64_t entries = scorer.entries();
  const ChunkPlan plan(scorer.rows(), entries, Scorer::kTile);
  std::vector<std::vector<uint64_t>> partial(plan.tasks());
  const unsigned fp_mode = _mm_getcsr();
  parallel_for(plan.tasks(), [&](int64_t task) {
    const ScopedFpMode mode(fp_mode);
    const int64_t row = task / plan.chunks_per_row, chunk = task % plan.chunks_per_row;
    const int64_t count = valid_entries(valid, scorer.batch_of(row), entries);
    int64_t begin, end;
    plan.range(count, chunk, begin, end);
    if (begin < end) {
      scoring::Workspace ws;
      scorer.prepare(row, ws);
      std::vector<float> tile(Scorer::kTile);
      StreamingTopK selector(k);
      for (int64_t a = begin; a < end; a += Scorer::kTile) {
        const int64_t b = std::min(end, a + Scorer::kTile);
        scorer.score(row, ws, a, b, tile.data());
        selector.push(tile.data(), a, b - a);
      }
      selector.take(partial[task]);
    }
    if (plan.chunks_per_row == 1) write_packed_scores(partial[task], k, values + row * k, indices + row * k);
  });
  if (plan.chunks_per_row == 1) return;
  parallel_for(plan.rows, [&](int64_t row) {
    std::vector<uint64_t> merged;
    for (int64_t c = 0; c < plan.chunks_per_row; ++c) {
      auto& part = partial[row * plan.chunks_per_row + c];
      merged.insert(merged.end(), part.begin(), part.end());
    }
    write_packed_scores(merged, k, values + row * k, indices + row * k);
  });
}

}  // namespace jax_hetero
