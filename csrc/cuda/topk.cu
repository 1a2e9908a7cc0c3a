// CUDA handler for topk.  k <= kSortCap: short rows with small k take short_select.cuh (a CTA
// per row, keys in registers); rows much longer than k start with the streaming
// filter level (filter_select.cuh); other rows with a cluster radix select (select.cuh), one
// level when a row fits the shared memory of one cluster or (float32) when one wave of
// clusters holds the row and they merge their counts (row merge), otherwise a first level over
// segments.  Candidate levels (select.cuh) finish the others.  Larger k: a stable segmented radix
// sort of the whole rows (cub), which is exact but reads each row several times.
#include <cub/device/device_segmented_radix_sort.cuh>

#include "common/registry.h"
#include "cuda/filter_select.cuh"
#include "cuda/select.cuh"
#include "cuda/short_select.cuh"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

// Keys per CTA for raw scores: 64 KiB of 32-bit keys, 128 KiB of 16-bit ones (which lets
// 64 x 131072 run in one wave of 128 CTAs instead of two of 264).
template <class Staged>
constexpr int kRawCapacity = sizeof(Staged) == 2 ? 65536 : 16384;
// Raw rows are split over a cluster only while every CTA keeps 8192 keys: one CTA per row of
// 64 x 8192 k=256 took 16.5 us against 24.2 us for clusters of 4 (H200, 2026-11-28, before
// short_select took that shape).
constexpr int kRawMinPerCta = 8192;
// Truncated keys per CTA of a row-merged launch (216 KiB of shared memory): a row that 65,536
// per CTA cannot cover in one wave, such as 1 x 10M on 112 CTAs, runs as one level.
constexpr int kRowMergeCapacity = 90112;

// Raw scores; keys staged in 16 bits for 16-bit inputs, and for float32 inputs truncated to their
// upper 16 bits when Staged is uint16_t (see select_kernel).  RowMerge: planned by one_wave_plan,
// the row's clusters select together (SelectParams::row_merge).
template <class T, class Staged = std::conditional_t<sizeof(T) == 2, uint16_t, uint32_t>, bool RowMerge = false>
struct RawLoader {
  static constexpr bool kHasIdx = false;
  static constexpr bool kTruncated = sizeof(T) > sizeof(Staged);
  static constexpr bool kRowMerge = RowMerge;
  using StagedKey = Staged;
  // 16-bit staged keys: up to 65,536 per CTA, in 128 KiB of shared memory.
  static constexpr int kCtasPerSm = sizeof(Staged) == 2 ? 1 : kSelectCtasPerSm;
  __host__ __device__ size_t extra_bytes() const { return 0; }
  const T* x;
  const int32_t* lengths;
  int64_t n;
  int64_t k;

