// Exact top-k of short rows (n <= 8192, k <= 256): one CTA per row keeps the row in registers,
// sixteen consecutive columns per thread, so nothing is staged in shared memory and no cluster
// is needed.  The CTA has 64-512 threads, the fewest that hold the row and give the floor k
// groups of 32 keys (short_select_threads).  The cluster select (select.cuh) spends most of
// such a row's time on phases whose cost is latency, not work; here each phase is a barrier or
// two:
//   1. floor: the minimum over groups of 32-512 keys of each group's maximum, with at least
//      `need` groups: at least `need` keys lie at or above it, so only those (~16 % of a random
//      row for k = n / 32) can win.  They go to a dense list in column order.
//   2. radix passes over the key range [floor, max] (not over fixed bit fields, so the four
//      digits per thread, 2048 for 512 threads, spread even clustered float keys): each pass
//      counts the listed candidates per digit, a suffix scan finds the digit of the need-th
//      largest, and the next pass refines that digit alone.  The search ends when that digit
//      is taken whole, holds at most kShortRankedCross keys (they are ranked with the winners
//      and the best of them win), or is a single key value (ties: the lowest columns win, by a
//      scan over the CTA).
//   3. order: the suffix scans give each digit's winners one segment of the output, so a
//      winner's rank is its segment's start plus the entries of its segment ahead of it (larger
//      key, or equal key and lower column), counted over that short segment.
#pragma once
#include "cuda/cuda_util.h"

namespace jax_hetero {

// Keys per thread, in registers; the CTA size follows the row (short_select_threads).
constexpr int kShortKeysPerThread = 16;
constexpr int kShortMaxThreads = 512;
// A last crossing digit of at most this many keys is placed like the digits above it and its
// members ranked; the better `need - above` of them win (no further pass, no tie scan).
constexpr int kShortRankedCross = 64;

// The sizes of the kernel with Threads threads per CTA.
template <int Threads>
struct ShortShape {
  static constexpr int kWarps = Threads / 32;
  static constexpr int kMaxN = Threads * kShortKeysPerThread;
  static constexpr int kMaxK = kMaxN / 32;  // groups of 32 keys per CTA: the floor always prunes
  static constexpr int kBins = 4 * Threads;  // the digit scan reads four digits per thread
  static constexpr int kDigitBits = 31 - __builtin_clz(kBins);
  static constexpr int kMaxPasses = (32 + kDigitBits - 1) / kDigitBits;  // digits cover 32-bit keys
};

template <int Threads>
struct ShortSmem {
  using S = ShortShape<Threads>;
  uint32_t hist[S::kMaxPasses][S::kBins];   // candidates per digit of each pass
  uint32_t start[S::kMaxPasses][S::kBins];  // candidates in higher digits; the scatter's cursor
  unsigned long long seg[S::kMaxK + kShortRankedCross];  // (key << 32 | ~column), segment by segment
  unsigned long long list[S::kMaxN];                      // the candidates, the same way
  uint32_t totals[S::kMaxPasses + 2][S::kWarps];           // warp totals, one buffer per block scan
  uint32_t floor_key, max_key;
  uint32_t base[S::kMaxPasses], shift[S::kMaxPasses], cross[S::kMaxPasses];
  uint32_t above[S::kMaxPasses];  // winners ranked ahead of pass p's range
  uint32_t passes;                // passes run, set by the last one
  uint32_t tie_key, tie_take;     // the last pass's single key value and how many of it win
  uint32_t cross_extra;           // losers in the last crossing digit when it is ranked
};

// Exclusive prefix sum of v over the CTA in thread order; one barrier.  `total` (optional)
// receives the sum over the CTA.  `totals` must not be in use by another scan that threads may
// still be reading.
template <int Threads>
__device__ __forceinline__ uint32_t short_exclusive_scan(uint32_t v, uint32_t* totals, uint32_t* total = nullptr) {
  constexpr int kWarps = Threads / 32;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  uint32_t incl = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const uint32_t u = __shfl_up_sync(~0u, incl, o);
    if (lane >= o) incl += u;
  }
  if (lane == 31) totals[warp] = incl;
  __syncthreads();
  // Every warp scans the warp totals across its lanes.
  const uint32_t mine = lane < kWarps ? totals[lane] : 0u;
  uint32_t across = mine;
#pragma unroll
  for (int o = 1; o < kWarps; o <<= 1) {
    const uint32_t u = __shfl_up_sync(~0u, across, o);
    if (lane >= o) across += u;
  }
  if (total) *total = __shfl_sync(~0u, across, kWarps - 1);
  return incl - v + __shfl_sync(~0u, across - mine, warp);
}

