// Streaming first level of top-k for rows much longer than k: each CTA reads its chunk of a
// row once, 4096 entries per step with the next steps' loads in flight (cp.async into a
// shared-memory ring), and keeps in shared memory only the entries that can still be among
// the chunk's k best (larger key first, then lower index): those at or above a bar.  Warps
// append their survivors in any order (one shared atomic per warp, one barrier per step).
// When the next step's survivors might not fit, an in-CTA radix select cuts the kept entries
// to exactly k (ties at the k-th key by index) and the bar rises above the k-th key.  Unlike
// select_kernel, nothing but the survivors is staged, so a long row is read in one wave.
//
// A chunk yields min(k, valid entries) candidates sorted by index, the format of a non-final
// select level (run_levels finishes the row); a row of one chunk is written out directly.
#pragma once
#include "cuda/select.cuh"

namespace jax_hetero {

constexpr int kFilterStep = 4096;            // entries per step
constexpr int kFilterRingBytes = 32 * 1024;  // the ring: 2 steps of float32, 4 of 16-bit scores
// Kept-entry slots.  A cut leaves k (<= kSortCap) and comes when fewer than a step's worth are
// free, so at least 8960 - 4096 - 2048 survivors accumulate between cuts.
constexpr int kFilterCapacity = 8960;
// Shared memory: the ring, the kept keys and indices, a histogram; two CTAs fit on an SM.
constexpr size_t kFilterSmemBytes = kFilterRingBytes + size_t(kFilterCapacity) * 8 + kBins * 4;
static_assert(kFilterCapacity - kFilterStep - kSortCap >= kFilterStep / 2, "too little room between cuts");

// Development timing (CUDAFLAGS=-DJH_SELECT_TRACE): thread 0 of block 0 adds the SM cycles of
// each phase of filter_kernel (laps) and prints them when it leaves.
#ifdef JH_SELECT_TRACE
#define JH_LAPS_START long long jh_lap[5] = {}, jh_last = clock64(); int jh_cuts = 0
#define JH_LAP(i) if (blockIdx.x == 0 && threadIdx.x == 0) jh_lap[i] += clock64() - jh_last, jh_last = clock64()
#define JH_LAPS_END                                                                                    \
  if (blockIdx.x == 0 && threadIdx.x == 0)                                                             \
    printf("filter trace: grid %d, %d steps, %d cuts; cycles wait %lld filter %lld append %lld cut %lld " \
           "out %lld\n", gridDim.x, steps, jh_cuts, jh_lap[0], jh_lap[1], jh_lap[2], jh_lap[3], jh_lap[4])
#else
#define JH_LAPS_START
#define JH_LAP(i)
#define JH_LAPS_END
#endif

// 16 bytes global -> shared without passing through registers; completion is per thread
// (commit / wait), so a thread may read what it copied once its group is complete.
__device__ __forceinline__ void copy_async16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(unsigned(__cvta_generic_to_shared(dst))), "l"(src));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
template <int kPending>
__device__ __forceinline__ void wait_copies() { asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending)); }

// Reserves `n` slots for each lane of the warp with one shared atomic on `counter` and returns
// this lane's first slot.  Every lane of the warp calls it.
__device__ __forceinline__ int reserve_slots(unsigned* counter, int n) {
  const int lane = threadIdx.x & 31;
  int incl = n;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int t = __shfl_up_sync(~0u, incl, o);
    if (lane >= o) incl += t;
  }
  int base = 0;
  if (lane == 31 && incl) base = int(atomicAdd(counter, unsigned(incl)));  // lane 31 holds the warp's total
  return __shfl_sync(~0u, base, 31) + incl - n;
}

