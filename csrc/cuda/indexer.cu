// CUDA handlers for the DSA lightning indexer: relevancy_dsa (scores) and indexer_dsa (fused
// scoring + exact top-k; scores live only in shared memory, as the selection's keys).
// score_t = sum_h w_h * ReLU(q_h . k_t).  bfloat16/float16 keys with head dim 64 or 128 use
// tensor cores (mma.sync m16n8k16, float32 accumulation); other shapes a float32 warp path.
#include "common/registry.h"
#include "cuda/select.cuh"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr int kIndexerCapacity = 1024;  // tokens scored per CTA, so a row spreads over the GPU
constexpr int kIndexerMaxCapacity = 2048;  // tokens per CTA when one wave of clusters covers a row
constexpr int kIndexerMaxCluster = 16;  // one_wave_plan tries clusters of 16, 8, 4 and 2
constexpr int kWarps = kSelectThreads / 32;

template <class T>
__device__ __forceinline__ void mma_16816(float* c, uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3,
                                          uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<T, bfloat16_bits>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
}

// Scores tokens [begin, begin + len) of one batch row; emit(i, score) for i in [0, len).
template <class T>
struct DsaScorer {
  const T* q;          // [rows, h, di]
  const T* keys;       // [rows, n, di]
  const float* weights;  // [rows, h]
  int64_t n;
  int h, di;
  bool tensor_cores;

  __host__ __device__ size_t extra_bytes() const {
    return size_t(h) * di * (tensor_cores ? sizeof(T) : 4) + size_t(h) * 4;
  }

  // Where chunk c of a head's q lies in its smem row.  score_mma's 8-lane phases read chunks
  // 4j..4j+3 of an even and an odd head, whose rows start on the same bank: the odd head's
  // chunks move to the other half of the 128 bytes, so a phase is conflict-free.
  static __device__ __forceinline__ int q_chunk(int c, int head) { return c ^ ((head & 1) << 2); }

  // Copies q (swizzled 16-byte chunks for the tensor-core path) and the weights to smem.
  __device__ void stage(int64_t row, unsigned char* extra) const {
    float* w = reinterpret_cast<float*>(extra + size_t(h) * di * (tensor_cores ? sizeof(T) : 4));
    for (int i = threadIdx.x; i < h; i += blockDim.x) w[i] = weights[row * h + i];
    if (tensor_cores) {
      const int chunks = di / 8;  // 16-byte chunks per head
      const uint4* src = reinterpret_cast<const uint4*>(q + row * h * di);
      uint4* dst = reinterpret_cast<uint4*>(extra);
      for (int i = threadIdx.x; i < h * chunks; i += blockDim.x) {
        const int head = i / chunks, c = i % chunks;
        dst[head * chunks + q_chunk(c, head)] = src[i];
      }
    } else {
      float* dst = reinterpret_cast<float*>(extra);
      for (int i = threadIdx.x; i < h * di; i += blockDim.x) dst[i] = to_f32(q[row * h * di + i]);
    }
    __syncthreads();
  }

  template <int J, class Emit>
  __device__ void score_mma(int64_t row, int64_t begin, int len, const unsigned char* extra, Emit& emit) const {
    // Warp tile: 16 tokens x all heads.  Thread (g, quad) feeds the k-slots of the mma from
    // 16-byte chunks quad, quad+4, ... of its rows; q is read with the same dim permutation,
    // so each product pairs the same dims and the sum over dims is unchanged.
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, quad = lane & 3;
    constexpr int kChunks = J * 4;
    const uint4* qs = reinterpret_cast<const uint4*>(extra);
    const float* w = reinterpret_cast<const float*>(extra + size_t(h) * di * sizeof(T));
    const uint4* krow = reinterpret_cast<const uint4*>(keys + (row * n + begin) * di);
    // This thread's chunks of rows t0 + g and t0 + g + 8 of the tile at t0 (zeros past len).
    const uint64_t once = evict_first_policy();
    auto load_tile = [&](int t0, uint4 (&lo)[J], uint4 (&hi)[J]) {
      const int r0 = t0 + g, r1 = t0 + g + 8;
#pragma unroll
      for (int j = 0; j < J; ++j) {
        lo[j] = r0 < len ? load_once(krow + int64_t(r0) * kChunks + j * 4 + quad, once) : make_uint4(0, 0, 0, 0);
        hi[j] = r1 < len ? load_once(krow + int64_t(r1) * kChunks + j * 4 + quad, once) : make_uint4(0, 0, 0, 0);
      }
    };
    // The next tile's keys load while this one's mma run: waiting for each tile's HBM reads
    // was the scorer's largest stall (13 % of its samples, ncu source counters, H200).
    uint4 lo[J], hi[J];
    load_tile(warp * 16, lo, hi);
    for (int t0 = warp * 16; t0 < len; t0 += kWarps * 16) {
      const int r0 = t0 + g, r1 = t0 + g + 8;
      uint4 next_lo[J], next_hi[J];
      load_tile(t0 + kWarps * 16, next_lo, next_hi);
      float s0 = 0.f, s1 = 0.f;
      for (int nt = 0; nt < h / 8; ++nt) {
        const int head = nt * 8 + g;
        float c[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int j = 0; j < J; ++j) {
          const uint4 b = qs[head * kChunks + q_chunk(j * 4 + quad, head)];
          mma_16816<T>(c, lo[j].x, hi[j].x, lo[j].y, hi[j].y, b.x, b.y);
          mma_16816<T>(c, lo[j].z, hi[j].z, lo[j].w, hi[j].w, b.z, b.w);
        }
        const float w0 = w[nt * 8 + 2 * quad], w1 = w[nt * 8 + 2 * quad + 1];
        s0 = fmaf(fmaxf(c[0], 0.f), w0, s0);
        s0 = fmaf(fmaxf(c[1], 0.f), w1, s0);
        s1 = fmaf(fmaxf(c[2], 0.f), w0, s1);
        s1 = fmaf(fmaxf(c[3], 0.f), w1, s1);
      }
      s0 += __shfl_xor_sync(~0u, s0, 1);
      s0 += __shfl_xor_sync(~0u, s0, 2);
      s1 += __shfl_xor_sync(~0u, s1, 1);
      s1 += __shfl_xor_sync(~0u, s1, 2);
      if (quad == 0) {
        if (r0 < len) emit(r0, s0);
        if (r1 < len) emit(r1, s1);
      }
#pragma unroll
      for (int j = 0; j < J; ++j) lo[j] = next_lo[j], hi[j] = next_hi[j];
    }
  }

