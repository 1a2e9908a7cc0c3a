// Top-k selection behind the scorer: a line-rate threshold filter in front of a small sorter.
//
// Scores arrive in increasing entry order. `best` holds the current top (sorted, at most k);
// once it holds k, its last key is the threshold and an arriving entry can only enter with a
// strictly larger key (on equal keys the earlier, lower index wins). Entries that pass go to
// `pending`; when k of them wait, they are sorted (bottom-up merge sort, log2(k) passes of
// II=1 loops) and merged with `best`, keeping k. The filter is one compare per cycle; the
// sorter runs only for passing entries, which for unordered data number about
// k * (1 + ln(n / k)).
#pragma once
#include <stdint.h>

#include <hls_stream.h>

#include "hetero_kernels.h"
#include "indexer_score.h"

namespace hetero {

struct Scored {
  uint32_t key;   // order_key(score)
  int32_t index;  // entry index in the row
};

// a ranks before b: larger key, then lower index.
inline bool ranks_before(const Scored& a, const Scored& b) {
  return a.key != b.key ? a.key > b.key : a.index < b.index;
}

struct TopK {
  Scored best[HETERO_MAX_K];
  Scored pending[HETERO_MAX_K];
  Scored scratch[HETERO_MAX_K];
  int best_count;
  int pending_count;
};

// One merge pass: sorted runs of `width` in src[0, n) become runs of 2 * width in dst.
inline void merge_runs(const Scored* src, Scored* dst, int n, int width) {
  for (int lo = 0; lo < n; lo += 2 * width) {
    const int mid = lo + width < n ? lo + width : n;
    const int hi = lo + 2 * width < n ? lo + 2 * width : n;
    int i = lo, j = mid;
    for (int o = lo; o < hi; ++o) {
#pragma HLS PIPELINE II=1
      const bool take_left = j >= hi || (i < mid && ranks_before(src[i], src[j]));
      dst[o] = take_left ? src[i++] : src[j++];
    }
  }
}

// Bottom-up merge sort of pending, ping-ponging between pending and scratch (fixed arrays,
// no pointer swapping, so HLS maps each to its own BRAM).
inline void sort_pending(TopK& s) {
  const int n = s.pending_count;
  bool in_scratch = false;
  for (int width = 1; width < n; width *= 2) {
    if (in_scratch)
      merge_runs(s.scratch, s.pending, n, width);
    else
      merge_runs(s.pending, s.scratch, n, width);
    in_scratch = !in_scratch;
  }
  if (in_scratch)
    for (int o = 0; o < n; ++o) {
#pragma HLS PIPELINE II=1
      s.pending[o] = s.scratch[o];
    }
}

// Merges sorted `pending` into `best`, keeping the best k.
inline void merge_pending(TopK& s, int k) {
  sort_pending(s);
  const int total = s.best_count + s.pending_count;
  const int keep = total < k ? total : k;
  int i = 0, j = 0;
  for (int o = 0; o < keep; ++o) {
#pragma HLS PIPELINE II=1
    const bool take_best = j >= s.pending_count || (i < s.best_count && ranks_before(s.best[i], s.pending[j]));
    s.scratch[o] = take_best ? s.best[i++] : s.pending[j++];
  }
  for (int o = 0; o < keep; ++o) {
#pragma HLS PIPELINE II=1
    s.best[o] = s.scratch[o];
  }
  s.best_count = keep;
  s.pending_count = 0;
}

// Consumes `count` scored entries from `in` and leaves the sorted top min(k, count) in s.best.
// The filter loop runs at II=1 until k entries wait (or the row ends); then the sorter runs
// while the scorer keeps filling the FIFO.
inline void select_topk(hls::stream<Scored>& in, int count, int k, TopK& s) {
  s.best_count = 0;
  s.pending_count = 0;
  uint32_t threshold = 0;
  bool full = false;
  int i = 0;
  while (i < count) {
    while (i < count && s.pending_count < k) {
#pragma HLS PIPELINE II=1
      const Scored x = in.read();
      ++i;
      if (!full || x.key > threshold) s.pending[s.pending_count++] = x;
    }
    if (s.pending_count == k) {
      merge_pending(s, k);
      full = s.best_count == k;
      if (full) threshold = s.best[k - 1].key;
    }
  }
  if (s.pending_count) merge_pending(s, k);
}

}  // namespace hetero