// Radix select over the entries i < count with pred(i): returns the rank-th largest
// (1 <= rank <= their number) of value(i), found 11 bits per pass from the top down to bit
// low_bit; *ties = how many entries equal to it are within the top `rank`, *equal = how many
// equal it.  Stops early when a pass's chosen bin lies wholly within the top `rank`: it then
// returns that bin's lower edge, every entry at or above which is among the top `rank`
// (*ties = *equal = the bin's count), and sets *whole.  Called by every thread; uses hist.
template <class Value, class Pred>
__device__ uint32_t block_select(int count, uint32_t rank, int low_bit, uint32_t* hist, const Value& value,
                                 const Pred& pred, uint32_t* ties, uint32_t* equal, bool* whole) {
  using Scan = cub::BlockScan<uint32_t, kSelectThreads, cub::BLOCK_SCAN_WARP_SCANS>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ uint32_t s_digit, s_remaining, s_equal;
  const int tid = threadIdx.x;
  uint32_t prefix = 0, prefix_mask = 0, remaining = rank;
  *whole = false;
  for (int hi = 32; hi > low_bit;) {
    const int lo = max(hi - kDigitBits, low_bit);
    const uint32_t digit_mask = (1u << (hi - lo)) - 1u;
    __syncthreads();  // the last pass's digit is read; callers are done with hist
    for (int b = tid; b < kBins; b += kSelectThreads) hist[b] = 0;
    __syncthreads();
    for (int i = tid; i < count; i += kSelectThreads) {
      if (!pred(i)) continue;
      const uint32_t v = value(i);
      if ((v & prefix_mask) == prefix) atomicAdd(&hist[(v >> lo) & digit_mask], 1u);
    }
    __syncthreads();
    const FourBins bins = FourBins::scan<Scan>(hist, scan);
    bins.find(remaining, [&](uint32_t bin, uint32_t above, uint32_t count) {
      s_digit = bin;
      s_remaining = remaining - above;
      s_equal = count;
    });
    __syncthreads();
    prefix |= s_digit << lo;
    prefix_mask |= digit_mask << lo;
    remaining = s_remaining;
    hi = lo;
    if (remaining == s_equal && hi > low_bit) {  // uniform: the same histogram in every thread
      *whole = true;
      break;
    }
  }
  *ties = remaining;
  *equal = s_equal;
  return prefix;
}

// Cuts the `count` (> k) kept entries to their k best (larger key, then lower index), in place
// and in any order.  Returns the new bar: a key below it cannot beat the k kept.  Called by
// every thread.
__device__ inline uint64_t filter_cut(uint32_t* keys, int32_t* idx, int count, int64_t k, int key_low_bit,
                                      uint32_t* hist) {
  __shared__ unsigned s_kept;
  uint32_t need, equal;
  bool whole, unused_whole;
  // kth: the k-th best key, or (whole) a lower edge with exactly k keys at or above it.
  const uint32_t kth = block_select(
      count, uint32_t(k), key_low_bit, hist, [&](int i) { return keys[i]; }, [](int) { return true; }, &need,
      &equal, &whole);
  // Entries equal to kth stay if ~index >= not_idx_floor: all of them, or the `need` lowest indices.
  uint32_t not_idx_floor = 0;
  if (need < equal) {
    uint32_t unused_ties, unused_equal;
    not_idx_floor = block_select(
        count, need, 0, hist, [&](int i) { return ~uint32_t(idx[i]); }, [&](int i) { return keys[i] == kth; },
        &unused_ties, &unused_equal, &unused_whole);
  }
  if (threadIdx.x == 0) s_kept = 0;
  __syncthreads();
  // Rounds of 512 entries: a round's writes land below its end (there are no more kept
  // entries than read ones) and follow its reads (barrier), so the cut works in place.
  for (int base = 0; base < count; base += kSelectThreads) {
    const int i = base + int(threadIdx.x);
    const bool in = i < count;
    const uint32_t key = in ? keys[i] : 0u;
    const int32_t id = in ? idx[i] : 0;
    const bool keep = in && (key > kth || (key == kth && ~uint32_t(id) >= not_idx_floor));
    __syncthreads();
    if (__any_sync(~0u, keep)) {
      const int at = reserve_slots(&s_kept, keep ? 1 : 0);
      if (keep) {
        keys[at] = key;
        idx[at] = id;
      }
    }
  }
  __syncthreads();
  return whole ? uint64_t(kth) : uint64_t(kth) + 1;
}