  __device__ int64_t valid(int64_t row) const { return min64(max64(lengths[row], 0), n); }
  __device__ uint32_t full_key(int64_t row, int64_t column) const { return key_of(__ldg(x + row * n + column)); }
  __device__ void load(int64_t row, int64_t begin, int len, StagedKey* keys, int32_t*, uint32_t* hist,
                       unsigned char*) const {
    const T* src = x + row * n + begin;
    constexpr int kVec = 16 / sizeof(T);
    int done = 0;
    // Every key is stored.  Its first digit is counted unless it lies below `floor`, the lower
    // edge of a bin with at least k keys of a first tile at or above it: such a key is below
    // the k-th largest of this CTA's keys, hence below the k-th largest of the segment, so it
    // cannot win, and the first radix pass only needs exact counts at and above the bin of that
    // k-th largest key.  (Those bins are >= every CTA's floor bin, so they are counted in full; the
    // count total stays >= k whenever a floor is set, so `selected` = k as without the floor.)
    // The tile is the first 512 vectors when k is at most a quarter of their keys, else the first
    // 2048 vectors when k is at most a quarter of those (no floor otherwise).  Trip counts and
    // `floor` are uniform over the CTA, so the warps count converged.
    uint32_t floor = 0;
    if (reinterpret_cast<uintptr_t>(src) % 16 == 0) {
      // 16-byte loads, four per thread and round.  16-bit staged keys (one CTA per SM of
      // 65,536 keys at most, so registers cost no occupancy there) load the next round while
      // they convert and count this one.
      constexpr bool kPipelined = sizeof(Staged) == 2;
      const uint4* v = reinterpret_cast<const uint4*>(src);
      const int nv = len / kVec;
      // A row read once goes evict-first in L2; truncated keys keep it there for the winners'
      // full keys, which are read again (evict-first made 64x131072 f32 2.4 us slower).
      constexpr bool kReadOnce = sizeof(Staged) == sizeof(T);
      const uint64_t once = evict_first_policy();
      auto fetch = [&](int base, uint4 (&r)[4]) {
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int i = base + j * kSelectThreads + threadIdx.x;
          if constexpr (kReadOnce) r[j] = i < nv ? load_once(v + i, once) : make_uint4(0, 0, 0, 0);
          else r[j] = i < nv ? __ldg(v + i) : make_uint4(0, 0, 0, 0);
        }
      };
      uint4 r[4];
      if constexpr (kPipelined) fetch(0, r);
      for (int base = 0; base < nv; base += 4 * kSelectThreads) {
        uint4 next[4];
        if constexpr (kPipelined) fetch(base + 4 * kSelectThreads, next);
        else fetch(base, r);
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const int i = base + j * kSelectThreads + threadIdx.x;
          const bool ok = i < nv;
          const T* e = reinterpret_cast<const T*>(&r[j]);
          uint32_t key[kVec];
#pragma unroll
          for (int q = 0; q < kVec; ++q) key[q] = key_of(e[q]);
          // One store of the vector's staged keys (4-byte stores 16 bytes apart met 4-way bank
          // conflicts).  16-bit keys: the even one in the low half.
          constexpr int kWords = kVec * sizeof(Staged) / 4;
          uint32_t word[kWords];
#pragma unroll
          for (int c = 0; c < kWords; ++c) {
            if constexpr (sizeof(Staged) == 4) word[c] = key[c];
            else word[c] = (key[2 * c] >> 16) | (key[2 * c + 1] & 0xffff0000u);
          }
          if constexpr (kWords == 4) {
            if (ok) reinterpret_cast<uint4*>(keys)[i] = make_uint4(word[0], word[1], word[2], word[3]);
          } else {
            if (ok) reinterpret_cast<uint2*>(keys)[i] = make_uint2(word[0], word[1]);
          }
#pragma unroll
          for (int q = 0; q < kVec; ++q) count_first_digit(hist, key[q], ok && key[q] >= floor);
          if (base == 0 && floor == 0 && (j == 0 || j == 3)) {  // vectors [0, (j + 1) * 512) are counted
            const int tile_vectors = (j + 1) * kSelectThreads;
            if (nv > tile_vectors && k * 4 <= int64_t(tile_vectors) * kVec) floor = tile_floor(hist, k);
          }
        }
        if constexpr (kPipelined)
#pragma unroll
          for (int j = 0; j < 4; ++j) r[j] = next[j];
      }
      done = nv * kVec;
    }
    for (int i0 = done; i0 < len; i0 += kSelectThreads) {
      const int i = i0 + int(threadIdx.x);
      const bool ok = i < len;
      const uint32_t key = ok ? key_of(src[i]) : 0u;
      if (ok) keys[i] = staged_key<StagedKey>(key);
      count_first_digit(hist, key, ok && key >= floor);
    }
  }
};

// ---- k > kSortCap: stable segmented sort of all keys ----
template <class T>
__global__ void full_sort_prepare(const T* x, const int32_t* lengths, int64_t rows, int64_t n,
                                  uint32_t* keys, int32_t* idx, int* offsets) {
  const int64_t total = rows * n;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = i / n, col = i % n;
    const int64_t valid = min64(max64(lengths[row], 0), n);
    keys[i] = col < valid ? key_of(x[i]) : 0u;  // excluded entries sort after every valid one
    idx[i] = int32_t(col);
    if (col == 0) offsets[row] = int(row * n);
    if (i == total - 1) offsets[rows] = int(total);
  }
}

template <class T>
__global__ void full_sort_write(const uint32_t* keys, const int32_t* idx, const int32_t* lengths,
                                int64_t rows, int64_t n, int64_t k, T* values, int32_t* indices,
                                uint32_t neg_inf_bits) {
  const int64_t total = rows * k;
  for (int64_t o = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; o < total; o += int64_t(gridDim.x) * blockDim.x) {
    const int64_t row = o / k, j = o % k;
    const bool found = j < min64(max64(lengths[row], 0), n);
    const uint32_t key = keys[row * n + j];
    if constexpr (sizeof(T) == 4) {
      reinterpret_cast<uint32_t*>(values)[o] = found ? bits32_of_key(key) : neg_inf_bits;
    } else {
      reinterpret_cast<uint16_t*>(values)[o] = found ? bits16_of_key(key) : uint16_t(neg_inf_bits);
    }
    indices[o] = found ? idx[row * n + j] : -1;
  }
}