  template <class Emit>
  __device__ void score_scalar(int64_t row, int64_t begin, int len, const unsigned char* extra, Emit& emit) const {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const float* qs = reinterpret_cast<const float*>(extra);
    const float* w = reinterpret_cast<const float*>(extra + size_t(h) * di * 4);
    for (int t = warp; t < len; t += kWarps) {
      const T* kt = keys + (row * n + begin + t) * di;
      float s = 0.f;
      for (int head = 0; head < h; ++head) {
        float dot = 0.f;
        for (int d = lane; d < di; d += 32) dot = fmaf(qs[head * di + d], to_f32(kt[d]), dot);
        for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(~0u, dot, o);
        s = fmaf(fmaxf(dot, 0.f), w[head], s);
      }
      if (lane == 0) emit(t, s);
    }
  }

  template <class Emit>
  __device__ void score(int64_t row, int64_t begin, int len, unsigned char* extra, Emit emit) const {
    stage(row, extra);
    if (!tensor_cores) return score_scalar(row, begin, len, extra, emit);
    if (di == 128) return score_mma<4>(row, begin, len, extra, emit);
    return score_mma<2>(row, begin, len, extra, emit);
  }
};

template <class T>
bool use_tensor_cores(int h, int di) {
  return !std::is_same_v<T, float> && h % 8 == 0 && (di == 64 || di == 128);
}

// indexer: the scorer as the first selection level's loader.
template <class T>
struct DsaLoader {
  static constexpr bool kHasIdx = false;
  static constexpr bool kTruncated = false;
  static constexpr bool kRowMerge = true;  // one_wave_plan's levels (see run_levels)
  using StagedKey = uint32_t;
  static constexpr int kCtasPerSm = 1;  // the scorer's tiles fill the SM (see one_wave_plan)
  DsaScorer<T> scorer;
  const int32_t* valid_counts;

  __host__ __device__ size_t extra_bytes() const { return scorer.extra_bytes(); }
  __device__ int64_t valid(int64_t row) const { return min64(max64(valid_counts[row], 0), scorer.n); }
  __device__ void load(int64_t row, int64_t begin, int len, uint32_t* keys, int32_t*, uint32_t* hist,
                       unsigned char* extra) const {
    struct {
      uint32_t* keys;
      uint32_t* hist;
      __device__ void operator()(int i, float s) const { store_key(keys, i, key_of(s), hist); }
    } emit{keys, hist};
    scorer.score(row, begin, len, extra, emit);
  }
};

// relevancy: scores to memory, -inf past the valid count.
template <class T>
__global__ void __launch_bounds__(kSelectThreads)
dsa_scores_kernel(const DsaScorer<T> scorer, const int32_t* valid_counts, float* out) {
  extern __shared__ __align__(16) unsigned char extra[];
  const int64_t row = blockIdx.y, begin = int64_t(blockIdx.x) * kIndexerCapacity;
  const int64_t valid = min64(max64(valid_counts[row], 0), scorer.n);
  const int len = int(max64(0, min64(begin + kIndexerCapacity, valid) - begin));
  float* dst = out + row * scorer.n + begin;
  const int span = int(min64(kIndexerCapacity, scorer.n - begin));
  for (int i = len + threadIdx.x; i < span; i += blockDim.x) dst[i] = -__int_as_float(0x7f800000);
  struct {
    float* dst;
    __device__ void operator()(int i, float s) const { dst[i] = s; }
  } emit{dst};
  scorer.score(row, begin, len, extra, emit);
}