// Sorts the `count` (<= kSortCap) kept entries, whose indices lie in [begin, begin + len), by
// index and hands each to emit(position, key, index), which may overwrite keys/idx (every
// entry is read first).  sort_storage: shared memory for cub's block sort, apart from
// keys/idx.  Called by every thread.
using IndexSortBlock = cub::BlockRadixSort<uint32_t, kSelectThreads, kSortCap / kSelectThreads, uint32_t, 4>;
static_assert(sizeof(IndexSortBlock::TempStorage) <= kFilterRingBytes &&
              sizeof(SortBlock::TempStorage) <= kFilterRingBytes, "the ring holds the sorts' storage");
template <class Emit>
__device__ void order_by_index(const uint32_t* keys, const int32_t* idx, int count, int64_t begin, int64_t len,
                               void* sort_storage, const Emit& emit) {
  const int tid = threadIdx.x;
  if (count <= kRankSortMax) {  // position = entries of lower index
    const EntryRank r = counting_rank(count, [&](int j, int e) { return idx[j] < idx[e]; });
    const uint32_t key = r.rank >= 0 ? keys[r.entry] : 0u;
    const int32_t id = r.rank >= 0 ? idx[r.entry] : 0;
    __syncthreads();  // emit may overwrite keys and idx
    if (r.rank >= 0) emit(r.rank, key, id);
    return;
  }
  constexpr int kItems = kSortCap / kSelectThreads;
  uint32_t offset[kItems], key[kItems];
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int at = tid * kItems + j;
    offset[j] = at < count ? uint32_t(idx[at] - begin) : ~0u;  // padding sorts last
    key[j] = at < count ? keys[at] : 0u;
  }
  const int end_bit = 32 - __clz(int(len));  // every offset < len < 2^end_bit; padding has all those bits set
  auto& storage = *static_cast<typename IndexSortBlock::TempStorage*>(sort_storage);
  IndexSortBlock(storage).SortBlockedToStriped(offset, key, 0, end_bit);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    const int at = j * kSelectThreads + tid;
    if (at < count) emit(at, key[j], int32_t(begin + offset[j]));
  }
}

// Raw bits of a score, and the order key of entry q of a 16-byte vector of scores.
__device__ __forceinline__ uint32_t raw_bits(float x) { return __float_as_uint(x); }
__device__ __forceinline__ uint32_t raw_bits(bfloat16_bits x) { return x.bits; }
__device__ __forceinline__ uint32_t raw_bits(float16_bits x) { return x.bits; }
template <class T>
__device__ __forceinline__ uint32_t key_in_vector(const uint4& v, int q) {
  const uint32_t w[4] = {v.x, v.y, v.z, v.w};
  if constexpr (sizeof(T) == 4) return key_of(__uint_as_float(w[q]));
  else return key_of_bits16(uint16_t(w[q / 2] >> (16 * (q & 1))));
}

