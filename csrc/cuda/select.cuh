// Exact top-k selection by one thread-block cluster per (row, segment): every CTA of the
// cluster holds its slice of the segment as order keys in shared memory (read from HBM once;
// 32 bits, or 16 for 16-bit inputs and for truncated float32 keys), the radix passes merge
// their histograms through distributed shared memory, and the selected entries are compacted
// in index order.  A final level orders the (at most kSortCap) winners in rank 0, or across the
// cluster (order_across_cluster); a non-final level writes them as candidates for the next one.
//
// A Loader fills a CTA's keys (and original indices when kHasIdx) for a range of a row,
// counting each key's first radix digit (store_key).  Its StagedKey is the type of the keys in
// shared memory: uint32_t, or uint16_t for 16-bit inputs (see staged_key).  A loader with
// kTruncated stages only the upper 16 bits of 32-bit keys and gives full_key(row, column) on
// demand: the passes over the upper bits run on shared memory, and an entry's full key is read
// again only where its upper bits tie with the threshold's, and for the winners:
// raw scores (topk), candidates of an earlier level, or scores computed on the fly (indexer).
#pragma once
#include <cooperative_groups.h>

#include <cstdio>

#include <cub/block/block_radix_sort.cuh>
#include <cub/block/block_scan.cuh>

#include "cuda/cuda_util.h"

namespace jax_hetero {
namespace cg = cooperative_groups;

// Programmatic dependent launch (sm_90): a candidate level is launched with programmatic stream
// serialization, so the GPU may start it while the level before it finishes (every CTA of that
// level calls allow_next_grid as it starts); it waits for that level's completion and memory
// before it reads anything.  Both are no-ops for kernels launched without the attribute.
__device__ __forceinline__ void wait_for_previous_grid() { asm volatile("griddepcontrol.wait;" ::: "memory"); }
__device__ __forceinline__ void allow_next_grid() { asm volatile("griddepcontrol.launch_dependents;" ::: "memory"); }

// Arrives at the cluster barrier without cg's GPU-wide memory barrier (MEMBAR.ALL.GPU): only
// where the arrive orders nothing, i.e. this CTA's reads of other CTAs' shared memory are
// complete and their values used.  The matching wait is cluster.barrier_wait().
__device__ __forceinline__ void cluster_arrive_relaxed() {
  asm volatile("barrier.cluster.arrive.relaxed.aligned;" ::: "memory");
}

// A 16-byte read of data that this launch reads once (a top-k row, the indexer's keys), kept
// out of L1 and evict-first in L2, so that streaming it does not push out what stays in use
// there (the kernels' own code among it).  `policy` comes from evict_first_policy().
__device__ __forceinline__ uint64_t evict_first_policy() {
  uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}
__device__ __forceinline__ uint4 load_once(const uint4* p, uint64_t policy) {
  uint4 v;
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
      : "l"(p), "l"(policy));
  return v;
}

constexpr int kSelectThreads = 512;
constexpr int kSelectWarps = kSelectThreads / 32;
constexpr int kDigitBits = 11;
constexpr int kBins = 1 << kDigitBits;
constexpr int kSortCap = 2048;  // largest k of the selection path
constexpr int kMaxLevels = 4;
constexpr int kMaxPasses = 4;  // radix passes of a truncated loader (bits 31-21, 20-16, 15-5, 4-0)
// Words of SelectParams::row_sync per row: the barrier's arrivals at word 0, the winner slots
// taken at word kRowSyncWords / 2, on separate 128-byte lines.
constexpr int kRowSyncWords = 64;
constexpr int kRankSortMax = 256;  // final levels with at most this many winners rank them by counting
constexpr int kMinSplitEntries = 2048;  // entries a CTA keeps when plan_level splits a row further
constexpr int kSelectCtasPerSm = 2;     // 512 threads x 64 registers (and <= 113 KiB of shared memory)

struct SelectParams {
  int64_t k;
  int64_t num_segments;   // segments per row at this level
  int64_t segment_len;    // entries per segment (cluster size * per_cta)
  int per_cta;            // entries per CTA (<= capacity)
  int capacity;           // key slots in shared memory per CTA
  int key_low_bit;        // 0 for 32-bit keys, 16 for 16-bit ones
  bool final_level;
  int value_bytes;        // 4 or 2: the output value type of the final level
  uint32_t neg_inf_bits;  // -inf in that type
  void* values;           // final: [rows, k]
  int32_t* indices;       // final: [rows, k]
  uint32_t* cand_keys;    // non-final: [rows, num_segments, k]
  int32_t* cand_idx;
  // Row merge (a final level whose row spans several clusters, all resident at once; see
  // run_levels): the clusters of a row select over the whole row together, merging their
  // counts through global memory behind row barriers, and every CTA of the row places a share
  // of the winners.  All but the winners are zero at launch.
  bool row_merge;
  // (One field more changes the SASS of every top-k kernel, so the barrier and slot counts share one.)
  uint32_t* row_sync;      // [rows, kRowSyncWords]: arrivals at the row's barriers so far, winner slots taken
  uint32_t* row_hist;      // [rows, kMaxPasses, kBins]: the row's counts per pass
  uint2* row_counts;       // [rows, CTAs per row]: each CTA's keys above / equal to the threshold
  uint32_t* row_win_keys;  // [rows, k]: the winners, each CTA's in index order
  int32_t* row_win_idx;
};

// Final outputs as float32 values (the indexers' scores) and int32 indices.
inline SelectParams float32_select_params(int64_t k, float* values, int32_t* indices) {
  SelectParams p{};
  p.k = k;
  p.key_low_bit = 0;
  p.value_bytes = 4;
  p.neg_inf_bits = 0xff800000u;
  p.values = values;
  p.indices = indices;
  return p;
}

// Entries of a row that survive `levels` earlier levels with segment lengths seg_len[]:
// every full segment yields k, the last partial one min(k, rest).
__host__ __device__ inline int64_t surviving(int64_t valid, int levels, const int64_t* seg_len, int64_t k) {
  for (int l = 0; l < levels; ++l) {
    const int64_t full = valid / seg_len[l], rest = valid % seg_len[l];
    valid = full * k + (rest < k ? rest : k);
  }
  return valid;
}

struct SelectSmem {
  size_t keys, idx, hist, sort_keys, sort_idx, list, extra, total;
};

// Survivor slots per warp (see select_kernel): at most 256, at most a warp's share of capacity.
__host__ __device__ inline int select_list_cap(int capacity) {
  const int share = ((capacity + kSelectWarps - 1) / kSelectWarps + 31) & ~31;
  return share < 256 ? share : 256;
}

template <class Loader>
__host__ __device__ inline SelectSmem select_smem(int capacity, size_t extra_bytes) {
  SelectSmem s{};
  size_t off = 0;
  s.keys = off; off += size_t(capacity) * sizeof(typename Loader::StagedKey);  // capacities are multiples of 8
  s.idx = off; off += Loader::kHasIdx ? size_t(capacity) * 4 : 0;
  s.hist = off; off += 2 * kBins * 4;  // this CTA's histogram + its merged slice
  s.sort_keys = off; off += kSortCap * 4;
  s.sort_idx = off; off += kSortCap * 4;
  s.list = off; off += size_t(kSelectWarps) * select_list_cap(capacity) * 2;  // a multiple of 1 KiB
  s.extra = off; off += extra_bytes;
  s.total = off;
  return s;
}

// Keys in shared memory: 32-bit order keys, or the upper halves of those of 16-bit inputs (their
// lower halves are zero), so that a CTA holds twice as many.
template <class Staged>
__host__ __device__ __forceinline__ Staged staged_key(uint32_t key) {
  return Staged(key >> (32 - 8 * sizeof(Staged)));
}
template <class Staged>
__host__ __device__ __forceinline__ uint32_t order_key(Staged s) {
  return uint32_t(s) << (32 - 8 * sizeof(Staged));
}