template <int DigitBits>
__device__ __forceinline__ uint32_t short_digit_shift(uint32_t span) {
  const int bits = 32 - __clz(span);
  return bits > DigitBits ? uint32_t(bits - DigitBits) : 0u;
}

__device__ __forceinline__ uint32_t bits_of(float v) { return __float_as_uint(v); }
__device__ __forceinline__ uint32_t bits_of(bfloat16_bits v) { return v.bits; }
__device__ __forceinline__ uint32_t bits_of(float16_bits v) { return v.bits; }

// One CTA of Threads (64-512, short_select_threads) per row of x [rows, n]; values/indices
// [rows, k], k <= min(n, ShortShape::kMaxK); neg_inf_bits: -inf in T.  Keys of 16-bit types are
// held as their 16-bit key, so the range and the digits are in their units.  The launch bound
// keeps 128 registers per thread for every CTA size.
template <class T, int Threads>
__global__ void __launch_bounds__(Threads, kShortMaxThreads / Threads)
    short_select_kernel(const T* x, const int32_t* lengths, int n, int k, T* values, int32_t* indices,
                        uint32_t neg_inf_bits) {
  extern __shared__ __align__(16) unsigned char short_smem_raw[];
  using S = ShortShape<Threads>;
  ShortSmem<Threads>& sh = *reinterpret_cast<ShortSmem<Threads>*>(short_smem_raw);
  constexpr int kKeys = kShortKeysPerThread;
  constexpr int kWarps = S::kWarps;
  constexpr int kKeyShift = sizeof(T) == 2 ? 16 : 0;
  JH_TRACE_START;
  const int t = threadIdx.x;
  const int64_t row = blockIdx.x;
  const T* src = x + row * n;
  const int valid = min(max(lengths[row], 0), n);
  const int need = min(valid, k);
  const int col0 = t * kKeys;

  // Issue the loads first; the shared-memory setup below overlaps their latency.
  constexpr int kWords = kKeys * int(sizeof(T)) / 4;  // the thread's columns as 32-bit words
  uint32_t word[kWords];
  if (reinterpret_cast<uintptr_t>(src) % 16 == 0 && col0 + kKeys <= n) {
#pragma unroll
    for (int v = 0; v < kWords / 4; ++v) {
      const uint4 q = __ldg(reinterpret_cast<const uint4*>(src + col0) + v);
      word[4 * v] = q.x, word[4 * v + 1] = q.y, word[4 * v + 2] = q.z, word[4 * v + 3] = q.w;
    }
  } else {
#pragma unroll
    for (int s = 0; s < kKeys; ++s) {
      const uint32_t bits = col0 + s < n ? bits_of(src[col0 + s]) : 0u;
      if constexpr (sizeof(T) == 4) word[s] = bits;
      else word[s / 2] = s % 2 ? word[s / 2] | bits << 16 : bits;
    }
  }
  for (int i = t; i < S::kMaxPasses * S::kBins / 4; i += Threads)
    reinterpret_cast<uint4*>(sh.hist)[i] = make_uint4(0, 0, 0, 0);
  if (t == 0) sh.floor_key = ~0u, sh.max_key = 0, sh.tie_take = 0, sh.above[0] = 0;
  __syncthreads();
  JH_TRACE("load");

  // Columns [col0, col0 + live) are within the row's length; the others get key 0, the lowest,
  // for the floor below, and are never candidates.
  const int live = min(max(valid - col0, 0), kKeys);
  uint32_t key[kKeys];
#pragma unroll
  for (int s = 0; s < kKeys; ++s) {
    if constexpr (sizeof(T) == 4) key[s] = key_of(__uint_as_float(word[s]));
    else key[s] = key_of_bits16(uint16_t(word[s / 2] >> (16 * (s % 2)))) >> kKeyShift;
  }
  if (live < kKeys)
#pragma unroll
    for (int s = 0; s < kKeys; ++s)
      if (s >= live) key[s] = 0;

  // 1. The floor: the minimum of the groups' maxima over groups of 1-16 slots of a warp (32-512
  //    keys), with the fewest slots per group that still leave `need` groups (a group without a
  //    live key gives floor 0).
  {
    uint32_t m[kKeys];
#pragma unroll
    for (int s = 0; s < kKeys; ++s) m[s] = __reduce_max_sync(~0u, key[s]);
    uint32_t warp_floor = ~0u, warp_max = 0;
#pragma unroll
    for (int s = 0; s < kKeys; ++s) warp_floor = min(warp_floor, m[s]), warp_max = max(warp_max, m[s]);
    // Wider groups: pairwise maxima, up to one group of all kKeys slots.
#pragma unroll
    for (int width = 2; width <= kKeys; width *= 2) {
      if (kWarps * (kKeys / width) < need) break;
      warp_floor = ~0u;
#pragma unroll
      for (int s = 0; s < kKeys; s += width) m[s] = max(m[s], m[s + width / 2]), warp_floor = min(warp_floor, m[s]);
    }
    if ((t & 31) == 0) atomicMin(&sh.floor_key, warp_floor), atomicMax(&sh.max_key, warp_max);
  }
  __syncthreads();
  JH_TRACE("floor");
  // 2. The candidates (live keys at or above the floor) go to a dense list in column order, as
  //    (key << 32 | ~column): the passes and the scatter then sweep ~2.6 entries per thread
  //    (k = n / 32) with few shared-memory atomics, instead of every thread's sixteen slots.
  const uint32_t floor_key = sh.floor_key;
  uint32_t cands = 0;
  {
    unsigned cand = 0;  // bit s: slot s is a candidate
#pragma unroll
    for (int s = 0; s < kKeys; ++s) cand |= unsigned(key[s] >= floor_key) << s;
    cand &= (1u << live) - 1u;
    uint32_t at = short_exclusive_scan<Threads>(__popc(cand), sh.totals[S::kMaxPasses + 1], &cands);
    const uint32_t low0 = ~uint32_t(col0);  // ~(col0 + s) = low0 - s
#pragma unroll
    for (int s = 0; s < kKeys; ++s)
      if (cand >> s & 1) sh.list[at++] = (uint64_t(key[s]) << 32) | (low0 - s);
  }
  __syncthreads();
  JH_TRACE("listed");
  // Whether a candidate's digits equal the crossing digits of passes [0, p).
  auto on_path = [&](uint32_t k32, int p) {
    for (int q = 0; q < p; ++q)
      if (((k32 - sh.base[q]) >> sh.shift[q]) != sh.cross[q]) return false;
    return true;
  };

  // 3. Radix passes over [floor, max]: pass p counts the candidates still on the crossing path.
  int passes = 0;
  uint32_t base = floor_key, shift = short_digit_shift<S::kDigitBits>(sh.max_key - floor_key);
  for (int p = 0; need > 0; ++p) {
    for (uint32_t i = t; i < cands; i += Threads) {
      const uint32_t k32 = uint32_t(sh.list[i] >> 32);
      if (p == 0 || on_path(k32, p)) atomicAdd(&sh.hist[p][(k32 - base) >> shift], 1u);
    }
    __syncthreads();
    // Thread t holds the kPer digits from lo up, so thread order is descending digit order.
    constexpr int kPer = S::kBins / Threads;
    const int lo = S::kBins - kPer * (t + 1);
    uint32_t cnt[kPer], beg[kPer];
    *reinterpret_cast<uint4*>(cnt) = *reinterpret_cast<const uint4*>(&sh.hist[p][lo]);
    uint32_t sum = 0;
#pragma unroll
    for (int j = 0; j < kPer; ++j) sum += cnt[j];
    uint32_t run = short_exclusive_scan<Threads>(sum, sh.totals[p]);
#pragma unroll
    for (int j = kPer - 1; j >= 0; --j) beg[j] = run, run += cnt[j];
    *reinterpret_cast<uint4*>(&sh.start[p][lo]) = *reinterpret_cast<const uint4*>(beg);
    const uint32_t above = sh.above[p], rest = uint32_t(need) - above;
    int cross = -1;
    uint32_t ahead = 0, count = 0;
#pragma unroll
    for (int j = 0; j < kPer; ++j)
      if (beg[j] < rest && rest <= beg[j] + cnt[j]) cross = lo + j, ahead = beg[j], count = cnt[j];
    if (cross >= 0) {
      sh.cross[p] = uint32_t(cross);
      const uint32_t left = rest - ahead;  // winners still to find in the crossing digit
      if (count == left || count <= kShortRankedCross) {
        sh.passes = p + 1, sh.cross_extra = count - left;  // the digit is taken whole, or ranked
      } else if (shift == 0) {
        sh.passes = p + 1, sh.tie_key = base + uint32_t(cross), sh.tie_take = left;
      } else {
        sh.passes = 0;
        const uint32_t next_base = base + (uint32_t(cross) << shift);
        sh.base[p + 1] = next_base;
        sh.shift[p + 1] = short_digit_shift<S::kDigitBits>(min((1u << shift) - 1u, sh.max_key - next_base));
        sh.above[p + 1] = above + ahead;
      }
      sh.base[p] = base, sh.shift[p] = shift;
    }
    __syncthreads();
    JH_TRACE("pass");
    if (sh.passes != 0) {
      passes = sh.passes;
      break;
    }
    base = sh.base[p + 1], shift = sh.shift[p + 1];
  }

  // Ties at the last pass's key value: the lowest columns win (columns are in thread order).
  const uint32_t tie_take = passes > 0 ? sh.tie_take : 0u;
  unsigned tied = 0;
  uint32_t tie_rank = 0;
  if (tie_take > 0) {
    const uint32_t tie_key = sh.tie_key;
#pragma unroll
    for (int s = 0; s < kKeys; ++s)
      if (s < live && key[s] == tie_key) tied |= 1u << s;
    tie_rank = short_exclusive_scan<Threads>(__popc(tied), sh.totals[S::kMaxPasses]);
  }
  JH_TRACE("ties");

  // 4. Scatter the winners (and a ranked crossing digit) of each digit into its segment; tied
  //    winners are ranked already.
  for (uint32_t i = t; i < cands && passes > 0; i += Threads) {
    const unsigned long long comp = sh.list[i];
    const uint32_t k32 = uint32_t(comp >> 32);
    for (int p = 0; p < passes; ++p) {
      const uint32_t d = (k32 - sh.base[p]) >> sh.shift[p];
      const uint32_t cross = sh.cross[p];
      if (d < cross) break;
      if (d > cross || (p == passes - 1 && tie_take == 0)) {
        sh.seg[sh.above[p] + atomicAdd(&sh.start[p][d], 1u)] = comp;
        break;
      }
    }
  }
  __syncthreads();
  JH_TRACE("scatter");

  T* out_values = values + row * k;
  int32_t* out_indices = indices + row * k;
  auto write = [&](uint32_t rank, uint32_t k32, int column) {
    if constexpr (sizeof(T) == 4) reinterpret_cast<uint32_t*>(out_values)[rank] = bits32_of_key(k32);
    else reinterpret_cast<uint16_t*>(out_values)[rank] = bits16_of_key(k32 << 16);
    out_indices[rank] = column;
  };
  // Thread j ranks the winners at slots j, j + Threads, ... inside the segment of the pass and
  // digit where they left the crossing path (the scatter's cursor ends past the segment).
  const uint32_t placed = passes > 0 ? uint32_t(need) - tie_take + (tie_take ? 0u : sh.cross_extra) : 0u;
  for (uint32_t j = t; j < placed; j += Threads) {
    const unsigned long long mine = sh.seg[j];
    const uint32_t k32 = uint32_t(mine >> 32);
    uint32_t begin = 0, len = 0;
    for (int p = 0; p < passes; ++p) {
      const uint32_t d = (k32 - sh.base[p]) >> sh.shift[p];
      if (d != sh.cross[p] || p == passes - 1) {
        len = sh.hist[p][d], begin = sh.above[p] + sh.start[p][d] - len;
        break;
      }
    }
    uint32_t ahead = 0;
    for (uint32_t i = begin; i < begin + len; ++i) ahead += sh.seg[i] > mine;
    if (begin + ahead < uint32_t(need)) write(begin + ahead, k32, int(~uint32_t(mine)));
  }
  if (tie_take > 0) {
#pragma unroll
    for (int s = 0; s < kKeys; ++s) {
      if (!(tied >> s & 1)) continue;
      if (tie_rank < tie_take) write(uint32_t(need) - tie_take + tie_rank, key[s], col0 + s);
      ++tie_rank;
    }
  }
  for (int j = need + t; j < k; j += Threads) {  // past the length: (-inf, -1)
    if constexpr (sizeof(T) == 4) reinterpret_cast<uint32_t*>(out_values)[j] = neg_inf_bits;
    else reinterpret_cast<uint16_t*>(out_values)[j] = uint16_t(neg_inf_bits);
    out_indices[j] = -1;
  }
  JH_TRACE("order");
  JH_TRACE_END("short select trace: %d passes, tie %u\n", passes, sh.tie_take);
}