template <class T>
__global__ void __launch_bounds__(kSelectThreads, 2)
filter_kernel(const T* x, const int32_t* lengths, int64_t n, const SelectParams p) {
  extern __shared__ __align__(16) unsigned char smem[];
  allow_next_grid();  // the candidate level after this one may start (it waits for this grid)
  // Survivors of step s are counted in s_step[s % 3]: it is read after the step's barrier and
  // cleared two steps later, after a barrier every reader has passed.
  __shared__ unsigned s_step[3];
  uint4* ring = reinterpret_cast<uint4*>(smem);
  uint32_t* keys = reinterpret_cast<uint32_t*>(smem + kFilterRingBytes);
  int32_t* idx = reinterpret_cast<int32_t*>(smem + kFilterRingBytes + size_t(kFilterCapacity) * 4);
  uint32_t* hist = reinterpret_cast<uint32_t*>(smem + kFilterRingBytes + size_t(kFilterCapacity) * 8);
  const int tid = threadIdx.x;
  const int64_t row = blockIdx.x / p.num_segments, chunk = blockIdx.x % p.num_segments;
  const int64_t valid = min64(max64(lengths[row], 0), n);
  const int64_t begin = chunk * p.segment_len;
  const int64_t len = max64(0, min64(begin + p.segment_len, valid) - begin);
  const T* src = x + row * n + begin;

  // Thread t's entries of a step are kGroups runs of kVec: run g starts at (g * 512 + t) * kVec.
  constexpr int kVec = 16 / sizeof(T);
  constexpr int kGroups = kFilterStep / (kSelectThreads * kVec);
  constexpr int kStages = kFilterRingBytes / (kGroups * kSelectThreads * 16);
  const bool aligned = reinterpret_cast<uintptr_t>(src) % 16 == 0;
  // Thread t's vectors of step s live in ring slots only t reads: no barrier guards the ring.
  auto slot = [&](int s, int g) { return ring + ((s % kStages) * kGroups + g) * kSelectThreads + tid; };
  auto issue = [&](int s) {
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      const int64_t at = int64_t(s) * kFilterStep + (g * kSelectThreads + tid) * kVec;
      if (aligned && at + kVec <= len) {
        copy_async16(slot(s, g), src + at);
      } else if (at < len) {  // unaligned row or the chunk's end: entry by entry
        uint32_t w[4] = {0, 0, 0, 0};
#pragma unroll
        for (int q = 0; q < kVec; ++q)
          if (at + q < len) w[q * sizeof(T) / 4] |= raw_bits(src[at + q]) << (sizeof(T) == 2 ? 16 * (q & 1) : 0);
        *slot(s, g) = make_uint4(w[0], w[1], w[2], w[3]);
      }
    }
  };

  JH_LAPS_START;
  for (int b = tid; b < kBins; b += kSelectThreads) hist[b] = 0;
  if (tid < 3) s_step[tid] = 0;
  uint64_t bar = 0;  // an entry is kept when its key >= bar
  int count = 0;     // entries kept before this step, uniform over the CTA
  const int steps = int((len + kFilterStep - 1) / kFilterStep);
  for (int s = 0; s < kStages - 1; ++s) {  // one copy group per step, empty past the chunk
    if (s < steps) issue(s);
    commit_copies();
  }
  __syncthreads();  // hist and the counters are cleared
  for (int s = 0; s < steps; ++s) {
    if (s + kStages - 1 < steps) issue(s + kStages - 1);  // reuses the slot of step s - 1
    commit_copies();
    wait_copies<kStages - 1>();  // step s has landed
    uint4 cur[kGroups];
#pragma unroll
    for (int g = 0; g < kGroups; ++g) cur[g] = *slot(s, g);
    JH_LAP(0);
    const int in_step = int(min64(len - int64_t(s) * kFilterStep, kFilterStep));
    auto entry_in = [&](int g, int q) { return (g * kSelectThreads + tid) * kVec + q < in_step; };
    auto key_at = [&](int g, int q) { return key_in_vector<T>(cur[g], q); };
    if (s == 0) {
      // The first step's k-th largest first digit bounds the chunk's k-th best from below.
#pragma unroll
      for (int g = 0; g < kGroups; ++g)
#pragma unroll
        for (int q = 0; q < kVec; ++q)
          if (entry_in(g, q)) atomicAdd(&hist[key_at(g, q) >> (32 - kDigitBits)], 1u);
      bar = tile_floor(hist, p.k);
    }
    unsigned mine = 0;  // bit g * kVec + q: that entry passes
    if (bar <= 0xffffffffu) {  // else nothing passes
      const uint32_t gate = uint32_t(bar);
      const bool full = in_step == kFilterStep;
#pragma unroll
      for (int g = 0; g < kGroups; ++g)
#pragma unroll
        for (int q = 0; q < kVec; ++q)
          if ((full || entry_in(g, q)) && key_at(g, q) >= gate) mine |= 1u << (g * kVec + q);
    }
    JH_LAP(1);
    if (__any_sync(~0u, mine != 0)) {
      int at = count + reserve_slots(&s_step[s % 3], __popc(mine));
#pragma unroll
      for (int g = 0; g < kGroups; ++g)
#pragma unroll
        for (int q = 0; q < kVec; ++q)
          if (mine >> (g * kVec + q) & 1u) {
            keys[at] = key_at(g, q);
            idx[at] = int32_t(begin + int64_t(s) * kFilterStep + (g * kSelectThreads + tid) * kVec + q);
            ++at;
          }
    }
    __syncthreads();  // this step's survivors are in place and counted
    count += int(s_step[s % 3]);
    if (tid == 0) s_step[(s + 2) % 3] = 0;
    JH_LAP(2);
    if (count > kFilterCapacity - kFilterStep) {  // the next step's survivors might not fit
      bar = filter_cut(keys, idx, count, p.k, p.key_low_bit, hist);
      count = int(p.k);
#ifdef JH_SELECT_TRACE
      ++jh_cuts;
#endif
      JH_LAP(3);
    }
  }
  if (count > p.k) {
    filter_cut(keys, idx, count, p.k, p.key_low_bit, hist);
    count = int(p.k);
  }
  JH_LAP(3);
  // The ring is idle (every copy group has been waited for): it holds the sorts' storage.
  if (p.final_level) {
    order_by_index(keys, idx, count, begin, len, ring, [&](int at, uint32_t key, int32_t id) {
      keys[at] = key;
      idx[at] = id;
    });
    __syncthreads();
    write_final_order(keys, idx, count, row, p, ring);
  } else {
    const int64_t out = (row * p.num_segments + chunk) * p.k;
    order_by_index(keys, idx, count, begin, len, ring, [&](int at, uint32_t key, int32_t id) {
      p.cand_keys[out + at] = key;
      p.cand_idx[out + at] = id;
    });
  }
  JH_LAP(4);
  JH_LAPS_END;
}