// Order keys of the staged entries first .. first + 3 (32-bit keys, first a multiple of 4).
__device__ __forceinline__ void four_keys(const uint32_t* keys, int first, uint32_t (&key)[4]) {
  const uint4 v = *reinterpret_cast<const uint4*>(keys + first);
  key[0] = v.x, key[1] = v.y, key[2] = v.z, key[3] = v.w;
}
// Order keys of the staged entries first .. first + 7 (16-bit keys, first a multiple of 8).
__device__ __forceinline__ void eight_keys(const uint16_t* keys, int first, uint32_t (&key)[8]) {
  const uint4 v = *reinterpret_cast<const uint4*>(keys + first);
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
  for (int c = 0; c < 4; ++c) key[2 * c] = w[c] << 16, key[2 * c + 1] = w[c] & 0xffff0000u;  // even entry low
}

using SortBlock = cub::BlockRadixSort<uint32_t, kSelectThreads, kSortCap / kSelectThreads, int32_t, 4>;
using ScanBlock = cub::BlockScan<uint32_t, kSelectThreads>;
// This thread's four bins of a kBins histogram, highest first: bins kBins-1-4t ... kBins-4-4t
// hold the counts cnt[0..3], `before` entries lie in the bins above them and `total` in all.
struct FourBins {
  uint32_t cnt[4];
  uint32_t before, total;

  // `four` holds bins kBins-4-4t ... kBins-1-4t as read from memory; a block scan counts them
  // from the top.  Called by every thread.
  template <class Scan>
  static __device__ FourBins scan(uint4 four, typename Scan::TempStorage& storage) {
    FourBins b{{four.w, four.z, four.y, four.x}, 0, 0};
    Scan(storage).ExclusiveSum(b.cnt[0] + b.cnt[1] + b.cnt[2] + b.cnt[3], b.before, b.total);
    return b;
  }
  // The same over a histogram in this CTA's shared memory.
  template <class Scan>
  static __device__ FourBins scan(const uint32_t* hist, typename Scan::TempStorage& storage) {
    return scan<Scan>(reinterpret_cast<const uint4*>(hist)[(kBins - 4 - int(threadIdx.x) * 4) / 4], storage);
  }

  // Calls found(bin, entries in the bins above it, its count) in the one thread whose bin holds
  // the rank-th entry from the top (none when rank is 0 or exceeds total).
  template <class Found>
  __device__ void find(uint32_t rank, const Found& found) const {
    uint32_t above = before;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      if (above < rank && above + cnt[j] >= rank) found(uint32_t(kBins - 1 - (threadIdx.x * 4 + j)), above, cnt[j]);
      above += cnt[j];
    }
  }
};

// The sort reuses the histograms and the (already loaded) sort buffer, which lie back to back.
static_assert(sizeof(SortBlock::TempStorage) <= 2 * kBins * 4 + 2 * kSortCap * 4, "sort storage too large");

// Counting rank of `count` (<= kRankSortMax) entries: g threads share entry e = tid / g and count
// the entries j with precedes(j, e).  Gives each entry's rank in one of its threads, and
// rank -1 in every other thread.  Called by every thread.
struct EntryRank {
  int entry, rank;
  int group;  // g: lanes tid / g * g ... of a warp share the entry
};
template <class Precedes>
__device__ inline EntryRank counting_rank(int count, const Precedes& precedes) {
  int g = 1;
  while (g < 32 && count * g * 2 <= kSelectThreads) g *= 2;
  const int e = threadIdx.x / g, sub = threadIdx.x % g;
  uint32_t rank = 0;
  if (e < count)
#pragma unroll 4
    for (int j = sub; j < count; j += g) rank += precedes(j, e) ? 1u : 0u;
  for (int o = 1; o < g; o <<= 1) rank += __shfl_xor_sync(~0u, rank, o);  // g lanes of one warp
  return {e, e < count && sub == 0 ? int(rank) : -1, g};
}

// counting_rank of `count` winners in index order: a larger key, or an equal key at a lower
// position (a lower index), ranks above.
__device__ inline EntryRank rank_winners(const uint32_t* win_keys, int count) {
  return counting_rank(count, [&](int j, int e) {
    const uint32_t kj = win_keys[j], ke = win_keys[e];
    return kj > ke || (kj == ke && j < e);
  });
}

// Output slot o of a final level: the value (bit-exact from its order key) and the index.
__device__ __forceinline__ void store_result(const SelectParams& p, int64_t o, uint32_t key, int32_t index) {
  if (p.value_bytes == 4) static_cast<uint32_t*>(p.values)[o] = bits32_of_key(key);
  else static_cast<uint16_t*>(p.values)[o] = bits16_of_key(key);
  p.indices[o] = index;
}

// Fills output slots [sel, k) of row `row` with -inf and index -1, slot sel + first, then every
// `stride`-th.
__device__ inline void fill_empty_slots(const SelectParams& p, int64_t row, int sel, int first, int stride) {
  for (int at = sel + first; at < p.k; at += stride) {
    const int64_t o = row * p.k + at;
    if (p.value_bytes == 4) static_cast<uint32_t*>(p.values)[o] = p.neg_inf_bits;
    else static_cast<uint16_t*>(p.values)[o] = uint16_t(p.neg_inf_bits);
    p.indices[o] = -1;
  }
}

// Writes a final level's `sel` winners (shared memory, in index order) to row `row` of the
// outputs, largest key first and ties in index order, and fills the slots past `sel` with -inf
// and index -1.  sort_storage (at least sizeof(SortBlock::TempStorage) bytes of shared memory) may overlap
// the winners: they are read before it is written.  Called by every thread.
__device__ inline void write_final_order(const uint32_t* win_keys, const int32_t* win_idx, int sel, int64_t row,
                                  const SelectParams& p, void* sort_storage) {
  const int tid = threadIdx.x, lane = tid & 31;
  fill_empty_slots(p, row, sel, tid, kSelectThreads);
  if (sel <= kRankSortMax) {
    // Few winners: each one's output slot is the number of winners ranked above it.
    const EntryRank r = rank_winners(win_keys, sel);
    if (r.rank >= 0) store_result(p, row * p.k + r.rank, win_keys[r.entry], win_idx[r.entry]);
    return;
  }

  // Sort the winners by key, descending; stable, so ties stay in index order.  Only the bits
  // where the winners differ are sorted (all of them share the bits above).
  __shared__ uint32_t s_diff;
  if (tid == 0) s_diff = 0;
  constexpr int kItems = kSortCap / kSelectThreads;
  uint32_t sk[kItems];
  int32_t si[kItems];
  uint32_t diff = 0;
  const uint32_t first_key = win_keys[0];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int at = tid * kItems + j;
    sk[j] = at < sel ? win_keys[at] : 0u;  // padding sorts last (lowest digits, and after)
    si[j] = at < sel ? win_idx[at] : -1;
    if (at < sel) diff |= sk[j] ^ first_key;
  }
  diff = __reduce_or_sync(~0u, diff);
  __syncthreads();  // s_diff is cleared; the winners are read
  if (lane == 0 && diff) atomicOr(&s_diff, diff);
  __syncthreads();
  const int end_bit = max(32 - __clz(s_diff), p.key_low_bit + 1);
  auto& storage = *static_cast<typename SortBlock::TempStorage*>(sort_storage);
  SortBlock(storage).SortDescendingBlockedToStriped(sk, si, p.key_low_bit, end_bit);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int at = j * kSelectThreads + tid;
    if (at < sel) store_result(p, row * p.k + at, sk[j], si[j]);
  }
}