struct DsaArgs {
  int64_t rows, n;
  int h, di;
};

template <class Buf>
ffi::Error dsa_shapes(const char* op, const Buf& q, const Buf& keys, ffi::Buffer<ffi::F32>& weights,
                      ffi::Buffer<ffi::S32>& valid, DsaArgs* a) {
  if (q.dimensions().size() < 2 || keys.dimensions().size() < 2) return op_error(op, "q and memory need rank >= 2");
  a->h = int(dim_from_end(q, 1));
  a->di = int(dim_from_end(q, 0));
  a->rows = leading_size(q, 2);
  a->n = dim_from_end(keys, 1);
  if (dim_from_end(keys, 0) != a->di || leading_size(keys, 2) != a->rows)
    return op_error(op, "memory must be [rows, n, di] matching q's rows and di");
  if (weights.element_count() != size_t(a->rows) * a->h) return op_error(op, "weights must be [rows, h]");
  if (valid.element_count() != size_t(a->rows)) return op_error(op, "lengths must have one entry per row");
  if (q.element_type() != keys.element_type()) return op_error(op, "q and memory must share a dtype");
  return ffi::Error::Success();
}

template <class T>
DsaScorer<T> make_scorer(ffi::AnyBuffer q, ffi::AnyBuffer keys, ffi::Buffer<ffi::F32> weights, const DsaArgs& a) {
  return DsaScorer<T>{reinterpret_cast<const T*>(q.untyped_data()), reinterpret_cast<const T*>(keys.untyped_data()),
                      weights.typed_data(), a.n, a.h, a.di, use_tensor_cores<T>(a.h, a.di)};
}

ffi::Error relevancy_dsa_cuda(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer keys,
                              ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::S32> valid,
                              ffi::Result<ffi::Buffer<ffi::F32>> scores) {
  const char* op = "relevancy";
  DsaArgs a;
  JH_RETURN_IF_ERROR(dsa_shapes(op, q, keys, weights, valid, &a));
  if (a.rows == 0 || a.n == 0) return ffi::Error::Success();
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    const DsaScorer<T> scorer = make_scorer<T>(q, keys, weights, a);
    const size_t smem = scorer.extra_bytes();
    if (smem > 200 * 1024) return op_error(op, "h*di=", a.h * a.di, " is too large for the CUDA scorer");
    auto kernel = dsa_scores_kernel<T>;
    JH_CUDA_CHECK(op, allow_smem(kernel, smem));
    const dim3 grid(unsigned((a.n + kIndexerCapacity - 1) / kIndexerCapacity), unsigned(a.rows));
    kernel<<<grid, kSelectThreads, smem, stream>>>(scorer, valid.typed_data(), scores->typed_data());
    JH_CUDA_CHECK(op, cudaGetLastError());
    return ffi::Error::Success();
  });
}

ffi::Error indexer_dsa_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer q,
                            ffi::AnyBuffer keys, ffi::Buffer<ffi::F32> weights, ffi::Buffer<ffi::S32> valid,
                            ffi::Result<ffi::Buffer<ffi::F32>> values, ffi::Result<ffi::Buffer<ffi::S32>> indices,
                            int64_t k) {
  const char* op = "indexer";
  DsaArgs a;
  JH_RETURN_IF_ERROR(dsa_shapes(op, q, keys, weights, valid, &a));
  if (k < 1 || k > a.n) return op_error(op, "k=", k, " must satisfy 1 <= k <= n=", a.n);
  if (k > kSortCap) return op_error(op, "k=", k, " > ", kSortCap, " is not supported by the CUDA indexer");
  if (a.rows == 0) return ffi::Error::Success();
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(op, stream, &dev));
  DeviceScratch scratch{*site, dev.device};
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    const DsaLoader<T> loader{make_scorer<T>(q, keys, weights, a), valid.typed_data()};
    if (loader.extra_bytes() > 100 * 1024) return op_error(op, "h*di=", a.h * a.di, " is too large for the CUDA indexer");
    const SelectParams p = float32_select_params(k, values->typed_data(), indices->typed_data());
    const LevelPlan plan = one_wave_plan<DsaLoader<T>>(dev, a.rows, a.n, k, kIndexerCapacity, kIndexerMaxCapacity,
                                                       loader.extra_bytes(), kIndexerMaxCluster);
    return run_select_levels(op, stream, scratch, loader, plan, kIndexerMaxCapacity, valid.typed_data(), a.rows, a.n,
                             p, dev);
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelevancyDsaCuda, relevancy_dsa_cuda,
                              relevancy_result(dsa_operands(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>())));
JAX_HETERO_REGISTER_GRAPH_SAFE("relevancy_dsa", RelevancyDsaCuda);

XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerDsaCuda, indexer_dsa_cuda,
                              indexer_results(dsa_operands(bind_stream_and_scratch())));
JAX_HETERO_REGISTER_GRAPH_SAFE("indexer_dsa", IndexerDsaCuda);

}  // namespace jax_hetero