// Geometry of the streaming level for rows x n top-k, or num_segments = 0 when it does not
// pay: chunks of whole steps with at least kFilterChunkPerK * k entries each (shorter ones
// keep too many entries, and their k candidates each cost the candidate levels more), as many
// per row as fill the device's `slots` CTA slots, and at least half of those slots in use.
// (H200, 2026-11-28: 1 x 10M top-2048 in 136 chunks of ~74k took 110 us, 95 us without this
// level; factors 16 and 8 gained nothing on 64x131072 and 4x1M, docs/cuda_notes.md.)
constexpr int64_t kFilterChunkPerK = 64;
inline LevelPlan plan_filter_level(int64_t rows, int64_t n, int64_t k, int slots) {
  LevelPlan plan;
  plan.num_segments = 0;
  if (slots <= 0) return plan;
  const int64_t min_chunk = max64(kFilterChunkPerK * k, 2 * kFilterStep);
  const int64_t per_row = min64(max64(1, slots / rows), n / min_chunk);
  if (per_row < 1 || rows * per_row < slots / 2) return plan;
  const int64_t chunk = (n + per_row - 1) / per_row;
  plan.segment_len = (chunk + kFilterStep - 1) / kFilterStep * kFilterStep;
  plan.num_segments = (n + plan.segment_len - 1) / plan.segment_len;
  return plan;
}

// CTA slots of the device for filter_kernel<T> (0 on error).
template <class T>
int filter_slots(int sms) {
  int per_sm = 0;
  if (allow_smem(filter_kernel<T>, kFilterSmemBytes) != cudaSuccess ||
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, filter_kernel<T>, kSelectThreads, kFilterSmemBytes) !=
          cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return per_sm * sms;
}

template <class T>
ffi::Error launch_filter(const char* op, cudaStream_t stream, const T* x, const int32_t* lengths, int64_t rows,
                         int64_t n, SelectParams p, const LevelPlan& plan) {
  p.num_segments = plan.num_segments;
  p.segment_len = plan.segment_len;
  const int64_t blocks = rows * plan.num_segments;
  if (blocks > INT32_MAX) return op_error(op, "too many rows for one CUDA launch");
  JH_CUDA_CHECK(op, allow_smem(filter_kernel<T>, kFilterSmemBytes));
  filter_kernel<T><<<unsigned(blocks), kSelectThreads, kFilterSmemBytes, stream>>>(x, lengths, n, p);
  JH_CUDA_CHECK(op, cudaGetLastError());
  return ffi::Error::Success();
}

}  // namespace jax_hetero