// A final level's order when a cluster of cs CTAs holds its `sel` winners in slices of
// 1 << shift <= kRankSortMax: slice r, the winners at positions [r << shift, (r + 1) << shift)
// of the index order, lies in CTA r's win_keys / win_idx.  Each CTA ranks its slice by
// counting and publishes the keys in that order; a winner's output slot is its place in its
// slice plus the winners of the other slices that precede it: those of lower slices with a key
// >= its key (equal keys there have lower indices) and those of higher slices with a larger
// key, found by binary searches in a copy of every published slice, kSearches at a time so
// that their shared-memory reads overlap.  This spreads over the cluster what rank 0 alone did
// in write_final_order (a block sort: 15.9k cycles for 2048 float32 winners; 9.4k from the
// written winners to the end here, and 1x131072 21.3 -> 18.0 us, H200).  `scratch`: 2 * kBins
// words of this CTA's shared memory that no other CTA reads any more; mark(name) notes a
// phase boundary in trace builds.  Called by every thread of the cluster.
template <class Mark>
__device__ inline void order_across_cluster(cg::cluster_group& cluster, int sel, int shift, const uint32_t* win_keys,
                                            const int32_t* win_idx, uint32_t* scratch, int64_t row,
                                            const SelectParams& p, const Mark& mark) {
  const int tid = threadIdx.x, lane = tid & 31;
  const int cs = int(cluster.num_blocks()), rank = int(cluster.block_rank());
  const int slice = 1 << shift;
  auto slice_len = [&](int s) { return min(max(sel - (s << shift), 0), slice); };
  // This slice's keys and indices in rank order, then every slice's published keys, each
  // slice 4 words further along the banks than a plain back-to-back copy would put it.
  const int stride = slice + 4;
  uint32_t* published = scratch;
  int32_t* published_idx = reinterpret_cast<int32_t*>(scratch + kRankSortMax);
  uint32_t* all = scratch + 2 * kRankSortMax;
  fill_empty_slots(p, row, sel, rank * kSelectThreads + tid, cs * kSelectThreads);

  // `group` lanes share a winner of the slice and split the other slices.
  const EntryRank r = rank_winners(win_keys, slice_len(rank));
  const int group = r.group, sub = lane & (group - 1);
  if (r.rank >= 0) {
    published[r.rank] = win_keys[r.entry];
    published_idx[r.rank] = win_idx[r.entry];
  }
  mark("o:rank");
  cluster.sync();  // every slice is published
  mark("o:sync");
  for (int at = 4 * tid; at < sel; at += 4 * kSelectThreads)  // slices are multiples of 4 long
    *reinterpret_cast<uint4*>(all + (at >> shift) * stride + (at & (slice - 1))) =
        *reinterpret_cast<const uint4*>(cluster.map_shared_rank(published, at >> shift) + (at & (slice - 1)));
  cluster_arrive_relaxed();  // this CTA reads no other's shared memory after this
  __syncthreads();
  mark("o:copy");

  // The group of lanes that ranked a winner now places the winner of that rank instead, so a
  // warp's lanes search for neighbouring keys and read neighbouring words.
  const int place = tid / group < slice_len(rank) ? tid / group : -1;
  const uint32_t key = place >= 0 ? published[place] : 0u;

  // Lane `sub` of a group searches slices sub, sub + group, ...; its own slice and slices past
  // cs count as empty.  counting_rank's groups hold at least kSelectThreads / slice lanes, so
  // kSearches * group >= 2048 / slice >= cs.
  constexpr int kSearches = 4;
  int len[kSearches], count[kSearches], first[kSearches];  // first: the slice's offset in `all`
#pragma unroll
  for (int i = 0; i < kSearches; ++i) {
    const int s = sub + i * group;
    len[i] = place >= 0 && s < cs && s != rank ? slice_len(s) : 0;
    first[i] = min(s, cs - 1) * stride;
    count[i] = 0;
  }
#pragma unroll
  for (int b = 8; b >= 0; --b) {  // steps of kRankSortMax ... 1
    const int step = 1 << b;
    if (step > slice) continue;  // uniform
    // Every search reads (a clamped position when its step is past the slice's end), so the
    // reads issue together: guarded, ptxas put each read after the previous search's compare.
    uint32_t v[kSearches];
#pragma unroll
    for (int i = 0; i < kSearches; ++i) v[i] = all[first[i] + max(min(count[i] + step, len[i]), 1) - 1];
#pragma unroll
    for (int i = 0; i < kSearches; ++i) {
      const int at = count[i] + step;
      if (at <= len[i] && (v[i] > key || (v[i] == key && sub + i * group < rank))) count[i] = at;
    }
  }
  uint32_t before = 0;
#pragma unroll
  for (int i = 0; i < kSearches; ++i) before += uint32_t(count[i]);
  for (int o = 1; o < group; o <<= 1) before += __shfl_xor_sync(~0u, before, o);
  if (place >= 0 && sub == 0) store_result(p, row * p.k + place + before, key, published_idx[place]);
  mark("o:search");
  cluster.barrier_wait();  // no CTA leaves while another may read its published slice
}

// A barrier over the `ctas` CTAs of a row-merged level: `count` is this CTA's number of row
// barriers so far, including this one, and *arrivals starts at zero.  Global writes before it
// are visible to every CTA of the row after it: thread 0 arrives with a release (cumulative
// over the CTA's writes, which __syncthreads orders before it) and polls with an acquire,
// instead of two sequentially consistent fences around a relaxed atomic.  Every CTA of the
// row must be resident, which the cooperative launch guarantees (launch_select).
__device__ inline void row_barrier(uint32_t* arrivals, int64_t ctas, int count) {
  __syncthreads();
  if (threadIdx.x == 0) {
    asm volatile("red.release.gpu.global.add.u32 [%0], 1;" ::"l"(arrivals) : "memory");
    const uint64_t target = uint64_t(ctas) * count;
    for (;;) {
      uint32_t seen;
      asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(seen) : "l"(arrivals) : "memory");
      if (seen >= target) break;
      __nanosleep(64);
    }
  }
  __syncthreads();
}