// The CTA size for rows of n with top-k: the smallest whose slots hold the row and whose floor
// has k groups of 32 keys; 0 when none does (n > 8192 or k > 256).
inline int short_select_threads(int64_t n, int64_t k) {
  for (int threads = 64; threads <= kShortMaxThreads; threads *= 2)
    if (n <= threads * kShortKeysPerThread && k <= threads * kShortKeysPerThread / 32) return threads;
  return 0;
}

// Launches short_select_kernel over `rows` rows with `threads` from short_select_threads.
template <class T>
cudaError_t launch_short_select(cudaStream_t stream, int threads, const T* x, const int32_t* lengths, int64_t rows,
                                int n, int k, T* values, int32_t* indices, uint32_t neg_inf_bits) {
  auto launch = [&](auto threads_tag) {
    constexpr int kThreads = decltype(threads_tag)::value;
    auto* kernel = short_select_kernel<T, kThreads>;
    if (const cudaError_t err = allow_smem(kernel, sizeof(ShortSmem<kThreads>)); err != cudaSuccess) return err;
    kernel<<<unsigned(rows), kThreads, sizeof(ShortSmem<kThreads>), stream>>>(x, lengths, n, k, values, indices,
                                                                              neg_inf_bits);
    return cudaGetLastError();
  };
  switch (threads) {
    case 64: return launch(std::integral_constant<int, 64>{});
    case 128: return launch(std::integral_constant<int, 128>{});
    case 256: return launch(std::integral_constant<int, 256>{});
    case 512: return launch(std::integral_constant<int, 512>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace jax_hetero