template <class T>
ffi::Error topk_full_sort(cudaStream_t stream, DeviceScratch& scratch, const T* x,
                          const int32_t* lengths, int64_t rows, int64_t n, int64_t k, T* values,
                          int32_t* indices, uint32_t neg_inf_bits, const DeviceInfo& dev) {
  const char* op = "topk";
  if (rows * n > INT32_MAX) return op_error(op, "k=", k, " > ", kSortCap, " needs rows*n < 2^31");
  const int total = int(rows * n);
  const int low_bit = sizeof(T) == 2 ? 16 : 0;
  size_t temp_bytes = 0;
  JH_CUDA_CHECK(op, cub::DeviceSegmentedRadixSort::SortPairsDescending(
                        nullptr, temp_bytes, static_cast<const uint32_t*>(nullptr), static_cast<uint32_t*>(nullptr),
                        static_cast<const int32_t*>(nullptr), static_cast<int32_t*>(nullptr), total, int(rows),
                        static_cast<const int*>(nullptr), static_cast<const int*>(nullptr), low_bit, 32, stream));
  ScratchArena arena;
  for (int i = 0; i < 4; ++i) arena.reserve(size_t(total) * 4);
  arena.reserve(size_t(rows + 1) * 4);
  arena.reserve(temp_bytes);
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
  uint32_t* keys_in = arena.take<uint32_t>(size_t(total) * 4);
  uint32_t* keys_out = arena.take<uint32_t>(size_t(total) * 4);
  int32_t* idx_in = arena.take<int32_t>(size_t(total) * 4);
  int32_t* idx_out = arena.take<int32_t>(size_t(total) * 4);
  int* offsets = arena.take<int>(size_t(rows + 1) * 4);
  void* temp = arena.take<void>(temp_bytes);
  const int blocks = dev.sms * 8;
  full_sort_prepare<T><<<blocks, 256, 0, stream>>>(x, lengths, rows, n, keys_in, idx_in, offsets);
  JH_CUDA_CHECK(op, cudaGetLastError());
  // Radix sort is stable: equal keys keep index order, the tie rule of lax.top_k.
  JH_CUDA_CHECK(op, cub::DeviceSegmentedRadixSort::SortPairsDescending(
                        temp, temp_bytes, keys_in, keys_out, idx_in, idx_out, total, int(rows), offsets,
                        offsets + 1, low_bit, 32, stream));
  full_sort_write<T><<<blocks, 256, 0, stream>>>(keys_out, idx_out, lengths, rows, n, k, values, indices,
                                                 neg_inf_bits);
  JH_CUDA_CHECK(op, cudaGetLastError());
  return ffi::Error::Success();
}

template <class T>
uint32_t neg_inf_bits() {
  if constexpr (sizeof(T) == 4) return 0xff800000u;
  else if constexpr (std::is_same_v<T, bfloat16_bits>) return 0xff80u;
  else return 0xfc00u;
}

// The cluster select over raw rows with keys staged as Staged: its plan, and its launch.
template <class T, class Staged>
struct RawSelect {
  static constexpr int kCapacity = kRawCapacity<Staged>;
  DeviceInfo dev;
  int cluster, resident;

  explicit RawSelect(const DeviceInfo& device)
      : dev(device),
        cluster(remembered(dev.device, 0, [] { return max_cluster_size<RawLoader<T, Staged>>(kCapacity, 0); })),
        resident(remembered(dev.device, 1, [] { return active_clusters<RawLoader<T, Staged>>(kCapacity, 0, 1); })) {}

  LevelPlan plan(int64_t rows, int64_t n) const {
    return plan_level(rows, n, kCapacity, cluster, resident, kRawMinPerCta);
  }
  int64_t waves(int64_t rows, const LevelPlan& plan) const {
    if (resident <= 0) return INT64_MAX;  // occupancy unknown (the query failed)
    const int64_t ctas = rows * plan.num_segments * plan.cluster;
    return (ctas + resident - 1) / resident;
  }
  ffi::Error run(cudaStream_t stream, DeviceScratch& scratch, const T* x, const int32_t* lengths, int64_t rows,
                 int64_t n, const SelectParams& p, const LevelPlan& plan) const {
    return run_select_levels("topk", stream, scratch, RawLoader<T, Staged>{x, lengths, n, p.k}, plan, kCapacity,
                             lengths, rows, n, p, dev);
  }
};