// Every Loader says how many CTAs share an SM (kCtasPerSm, which its plans assume), and the
// launch bounds hold ptxas to that: one CTA may take every register (ptxas kept the truncated
// float32 kernel at 64 and spilled), two must fit in 64 each (the float32 kernel grew to 99
// once, and 1 x 10M top-2048 took 108 instead of 80 us, H200).
template <class Loader>
__global__ void __launch_bounds__(kSelectThreads, Loader::kCtasPerSm)
select_kernel(const Loader loader, const SelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  allow_next_grid();
  wait_for_previous_grid();
  JH_TRACE_START;
  __shared__ typename ScanBlock::TempStorage scan_storage;
  __shared__ uint32_t s_digit, s_remaining, s_bin_full;
  __shared__ uint32_t s_warp_gt[kSelectWarps], s_warp_eq[kSelectWarps];
  __shared__ uint32_t s_cta_gt, s_cta_eq, s_gt_before, s_eq_before;
  __shared__ uint32_t s_list_count[kSelectWarps];

  const SelectSmem lay = select_smem<Loader>(p.capacity, loader.extra_bytes());
  using Staged = typename Loader::StagedKey;
  Staged* keys = reinterpret_cast<Staged*>(smem + lay.keys);
  int32_t* idx = reinterpret_cast<int32_t*>(smem + lay.idx);
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem + lay.hist);
  uint32_t* sort_keys = reinterpret_cast<uint32_t*>(smem + lay.sort_keys);
  int32_t* sort_idx = reinterpret_cast<int32_t*>(smem + lay.sort_idx);
  const int list_cap = select_list_cap(p.capacity);

  cg::cluster_group cluster = cg::this_cluster();
  const int cs = int(cluster.num_blocks());
  const int rank = int(cluster.block_rank());
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t cluster_id = blockIdx.x / cs;
  const int64_t row = cluster_id / p.num_segments, seg = cluster_id % p.num_segments;
  // Row merge: only loaders that one_wave_plan plans for compile it (kRowMerge).
  const bool row_merge = Loader::kRowMerge && p.row_merge;
  const int64_t row_ctas = p.num_segments * cs, row_cta = seg * cs + rank;
  int row_barriers = 0;
  auto sync_row = [&] { row_barrier(p.row_sync + kRowSyncWords * row, row_ctas, ++row_barriers); };

  const int64_t valid = loader.valid(row);
  const int64_t seg_begin = seg * p.segment_len;
  const int64_t seg_end = min64(valid, seg_begin + p.segment_len);
  const int64_t begin = seg_begin + int64_t(rank) * p.per_cta;
  const int len = int(max64(0, min64(begin + p.per_cta, seg_end) - begin));
  // Entry i's order key, complete wherever its upper 16 bits equal those of `with` (the only
  // entries whose lower bits a comparison with `with` needs).
  auto key_at = [&](int i, uint32_t with) {
    uint32_t key = order_key(keys[i]);
    if constexpr (Loader::kTruncated)
      if ((key ^ with) < 0x10000u) key = loader.full_key(row, begin + i);
    return key;
  };
  // The loader also counts the first radix digit (bits 21..31) of every key it stores.  A pass
  // needs one cluster barrier to merge the CTAs' counts.  Clusters of 16 push every CTA's counts
  // into the owners' slices with remote atomics (rank r owns bins [r * span, (r + 1) * span) of
  // the merged histogram; one slice per pass, zeroed here).  Smaller clusters sum each thread's
  // four bins over the cluster's histograms, which alternate between the two halves of `hist`
  // from pass to pass: a CTA clears a half only after the next pass's barrier, when every other
  // has read it.  (H200: summing this way instead of in owner slices between two barriers,
  // 64x131072 float32 41.8 -> 40.5, 64x8192 16.4 -> 15.1 us.)
  uint32_t* local_hist = hist;
  uint32_t* merged = hist + kBins;
  const int span = kBins / cs;
  const bool push = cs >= 16;  // a slice of span bins per pass (at most 4) fits in merged's kBins
  for (int b = tid; b < kBins; b += kSelectThreads) local_hist[b] = 0;
  if (push)
    for (int b = tid; b < 4 * span; b += kSelectThreads) merged[b] = 0;
  __syncthreads();
  if (push) cluster.barrier_arrive();  // released: this CTA's slices are zero
  loader.load(row, begin, len, keys, idx, local_hist, smem + lay.extra);
  if (push) cluster.barrier_wait();  // every CTA's slices are zero
  JH_TRACE("load");

  // Warp w owns the contiguous entries [w_begin, w_end) of this CTA; its `sequence` is those
  // entries, or (once pass 1 has listed them, see below) only its survivors, in index order.
  const int warp_len = (((len + kSelectWarps - 1) / kSelectWarps) + 31) & ~31;
  const int w_begin = min(len, warp * warp_len), w_end = min(len, w_begin + warp_len);
  const unsigned lanes_below = (1u << lane) - 1u;
  uint16_t* my_list = reinterpret_cast<uint16_t*>(smem + lay.list) + warp * list_cap;
  // List slots are 16-bit: entries of the CTA, or, where a CTA may hold more than 65,536
  // (row-merged loaders), of the warp's range.
  const int list_base = Loader::kRowMerge ? w_begin : 0;
  bool use_list = false;
  int w_count = w_end - w_begin;
  // Position j < w_count of this warp's sequence -> entry of the CTA.
  auto entry = [&](int j) { return use_list ? list_base + int(my_list[j]) : w_begin + j; };

  // Radix passes: find the key T of the k'-th largest entry (k' = min(k, valid entries)).
  uint32_t prefix = 0, prefix_mask = 0, remaining = 0, selected = 0;
  bool whole_bin = false;  // stopped early: the winners are exactly the keys >= prefix
  for (int pass = 0, hi = 32; hi > p.key_low_bit; ++pass) {
    // A truncated loader's passes stop at bit 16 once, so that passes 0 and 1 need only the
    // staged bits (later passes sweep the survivor lists).
    const int lo = max(hi - kDigitBits, Loader::kTruncated && hi > 16 ? 16 : p.key_low_bit);
    const uint32_t digit_mask = (1u << (hi - lo)) - 1u;
    // Counts a key that carries this pass's prefix in the bin of its digit.
    auto count_digit = [&](uint32_t key) {
      if ((key & prefix_mask) == prefix) atomicAdd(&local_hist[(key >> lo) & digit_mask], 1u);
    };
    if (pass > 0) {
      if (!push) local_hist = hist + (pass & 1) * kBins;
      for (int b = tid; b < kBins; b += kSelectThreads) local_hist[b] = 0;
      __syncthreads();
      if (pass == 1) {
        // Filter: after pass 0 every winner's first digit equals pass 0's digit, so an entry
        // whose key is below `prefix` (that digit, lower bits 0) cannot win.  Each warp lists
        // the positions of the others (survivors), in order, then counts this pass over them;
        // later sweeps read only the lists when every warp's survivors fit its list_cap slots.
        // Each lane reads 16 or 32 bytes per step: four 32-bit or sixteen 16-bit keys of
        // consecutive entries, so a warp's entries are in index order lane by lane, and a
        // lane's survivors take the slots after those of the lanes below.  A warp's last step
        // may read up to 511 entries past its range (masked): they lie in shared memory, as the
        // keys are followed by the histograms.
        uint32_t kept = 0;
        if constexpr (sizeof(Staged) == 2) {
          // Sixteen entries: five ballots of the bits of each lane's survivor count give the
          // sum below it; survivors are few (about 2 % of a random row), so only lanes that
          // hold one write.  (One ballot per entry: bf16 64x131072 31.2 against 29.9 us, H200;
          // the same loop for 32-bit keys made 4x1M and dsa 1.1 us slower.  Eight entries per
          // step: 29.7 us.)
          for (int base = w_begin; base < w_end; base += 512) {
            const int first = base + 16 * lane;
            uint32_t lo[8], hi[8];
            eight_keys(keys, first, lo);
            eight_keys(keys, first + 8, hi);
            const int in_range = min(max(w_end - first, 0), 16);
            uint32_t mine = 0;  // bit q: entry first + q survives
#pragma unroll
            for (int q = 0; q < 8; ++q)
              mine |= (lo[q] >= prefix ? 1u << q : 0u) | (hi[q] >= prefix ? 1u << (q + 8) : 0u);
            mine &= (1u << in_range) - 1u;
            const uint32_t count = __popc(mine);
            uint32_t below = 0;
#pragma unroll
            for (int b = 0; b < 5; ++b) below += __popc(__ballot_sync(~0u, (count >> b) & 1u) & lanes_below) << b;
            const uint32_t total = __reduce_add_sync(~0u, count);
            for (uint32_t at = kept + below; mine; mine &= mine - 1, ++at)
              if (at < uint32_t(list_cap)) my_list[at] = uint16_t(first - list_base + __ffs(int(mine)) - 1);
            kept += total;
          }
        } else {
          // Four entries: a ballot each; an entry's slot is the survivors of the lanes below
          // plus its own earlier ones.
          for (int base = w_begin; base < w_end; base += 128) {
            const int first = base + 4 * lane;
            uint32_t key[4];
            four_keys(keys, first, key);
            bool keep[4];
            uint32_t at = kept;
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              keep[q] = first + q < w_end && key[q] >= prefix;
              const unsigned keep_mask = __ballot_sync(~0u, keep[q]);
              at += __popc(keep_mask & lanes_below);
              kept += __popc(keep_mask);
            }
#pragma unroll
            for (int q = 0; q < 4; ++q) {
              if (keep[q] && at < uint32_t(list_cap)) my_list[at] = uint16_t(first - list_base + q);
              at += keep[q] ? 1u : 0u;
            }
          }
        }
        // This pass's counts: every entry with pass 0's digit is a survivor, so the list holds
        // them all unless it overflowed.  (Counted inside the loop above, each entry's atomic
        // sat in a branch with a convergence barrier, as ptxas does not predicate them: 27k
        // against 14.5k cycles for this pass over 65,536 keys, H200.)
        __syncwarp();  // the lanes' list entries are visible
        const bool listed = kept <= uint32_t(list_cap);
        for (int j = lane; j < (listed ? int(kept) : w_end - w_begin); j += 32) {
          const int i = listed ? list_base + int(my_list[j]) : w_begin + j;
          const uint32_t key = order_key(keys[i]);
          count_digit(key);
        }
        if (lane == 0) s_list_count[warp] = kept;  // read after the cluster.sync below
      } else if (use_list) {
        for (int j = lane; j < w_count; j += 32) {
          const uint32_t key = key_at(list_base + int(my_list[j]), prefix);
          count_digit(key);
        }
      } else {
        for (int i = tid; i < len; i += kSelectThreads) {
          const uint32_t key = key_at(i, prefix);
          count_digit(key);
        }
      }
    }
    uint32_t* slice = merged + pass * span;  // with push: this pass's merged counts, per owner
    if (push) {
      __syncthreads();  // this CTA's histogram is complete
      for (int b = tid; b < kBins; b += kSelectThreads) {
        const uint32_t v = local_hist[b];
        if (v) atomicAdd(cluster.map_shared_rank(slice + b % span, b / span), v);
      }
    }
    cluster.sync();  // every CTA's histogram is complete (pushed)
    JH_TRACE(pass == 0 ? "hist0" : "histN");
    if (pass == 1) {  // the same decision in every thread of the CTA
      bool fits = true;
      for (int w = 0; w < kSelectWarps; ++w) fits = fits && s_list_count[w] <= uint32_t(list_cap);
      use_list = fits;
      if (use_list) w_count = int(s_list_count[warp]);
    }
    // The four bins kBins-4-4t ... kBins-1-4t (descending order), read from their owner or
    // summed over the cluster.
    const int first_bin = kBins - 4 - tid * 4;
    uint4 four = make_uint4(0, 0, 0, 0);
    if (push) {
      four = reinterpret_cast<const uint4*>(cluster.map_shared_rank(slice, first_bin / span))[(first_bin % span) / 4];
    } else {
      for (int r = 0; r < cs; ++r) {
        const uint4 v = reinterpret_cast<const uint4*>(cluster.map_shared_rank(local_hist, r))[first_bin / 4];
        four.x += v.x, four.y += v.y, four.z += v.z, four.w += v.w;
      }
    }
    if (row_merge) {
      // Every CTA of the cluster has the cluster's counts; a 1/cs share of the threads adds
      // them to the row's (one atomic per non-zero bin and cluster), and after the row barrier
      // every thread reads the row's four bins.
      uint32_t* row_bins = p.row_hist + (row * kMaxPasses + pass) * kBins + first_bin;
      if (tid % cs == rank) {
        if (four.x) atomicAdd(row_bins, four.x);
        if (four.y) atomicAdd(row_bins + 1, four.y);
        if (four.z) atomicAdd(row_bins + 2, four.z);
        if (four.w) atomicAdd(row_bins + 3, four.w);
      }
      sync_row();
      four = __ldcg(reinterpret_cast<const uint4*>(row_bins));
    }
    const FourBins bins = FourBins::scan<ScanBlock>(four, scan_storage);
    if (pass == 0) {
      selected = uint32_t(min64(p.k, bins.total));
      remaining = selected;
    }
    if (remaining == 0) break;  // uniform over the cluster: no valid entry
    bins.find(remaining, [&](uint32_t bin, uint32_t above, uint32_t count) {
      s_digit = bin;
      s_remaining = remaining - above;
      s_bin_full = above + count == remaining;
    });
    __syncthreads();
    JH_TRACE("digit");
    prefix |= s_digit << lo;
    prefix_mask |= digit_mask << lo;
    remaining = s_remaining;
    hi = lo;
    // Every entry of the chosen bin wins: the winners are the keys >= prefix (lower bits 0),
    // so the remaining passes are skipped.  Uniform over the cluster (same merged histogram).
    if (s_bin_full && hi > p.key_low_bit && prefix != 0) {
      whole_bin = true;
      break;
    }
  }
  // Entries > threshold all win, and the first `remaining` entries equal to it.
  const uint32_t threshold = whole_bin ? prefix - 1 : prefix;
  if (whole_bin) remaining = 0;  // no tie wins (entries equal to prefix - 1 need not be listed)
  // Every entry equal to the threshold wins, or none does (uniform over the row): no CTA needs
  // the counts of those before it (see the row merge below).
  const bool all_ties_win = selected == 0 || s_bin_full;

  // Count, per warp sequence, the entries above and equal to the threshold.  Every winner has a
  // key >= pass 0's `prefix`, so the survivor lists hold them all (with whole_bin, entries equal
  // to the threshold may be missing from the lists, but then no tie wins and eq is not used).
  uint32_t gt = 0, eq = 0;
  for (int base = 0; base < w_count; base += 32) {
    const int j = base + lane;
    const bool in = j < w_count;
    const uint32_t key = in ? key_at(entry(j), threshold) : 0u;
    gt += __popc(__ballot_sync(~0u, in && key > threshold));
    eq += __popc(__ballot_sync(~0u, in && key == threshold));
  }
  if (lane == 0) {
    s_warp_gt[warp] = gt;
    s_warp_eq[warp] = eq;
  }
  __syncthreads();
  if (tid == 0) {
    uint32_t a = 0, b = 0;
    for (int w = 0; w < kSelectWarps; ++w) a += s_warp_gt[w], b += s_warp_eq[w];
    s_cta_gt = a;
    s_cta_eq = b;
    if (row_merge && !all_ties_win) p.row_counts[row * row_ctas + row_cta] = make_uint2(a, b);
  }
  if (!row_merge) cluster.sync();
  else if (!all_ties_win) sync_row();
  JH_TRACE("count");
  if (warp == 0) {  // entries of lower ranks (row merge: of the CTAs before this one in the row)
    uint32_t a = 0, b = 0;
    if (row_merge && all_ties_win) {
      // Every winner is known without the other CTAs' counts: this CTA takes the next free
      // slots of the row (the row's winners are then in index order per CTA only).
      if (lane == 0) a = atomicAdd(p.row_sync + kRowSyncWords * row + kRowSyncWords / 2, s_cta_gt + (remaining ? s_cta_eq : 0u));
    } else if (row_merge) {
      // Up to 128 CTAs' counts per step, loaded together.
      for (int64_t c0 = 0; c0 < row_cta; c0 += 128) {
        uint2 v[4];
#pragma unroll
        for (int u = 0; u < 4; ++u) {
          const int64_t c = c0 + 32 * u + lane;
          v[u] = c < row_cta ? __ldcg(p.row_counts + row * row_ctas + c) : make_uint2(0, 0);
        }
#pragma unroll
        for (int u = 0; u < 4; ++u) a += v[u].x, b += v[u].y;
      }
    } else if (lane < rank) {  // one remote read per lane
      a = *cluster.map_shared_rank(&s_cta_gt, lane);
      b = *cluster.map_shared_rank(&s_cta_eq, lane);
    }
    for (int o = 16; o; o >>= 1) a += __shfl_xor_sync(~0u, a, o), b += __shfl_xor_sync(~0u, b, o);
    if (lane == 0) s_gt_before = a, s_eq_before = b;
  }
  __syncthreads();
  // A candidate level writes its winners to global memory: this CTA has done all its reads of
  // other CTAs' shared memory, so it arrives now and, at the end, only waits until no other may
  // still read its own.
  if (!p.final_level) cluster_arrive_relaxed();
  uint32_t gt_before = s_gt_before, eq_before = s_eq_before;
  for (int w = 0; w < warp; ++w) gt_before += s_warp_gt[w], eq_before += s_warp_eq[w];

  // Write the winners in index order: position = winners before it.  A final level's go to
  // rank 0, or, when there are many and several CTAs, in slices of 1 << shift to every CTA
  // (see order_across_cluster).
  const int slice_shift = 32 - __clz(int(selected) - 1) - (31 - __clz(cs));  // ceil_pow2(selected) / cs
  const bool spread = p.final_level && selected > uint32_t(kRankSortMax) && slice_shift <= 8;  // <= kRankSortMax
  const int shift = spread ? slice_shift : 31;
  const int64_t slot = (row * p.num_segments + seg) * p.k;
  uint32_t eq_rank = eq_before, pos = gt_before + min(eq_before, remaining);
  // Truncated keys: the full keys of the warp's next kAhead steps are loaded ahead, so that
  // several steps' loads are in flight (loaded where used, each step waited for its own).  A
  // warp without a survivor list (more than list_cap survivors) loads every entry's this way.
  constexpr int kAhead = 4;
  uint32_t ahead[kAhead];
  if constexpr (Loader::kTruncated)
#pragma unroll
    for (int a = 0; a < kAhead; ++a) {
      const int j = a * 32 + lane;
      ahead[a] = j < w_count ? loader.full_key(row, begin + entry(j)) : 0u;
    }
  for (int base = 0; base < w_count; base += 32) {
    const int j = base + lane;
    const bool in = j < w_count;
    const int i = in ? entry(j) : 0;
    uint32_t key;
    if constexpr (Loader::kTruncated) {
      key = ahead[0];
#pragma unroll
      for (int a = 0; a + 1 < kAhead; ++a) ahead[a] = ahead[a + 1];
      const int next = j + kAhead * 32;
      ahead[kAhead - 1] = next < w_count ? loader.full_key(row, begin + entry(next)) : 0u;
    } else {
      key = in ? key_at(i, threshold) : 0u;
    }
    const bool is_eq = in && key == threshold;
    const unsigned eq_mask = __ballot_sync(~0u, is_eq);
    const bool win = in && (key > threshold || (is_eq && eq_rank + __popc(eq_mask & lanes_below) < remaining));
    const unsigned win_mask = __ballot_sync(~0u, win);
    if (win) {
      const uint32_t at = pos + __popc(win_mask & lanes_below);
      uint32_t* out_key;
      int32_t* out_idx;
      if (row_merge) {
        out_key = p.row_win_keys + row * p.k + at;
        out_idx = p.row_win_idx + row * p.k + at;
      } else if (p.final_level) {
        const uint32_t to = at >> shift, in = at & ((1u << shift) - 1u);
        out_key = cluster.map_shared_rank(sort_keys + in, to);
        out_idx = cluster.map_shared_rank(sort_idx + in, to);
      } else {
        out_key = p.cand_keys + slot + at;
        out_idx = p.cand_idx + slot + at;
      }
      *out_key = key;
      *out_idx = Loader::kHasIdx ? idx[i] : int32_t(begin + i);
    }
    eq_rank += __popc(eq_mask);
    pos += __popc(win_mask);
  }
  if (row_merge) {
    // Once every CTA of the row has written its winners, each CTA places a 1/row_ctas share
    // of them: a winner's output slot is the number of winners with a larger key, or an equal
    // key and a lower index, counted by a warp over all of them.
    sync_row();
    JH_TRACE("written");
    // Each winner as key << 32 | ~index, so that one 64-bit comparison ranks it (the sort
    // keys and indices lie back to back: room for kSortCap of these).
    const int sel = int(selected);
    const uint32_t* win_keys = p.row_win_keys + row * p.k;
    const int32_t* win_idx = p.row_win_idx + row * p.k;
    uint64_t* ranked = reinterpret_cast<uint64_t*>(sort_keys);
#pragma unroll 4
    for (int i = tid; i < sel; i += kSelectThreads)
      ranked[i] = uint64_t(__ldcg(win_keys + i)) << 32 | ~uint32_t(__ldcg(win_idx + i));
    fill_empty_slots(p, row, sel, int(row_cta) * kSelectThreads + tid, int(row_ctas) * kSelectThreads);
    __syncthreads();
    // A warp counts for two winners per sweep over them all (winners past `last` count
    // nothing and are not stored): one sweep for up to 32 winners per CTA.
    const int first = int(sel * row_cta / row_ctas), last = int(sel * (row_cta + 1) / row_ctas);
    for (int e0 = first + warp; e0 < last; e0 += 2 * kSelectWarps) {
      const int e1 = e0 + kSelectWarps;
      const uint64_t mine0 = ranked[e0], mine1 = e1 < last ? ranked[e1] : ~0ull;
      uint32_t before0 = 0, before1 = 0;
      for (int j = lane; j < sel; j += 32) {
        const uint64_t other = ranked[j];
        before0 += other > mine0;
        before1 += other > mine1;
      }
      before0 = __reduce_add_sync(~0u, before0);
      before1 = __reduce_add_sync(~0u, before1);
      auto place = [&](uint64_t mine, uint32_t before) {
        store_result(p, row * p.k + before, uint32_t(mine >> 32), int32_t(~uint32_t(mine)));
      };
      if (lane == 0) {
        place(mine0, before0);
        if (e1 < last) place(mine1, before1);
      }
    }
    JH_TRACE("ordered");
    JH_TRACE_END("select trace: grid %d, cluster %d, %d entries in block 0\n", gridDim.x, cs, len);
    return;
  } else if (p.final_level) {
    cluster.sync();  // winners are in place; no CTA touches another's memory after this
  } else {
    cluster.barrier_wait();
  }
  JH_TRACE("written");
  // The sort storage may overlap the histograms and sort buffers, which lie back to back.
  if (spread) {
    order_across_cluster(cluster, int(selected), shift, sort_keys, sort_idx, hist, row, p,
                         [&](const char* name) { JH_TRACE(name); });
    JH_TRACE("ordered");
  } else if (p.final_level && rank == 0) {
    write_final_order(sort_keys, sort_idx, int(selected), row, p, hist);
    JH_TRACE("ordered");
  }
  JH_TRACE_END("select trace: grid %d, cluster %d, %d entries in block 0\n", gridDim.x, cs, len);
}