template <class T>
ffi::Error topk_select(cudaStream_t stream, DeviceScratch& scratch, const T* x,
                       const int32_t* lengths, int64_t rows, int64_t n, int64_t k, T* values,
                       int32_t* indices, const DeviceInfo& dev) {
  // Rows of at most 8192 with k <= 256: a CTA per row, sized to n and k.  Through jax (H200,
  // 2026-11-28; docs/benchmarks.md): 64 x 8192 k=256 7.0 against 14.2 us for the cluster select,
  // 4096 x 1024 k=32 13.6 against 134.0 us.
  if (const int threads = short_select_threads(n, k)) {
    JH_CUDA_CHECK("topk", launch_short_select(stream, threads, x, lengths, rows, int(n), int(k), values, indices,
                                              neg_inf_bits<T>()));
    return ffi::Error::Success();
  }
  SelectParams p{};
  p.k = k;
  p.key_low_bit = sizeof(T) == 2 ? 16 : 0;
  p.value_bytes = int(sizeof(T));
  p.neg_inf_bits = neg_inf_bits<T>();
  p.values = values;
  p.indices = indices;
  // Rows much longer than k: the streaming level reads each entry once.
  const int slots = remembered(dev.device, 0, [&] { return filter_slots<T>(dev.sms); });
  const LevelPlan filter_plan = plan_filter_level(rows, n, k, slots);
  if (filter_plan.num_segments > 0) {
    auto launch_first = [&](const SelectParams& q) {
      return launch_filter("topk", stream, x, lengths, rows, n, q, filter_plan);
    };
    return run_levels("topk", stream, scratch, filter_plan, launch_first, lengths, rows, n, p, dev);
  }
  // float32 rows that need more CTAs than the device holds at once, or candidate levels, stage
  // truncated keys when that fits them in one wave, in one level where the full keys need more
  // (64 x 131072: 128 CTAs of 65536 keys instead of 512 of 16384; 4 x 1M: one level of 64 CTAs
  // instead of 256 CTAs and a candidate level, 33.5 against 55.8 us, H200).
  if constexpr (sizeof(T) == 4) {
    const RawSelect<T, uint32_t> full{dev};
    const LevelPlan plan = full.plan(rows, n);
    const bool full_one_wave = full.waves(rows, plan) == 1;
    if (!full_one_wave || plan.num_segments > 1) {
      const RawSelect<T, uint16_t> truncated{dev};
      const LevelPlan narrow = truncated.plan(rows, n);
      if (truncated.waves(rows, narrow) == 1 && (!full_one_wave || narrow.num_segments == 1))
        return truncated.run(stream, scratch, x, lengths, rows, n, p, narrow);
      // Rows that no wave covers that way (1 x 10M): one row-merged level, when one wave of up
      // to kRowMergeCapacity keys per CTA holds them (instead of 2.4 waves and a candidate level).
      using Wide = RawLoader<T, uint16_t, true>;
      if (!full_one_wave) {
        const LevelPlan wide = one_wave_plan<Wide>(dev, rows, n, k, kRawCapacity<uint16_t>, kRowMergeCapacity, 0, 16);
        if (wide.one_wave)
          return run_select_levels("topk", stream, scratch, Wide{x, lengths, n, k}, wide, kRowMergeCapacity, lengths,
                                   rows, n, p, dev);
      }
    }
    return full.run(stream, scratch, x, lengths, rows, n, p, plan);
  } else {
    const RawSelect<T, uint16_t> staged{dev};
    return staged.run(stream, scratch, x, lengths, rows, n, p, staged.plan(rows, n));
  }
}

ffi::Error topk_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer scores,
                     ffi::Buffer<ffi::S32> lengths, ffi::Result<ffi::AnyBuffer> values,
                     ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  const char* op = "topk";
  const int64_t n = dim_from_end(scores, 0);
  const int64_t rows = leading_size(scores, 1);
  if (k < 1 || k > n) return op_error(op, "k=", k, " must satisfy 1 <= k <= n=", n);
  if (lengths.element_count() != size_t(rows))
    return op_error(op, "lengths has ", lengths.element_count(), " entries, expected ", rows);
  if (n > INT32_MAX) return op_error(op, "rows longer than 2^31-1 entries are not supported");
  if (rows == 0) return ffi::Error::Success();
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(op, stream, &dev));
  DeviceScratch scratch{*site, dev.device};
  return dispatch_float(op, "scores", scores.element_type(), [&](auto tag) {
    using T = decltype(tag);
    const T* x = reinterpret_cast<const T*>(scores.untyped_data());
    T* out = reinterpret_cast<T*>(values->untyped_data());
    if (k > kSortCap)
      return topk_full_sort(stream, scratch, x, lengths.typed_data(), rows, n, k, out, indices->typed_data(),
                            neg_inf_bits<T>(), dev);
    return topk_select(stream, scratch, x, lengths.typed_data(), rows, n, k, out, indices->typed_data(), dev);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TopkCuda, topk_cuda,
                              topk_signature(bind_stream_and_scratch()));
JAX_HETERO_REGISTER_GRAPH_SAFE("topk", TopkCuda);

}  // namespace jax_hetero