// Stores a key and counts its first radix digit.
__device__ __forceinline__ void store_key(uint32_t* keys, int i, uint32_t key, uint32_t* hist) {
  keys[i] = key;
  atomicAdd(&hist[key >> (32 - kDigitBits)], 1u);
}

// A word of select_kernel's histograms that is counted into but never read: the last of their
// second half, whose first 4 * kBins / 16 words take pushes, and which smaller clusters clear
// before pass 1 counts there.
constexpr int kUncountedBin = 2 * kBins - 1;

// Counts the first digit of `key` in select_kernel's histogram when `valid`, else in
// hist[kUncountedBin]: one unconditional shared-memory atomic per key (ptxas puts a conditional
// one in a branch with a convergence barrier).  (Aggregating lanes of a bin with
// __match_any_sync first was slower: H100, 2026-11-28, 64 x 131072 top-2048 f32 116 -> 83 us,
// bf16 122 -> 67 us, 1 x 131072 30 -> 25 us.)
__device__ __forceinline__ void count_first_digit(uint32_t* hist, uint32_t key, bool valid) {
  atomicAdd(&hist[valid ? key >> (32 - kDigitBits) : kUncountedBin], 1u);
}

// After a CTA has counted the first digits of a first tile of its keys into hist: the lower
// edge of the highest first-digit bin b such that at least k of the tile's keys lie in bins >= b
// (0 when the tile has fewer than k keys).  Every thread gets the same value.
__device__ inline uint32_t tile_floor(const uint32_t* hist, int64_t k) {
  using Scan = cub::BlockScan<uint32_t, kSelectThreads, cub::BLOCK_SCAN_WARP_SCANS>;  // small storage
  __shared__ typename Scan::TempStorage scan;
  __shared__ uint32_t s_floor;
  const int tid = threadIdx.x;
  __syncthreads();  // the tile's counts are complete (and an earlier call's s_floor is read)
  const FourBins bins = FourBins::scan<Scan>(hist, scan);
  // Exactly one thread writes s_floor: thread 0 if the tile has fewer than k keys, else the
  // thread holding the bin where the count from the top reaches k.
  if (int64_t(bins.total) < k) {
    if (tid == 0) s_floor = 0;
  } else {
    bins.find(uint32_t(k), [&](uint32_t bin, uint32_t, uint32_t) { s_floor = bin << (32 - kDigitBits); });
  }
  __syncthreads();
  return s_floor;
}

// Candidates of an earlier level: keys and original indices, [rows, m] with the first
// surviving() entries of each row valid.
struct PairLoader {
  static constexpr bool kHasIdx = true;
  static constexpr bool kTruncated = false;
  static constexpr bool kRowMerge = false;
  using StagedKey = uint32_t;
  static constexpr int kCtasPerSm = kSelectCtasPerSm;
  __host__ __device__ size_t extra_bytes() const { return 0; }
  const uint32_t* keys;
  const int32_t* idx;
  const int32_t* lengths;  // valid entries of the original rows
  int64_t n;               // original row length
  int64_t m;               // candidates per row
  int levels;
  int64_t seg_len[kMaxLevels];
  int64_t k;

  __device__ int64_t valid(int64_t row) const {
    const int64_t v = min64(max64(lengths[row], 0), n);
    return surviving(v, levels, seg_len, k);
  }
  __device__ void load(int64_t row, int64_t begin, int len, uint32_t* out_keys, int32_t* out_idx,
                       uint32_t* hist, unsigned char*) const {
    const uint32_t* sk = keys + row * m + begin;
    const int32_t* si = idx + row * m + begin;
    // Four keys and indices in flight per thread: one at a time, each round trip to L2 was
    // ~1.1k cycles (the load of 3584 candidates took 8.2k cycles, H200 trace).  Uniform trip
    // count: warps stay converged.
    constexpr int kInFlight = 4;
    for (int i0 = 0; i0 < len; i0 += kInFlight * kSelectThreads) {
      uint32_t key[kInFlight];
      int32_t index[kInFlight];
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        const int i = i0 + j * kSelectThreads + int(threadIdx.x);
        key[j] = i < len ? __ldg(sk + i) : 0u;
        index[j] = i < len ? __ldg(si + i) : 0;
      }
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        const int i = i0 + j * kSelectThreads + int(threadIdx.x);
        const bool ok = i < len;
        if (ok) {
          out_keys[i] = key[j];
          out_idx[i] = index[j];
        }
        count_first_digit(hist, key[j], ok);
      }
    }
  }
};

// One level's launch geometry.
struct LevelPlan {
  int cluster = 1;
  int per_cta = 0;
  int64_t num_segments = 1;
  int64_t segment_len = 0;
  bool one_wave = false;  // every cluster of every row is resident at once (one_wave_plan)
};

// Plans one level over rows x entries with `capacity` keys per CTA and clusters of at most
// max_cluster CTAs: few rows get big clusters so one row still spreads over many SMs, as long as
// all CTAs stay resident at once (`resident` of them fit on the device) and every CTA keeps at
// least min_per_cta entries (a split that leaves less costs more in cluster barriers than it
// saves in work).
inline LevelPlan plan_level(int64_t rows, int64_t entries, int capacity, int max_cluster, int64_t resident,
                            int min_per_cta) {
  LevelPlan plan;
  if (entries > int64_t(max_cluster) * capacity) {
    plan.cluster = max_cluster;
    plan.per_cta = capacity;
    plan.segment_len = int64_t(max_cluster) * capacity;
    plan.num_segments = (entries + plan.segment_len - 1) / plan.segment_len;
    return plan;
  }
  int cs = 1;
  while (int64_t(cs) * capacity < entries) cs *= 2;
  while (cs < max_cluster && 2 * rows * cs <= resident && entries / (2 * cs) >= min_per_cta) cs *= 2;
  plan.cluster = cs;
  plan.per_cta = int((entries + cs - 1) / cs);
  plan.segment_len = int64_t(cs) * plan.per_cta;
  return plan;
}

// Launches select_kernel<Loader> with clusters of plan.cluster CTAs; a candidate level (which
// reads what the level before it wrote) as a programmatic dependent launch.
template <class Loader>
ffi::Error launch_select(const char* op, cudaStream_t stream, const Loader& loader, SelectParams p,
                         int64_t rows, const LevelPlan& plan, bool candidate_level = false) {
  auto kernel = select_kernel<Loader>;
  const SelectSmem lay = select_smem<Loader>(p.capacity, loader.extra_bytes());
  JH_CUDA_CHECK(op, allow_smem(kernel, lay.total, /*big_clusters=*/true));
  p.num_segments = plan.num_segments;
  p.segment_len = plan.segment_len;
  p.per_cta = plan.per_cta;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(rows * plan.num_segments * plan.cluster));
  cfg.blockDim = dim3(kSelectThreads);
  cfg.dynamicSmemBytes = lay.total;
  cfg.stream = stream;
  cudaLaunchAttribute attr[3];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(plan.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  if (candidate_level) {
    attr[cfg.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[cfg.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (p.row_merge) {
    // The row's CTAs wait for each other: a cooperative launch has the driver guarantee that
    // they are all resident at once (or fail the launch), which the plan only expects.
    attr[cfg.numAttrs].id = cudaLaunchAttributeCooperative;
    attr[cfg.numAttrs++].val.cooperative = 1;
  }
  JH_CUDA_CHECK(op, cudaLaunchKernelEx(&cfg, kernel, loader, p));
  return ffi::Error::Success();
}

// How many clusters of `cluster` CTAs of select_kernel<Loader> the device can hold at once
// (0 when it cannot schedule that size, or on error).
template <class Loader>
int active_clusters(int capacity, size_t extra_bytes, int cluster) {
  auto kernel = select_kernel<Loader>;
  const SelectSmem lay = select_smem<Loader>(capacity, extra_bytes);
  if (allow_smem(kernel, lay.total, /*big_clusters=*/true) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(cluster));
  cfg.blockDim = dim3(kSelectThreads);
  cfg.dynamicSmemBytes = lay.total;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  int clusters = 0;
  if (cudaOccupancyMaxActiveClusters(&clusters, kernel, &cfg) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return clusters;
}

// Largest cluster size (16 or 8) the device can schedule for select_kernel<Loader>.
template <class Loader>
int max_cluster_size(int capacity, size_t extra_bytes) {
  return active_clusters<Loader>(capacity, extra_bytes, 16) > 0 ? 16 : 8;
}

// Level-0 plan for a loader that fills an SM with one CTA (the dsa scorer): the largest
// clusters, up to max_cluster, that cover every row in one wave (all clusters resident at
// once) with at most `capacity` entries per CTA and more than k per cluster, so the level
// drops entries; else plan_level's plan with base_capacity entries per CTA and clusters of at
// most 8 (a size every cluster-capable GPU schedules).  A fixed 1024 tokens per CTA needs 16
// clusters of 8 for 131072 tokens where an H200 holds 15: two waves.
template <class Loader>
LevelPlan one_wave_plan(const DeviceInfo& dev, int64_t rows, int64_t entries, int64_t k, int base_capacity,
                        int capacity, size_t extra_bytes, int max_cluster) {
  static_assert(Loader::kRowMerge, "one-wave plans with several clusters per row are row-merged");
  const size_t smem = select_smem<Loader>(capacity, extra_bytes).total;
  for (int cs = max_cluster; cs >= 2; cs /= 2) {
    const int resident = remembered(dev.device, int64_t(smem) * 64 + cs, [&] {
      return active_clusters<Loader>(capacity, extra_bytes, cs);
    });
    const int64_t segments = resident / rows;
    if (segments == 0) continue;
    const int64_t per_cta = ((entries + segments * cs - 1) / (segments * cs) + 31) & ~int64_t(31);
#ifdef JH_SELECT_TRACE
    fprintf(stderr, "one_wave_plan: clusters of %d: %d resident, %lld entries per CTA\n", cs, resident,
            (long long)per_cta);
#endif
    if (per_cta > capacity || cs * per_cta <= k) continue;
    LevelPlan plan;
    plan.cluster = cs;
    plan.per_cta = int(per_cta);
    plan.segment_len = cs * per_cta;
    plan.num_segments = (entries + plan.segment_len - 1) / plan.segment_len;
    plan.one_wave = true;
    return plan;
  }
  return plan_level(rows, entries, base_capacity, std::min(max_cluster, 8), kSelectCtasPerSm * dev.sms,
                    kMinSplitEntries);
}

constexpr int kPairCapacity = 8192;  // keys + indices per CTA for candidates (64 KiB)

// One level whose row spans several clusters, all resident at once: the clusters merge their
// counts through global memory (SelectParams::row_merge), so no candidate level follows.
template <class LaunchFirst>
ffi::Error run_row_merged(const char* op, cudaStream_t stream, DeviceScratch& scratch, const LevelPlan& plan,
                          const LaunchFirst& launch_first, int64_t rows, SelectParams p) {
  const size_t row_ctas = size_t(plan.num_segments) * plan.cluster;
  const size_t sync_bytes = size_t(rows) * kRowSyncWords * 4, hist_bytes = size_t(rows) * kMaxPasses * kBins * 4;
  const size_t counts_bytes = size_t(rows) * row_ctas * 8, win_bytes = size_t(rows) * p.k * 4;
  ScratchArena arena;
  for (size_t bytes : {sync_bytes, hist_bytes, counts_bytes, win_bytes, win_bytes}) arena.reserve(bytes);
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
  p.row_merge = true;
  p.final_level = true;
  p.row_sync = arena.take<uint32_t>(sync_bytes);
  p.row_hist = arena.take<uint32_t>(hist_bytes);
  p.row_counts = arena.take<uint2>(counts_bytes);
  p.row_win_keys = arena.take<uint32_t>(win_bytes);
  p.row_win_idx = arena.take<int32_t>(win_bytes);
  // The arena's parts lie back to back: one memset zeroes the barrier and slot counts, histograms and counts.
  const size_t zeroed = reinterpret_cast<char*>(p.row_win_keys) - reinterpret_cast<char*>(p.row_sync);
  JH_CUDA_CHECK(op, cudaMemsetAsync(p.row_sync, 0, zeroed, stream));
  return launch_first(p);
}

// Runs level 0, which launch_first(p) starts with the geometry first_plan, then candidate
// levels until one segment per row remains.  `lengths` are the valid entries per row of the n
// that level 0 reads; a non-final level 0 writes min(k, valid entries) candidates per segment.
template <class LaunchFirst>
ffi::Error run_levels(const char* op, cudaStream_t stream, DeviceScratch& scratch,
                      const LevelPlan& first_plan, const LaunchFirst& launch_first, const int32_t* lengths,
                      int64_t rows, int64_t n, SelectParams p, const DeviceInfo& dev) {
  if (first_plan.one_wave && first_plan.num_segments > 1)
    return run_row_merged(op, stream, scratch, first_plan, launch_first, rows, p);
  const int pair_cluster = remembered(dev.device, 0, [] { return max_cluster_size<PairLoader>(kPairCapacity, 0); });
  const int64_t k = p.k;

  // Plan every level first so scratch is allocated once.
  LevelPlan plans[kMaxLevels];
  plans[0] = first_plan;
  int levels = 1;
  while (plans[levels - 1].num_segments > 1) {
    if (levels == kMaxLevels) return op_error(op, "rows of ", n, " entries need too many selection levels");
    // A final level with k > kRankSortMax spreads its order over the cluster when that holds
    // 8 or more CTAs (order_across_cluster), with slices of 128 winners at 16, so such levels
    // split down to a quarter as many entries.
    plans[levels] = plan_level(rows, plans[levels - 1].num_segments * k, kPairCapacity, pair_cluster,
                               kSelectCtasPerSm * dev.sms, k > kRankSortMax ? kMinSplitEntries / 4 : kMinSplitEntries);
    ++levels;
  }
  ScratchArena arena;
  for (int l = 0; l + 1 < levels; ++l) {
    const size_t m = size_t(rows) * plans[l].num_segments * k;
    arena.reserve(m * 4);
    arena.reserve(m * 4);
  }
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));

  PairLoader pairs{};
  pairs.lengths = lengths;
  pairs.n = n;
  pairs.k = k;
  for (int l = 0; l < levels; ++l) {
    p.final_level = l + 1 == levels;
    p.cand_keys = nullptr;
    p.cand_idx = nullptr;
    int64_t m = 0;
    if (!p.final_level) {
      m = plans[l].num_segments * k;
      p.cand_keys = arena.take<uint32_t>(size_t(rows) * m * 4);
      p.cand_idx = arena.take<int32_t>(size_t(rows) * m * 4);
    }
    if (l == 0) {
      JH_RETURN_IF_ERROR(launch_first(p));
    } else {
      p.capacity = kPairCapacity;
      JH_RETURN_IF_ERROR(launch_select(op, stream, pairs, p, rows, plans[l], /*candidate_level=*/true));
    }
    if (!p.final_level) {  // the next level reads these candidates
      pairs.keys = p.cand_keys;
      pairs.idx = p.cand_idx;
      pairs.m = m;
      pairs.seg_len[pairs.levels++] = plans[l].segment_len;
    }
  }
  return ffi::Error::Success();
}

// run_levels with a cluster select over `first` (first_capacity key slots per CTA) planned by
// `plan` as level 0.
template <class First>
ffi::Error run_select_levels(const char* op, cudaStream_t stream, DeviceScratch& scratch,
                             const First& first, const LevelPlan& plan, int first_capacity,
                             const int32_t* lengths, int64_t rows, int64_t n, SelectParams p,
                             const DeviceInfo& dev) {
  auto launch_first = [&](SelectParams q) {
    q.capacity = first_capacity;
    return launch_select(op, stream, first, q, rows, plan);
  };
  return run_levels(op, stream, scratch, plan, launch_first, lengths, rows, n, p, dev);
}

}  // namespace jax_hetero
