// CUDA handler for sparse_attention: decode attention of each query head over the tokens of
// its KV head's selected blocks.  One CTA per (sequence, KV head, split of the selected
// slots): every warp streams tokens (K and V rows read once, for all query heads of the
// group), keeping an online softmax; the warps, then the splits (a small merge kernel),
// are combined with the log-sum-exp rule.
#include "common/registry.h"
#include "cuda/cuda_util.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr int kAttnWarps = 4;
constexpr int kAttnThreads = kAttnWarps * 32;
constexpr int kMaxGroup = 8;   // query heads per KV head (kernels for groups up to 4 and 8)
constexpr int kTokensPerStep = 4;  // tokens a warp loads before using them
constexpr int kMaxSlots = 4096;  // selected slots per (sequence, KV head)

// Loads N consecutive elements of T as float with the widest aligned vector loads.
template <class T, int N>
__device__ __forceinline__ void load_row(const T* src, float* out) {
  constexpr int kBytes = N * int(sizeof(T));
  if constexpr (kBytes % 16 == 0) {
    T tmp[N];
#pragma unroll
    for (int i = 0; i < kBytes / 16; ++i) reinterpret_cast<uint4*>(tmp)[i] = __ldg(reinterpret_cast<const uint4*>(src) + i);
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f32(tmp[i]);
  } else if constexpr (kBytes == 8) {
    T tmp[N];
    *reinterpret_cast<uint2*>(tmp) = __ldg(reinterpret_cast<const uint2*>(src));
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f32(tmp[i]);
  } else {
#pragma unroll
    for (int i = 0; i < N; ++i) out[i] = to_f32(src[i]);
  }
}

template <class T>
__device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bfloat16_bits from_f32<bfloat16_bits>(float x) {
  return bfloat16_bits{__bfloat16_as_ushort(__float2bfloat16_rn(x))};
}
template <> __device__ __forceinline__ float16_bits from_f32<float16_bits>(float x) {
  return float16_bits{__half_as_ushort(__float2half_rn(x))};
}

struct AttnParams {
  int64_t n;
  int hq, hkv, d, group, kb, block_size;
  int splits, slots_per_split;
  float scale_log2;  // scale * log2(e): softmax in base 2
  float* partial;    // [rows, hq, splits, d + 2] (m, l, acc) when splits > 1
};

template <class T, int DPL, int G>
__global__ void __launch_bounds__(kAttnThreads, G <= 4 ? 4 : 2)
attention_kernel(const T* q, const T* k, const T* v, const int32_t* block_indices, const int32_t* lengths,
                 T* out, const AttnParams p) {
  __shared__ int s_block[kMaxSlots];  // block index of each slot of this split, -1 if unused
  __shared__ float s_m[kAttnWarps][kMaxGroup], s_l[kAttnWarps][kMaxGroup];
  extern __shared__ float s_acc[];  // [warps][group][d]
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int split = blockIdx.x % p.splits;
  const int64_t pair = blockIdx.x / p.splits;  // (row, kv head)
  const int64_t row = pair / p.hkv;
  const int head_kv = int(pair % p.hkv);
  const int32_t* slots = block_indices + pair * p.kb;
  const int s0 = split * p.slots_per_split, s1 = min(p.kb, s0 + p.slots_per_split);
  const int64_t limit = min64(max64(lengths[row], 0), p.n);
  // A slot counts if its block is >= 0 and no earlier slot holds the same block.
  for (int s = s0 + threadIdx.x; s < s1; s += kAttnThreads) {
    int b = slots[s];
    for (int e = 0; e < s && b >= 0; ++e)
      if (slots[e] == b) b = -1;
    s_block[s - s0] = b;
  }
  float qv[G][DPL], acc[G][DPL], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[h][i] = 0.f, qv[h][i] = 0.f;
    if (h < p.group) load_row<T, DPL>(q + (row * p.hq + head_kv * p.group + h) * p.d + lane * DPL, qv[h]);
  }
  __syncthreads();

  const int64_t tokens = int64_t(s1 - s0) * p.block_size;
  const int64_t row_stride = int64_t(p.hkv) * p.d;
  const T* kbase = k + (row * p.n * p.hkv + head_kv) * p.d + lane * DPL;
  const T* vbase = v + (row * p.n * p.hkv + head_kv) * p.d + lane * DPL;
  for (int64_t base = int64_t(warp) * kTokensPerStep; base < tokens; base += kAttnWarps * kTokensPerStep) {
    float kf[kTokensPerStep][DPL], vf[kTokensPerStep][DPL];
    bool ok[kTokensPerStep];
#pragma unroll
    for (int u = 0; u < kTokensPerStep; ++u) {
      const int64_t t = base + u;
      const int block = t < tokens ? s_block[t / p.block_size] : -1;
      const int64_t pos = int64_t(block) * p.block_size + t % p.block_size;
      ok[u] = block >= 0 && pos < limit;
      if (ok[u]) {
        load_row<T, DPL>(kbase + pos * row_stride, kf[u]);
        load_row<T, DPL>(vbase + pos * row_stride, vf[u]);
      }
    }
#pragma unroll
    for (int h = 0; h < G; ++h) {
      if (h >= p.group) break;
      float logit[kTokensPerStep];
      float top = -INFINITY;
#pragma unroll
      for (int u = 0; u < kTokensPerStep; ++u) {
        float dot = 0.f;
#pragma unroll
        for (int i = 0; i < DPL; ++i) dot = fmaf(qv[h][i], ok[u] ? kf[u][i] : 0.f, dot);
        for (int o = 16; o; o >>= 1) dot += __shfl_xor_sync(~0u, dot, o);
        logit[u] = ok[u] ? dot * p.scale_log2 : -INFINITY;
        top = fmaxf(top, logit[u]);
      }
      if (top == -INFINITY) continue;
      const float m_new = fmaxf(m[h], top), corr = exp2f(m[h] - m_new);
      l[h] *= corr;
#pragma unroll
      for (int i = 0; i < DPL; ++i) acc[h][i] *= corr;
#pragma unroll
      for (int u = 0; u < kTokensPerStep; ++u) {
        if (!ok[u]) continue;
        const float w = exp2f(logit[u] - m_new);
        l[h] += w;
#pragma unroll
        for (int i = 0; i < DPL; ++i) acc[h][i] = fmaf(w, vf[u][i], acc[h][i]);
      }
      m[h] = m_new;
    }
  }

  // Combine the warps, then write the output (one split) or this split's partial state.
#pragma unroll
  for (int h = 0; h < G; ++h) {
    if (h >= p.group) break;
    if (lane == 0) s_m[warp][h] = m[h], s_l[warp][h] = l[h];
#pragma unroll
    for (int i = 0; i < DPL; ++i) s_acc[(warp * p.group + h) * p.d + lane * DPL + i] = acc[h][i];
  }
  __syncthreads();
  for (int e = threadIdx.x; e < p.group * p.d; e += kAttnThreads) {
    const int h = e / p.d, dim = e % p.d;
    float top = -INFINITY;
    for (int w = 0; w < kAttnWarps; ++w) top = fmaxf(top, s_m[w][h]);
    float total = 0.f, sum = 0.f;
    if (top != -INFINITY) {
      for (int w = 0; w < kAttnWarps; ++w) {
        const float f = exp2f(s_m[w][h] - top);
        total += s_l[w][h] * f;
        sum += s_acc[(w * p.group + h) * p.d + dim] * f;
      }
    }
    const int64_t head = row * p.hq + head_kv * p.group + h;
    if (p.splits == 1) {
      out[head * p.d + dim] = from_f32<T>(total > 0.f ? sum / total : 0.f);
    } else {
      float* part = p.partial + (head * p.splits + split) * (p.d + 2);
      part[2 + dim] = sum;
      if (dim == 0) part[0] = top, part[1] = total;
    }
  }
}

template <class T>
__global__ void merge_splits_kernel(const float* partial, T* out, int64_t heads, int splits, int d) {
  const int64_t head = blockIdx.x;
  const float* part = partial + head * splits * (d + 2);
  float top = -INFINITY;
  for (int s = 0; s < splits; ++s) top = fmaxf(top, part[s * (d + 2)]);
  for (int dim = threadIdx.x; dim < d; dim += blockDim.x) {
    float total = 0.f, sum = 0.f;
    if (top != -INFINITY) {
      for (int s = 0; s < splits; ++s) {
        const float f = exp2f(part[s * (d + 2)] - top);
        total += part[s * (d + 2) + 1] * f;
        sum += part[s * (d + 2) + 2 + dim] * f;
      }
    }
    out[head * d + dim] = from_f32<T>(total > 0.f ? sum / total : 0.f);
  }
}

template <class T, int DPL>
ffi::Error run_attention(cudaStream_t stream, ffi::ScratchAllocator& scratch, const void* q, const void* k,
                         const void* v, const int32_t* bi, const int32_t* lengths, void* out, int64_t rows,
                         AttnParams p, const DeviceInfo& dev) {
  const char* op = "sparse_attention";
  const int64_t pairs = rows * p.hkv;
  // Enough CTAs to fill the GPU a few times over; at least 256 tokens per split.
  const int64_t want = (4 * int64_t(dev.sms) + pairs - 1) / pairs;
  const int64_t most = std::max<int64_t>(1, int64_t(p.kb) * p.block_size / 256);
  p.splits = int(std::max<int64_t>(1, std::min<int64_t>({want, most, int64_t(p.kb)})));
  p.slots_per_split = (p.kb + p.splits - 1) / p.splits;
  p.splits = (p.kb + p.slots_per_split - 1) / p.slots_per_split;
  if (p.slots_per_split > kMaxSlots) return fail(op, "more than ", kMaxSlots, " slots per split");
  ScratchArena arena;
  const size_t partial_bytes = size_t(rows) * p.hq * p.splits * (p.d + 2) * 4;
  if (p.splits > 1) arena.reserve(partial_bytes);
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
  p.partial = p.splits > 1 ? arena.take<float>(partial_bytes) : nullptr;
  const size_t smem = size_t(kAttnWarps) * p.group * p.d * 4;
  auto kernel = p.group <= 4 ? attention_kernel<T, DPL, 4> : attention_kernel<T, DPL, kMaxGroup>;
  JH_CUDA_CHECK(op, cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
  kernel<<<unsigned(pairs * p.splits), kAttnThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), bi, lengths,
      static_cast<T*>(out), p);
  JH_CUDA_CHECK(op, cudaGetLastError());
  if (p.splits > 1) {
    merge_splits_kernel<T><<<unsigned(rows * p.hq), 128, 0, stream>>>(p.partial, static_cast<T*>(out), rows * p.hq,
                                                                      p.splits, p.d);
    JH_CUDA_CHECK(op, cudaGetLastError());
  }
  return ffi::Error::Success();
}

ffi::Error sparse_attention_cuda(cudaStream_t stream, ffi::ScratchAllocator scratch, ffi::AnyBuffer q,
                                 ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::Buffer<ffi::S32> block_indices,
                                 ffi::Buffer<ffi::S32> lengths, ffi::Result<ffi::AnyBuffer> out,
                                 int64_t block_size, float scale) {
  const char* op = "sparse_attention";
  if (q.dimensions().size() < 2 || k.dimensions().size() < 3 || block_indices.dimensions().size() < 2)
    return fail(op, "expected q [b, hq, d], k/v [b, n, hkv, d], block_indices [b, hkv, kb]");
  const int64_t rows = leading_size(q, 2);
  AttnParams p{};
  p.hq = int(dim_from_end(q, 1));
  p.d = int(dim_from_end(q, 0));
  p.n = dim_from_end(k, 2);
  p.hkv = int(dim_from_end(k, 1));
  p.kb = int(dim_from_end(block_indices, 0));
  p.block_size = int(block_size);
  if (dim_from_end(k, 0) != p.d || leading_size(k, 3) != rows || k.element_count() != v.element_count())
    return fail(op, "k and v must be [b, n, hkv, d] with q's batch and head dim");
  if (p.hkv < 1 || p.hq % p.hkv) return fail(op, "hq=", p.hq, " must be a multiple of hkv=", p.hkv);
  p.group = p.hq / p.hkv;
  if (p.group > kMaxGroup) return fail(op, "at most ", kMaxGroup, " query heads per KV head, got ", p.group);
  if (dim_from_end(block_indices, 1) != p.hkv || leading_size(block_indices, 2) != rows)
    return fail(op, "block_indices must be [b, hkv, kb]");
  if (lengths.element_count() != size_t(rows)) return fail(op, "lengths must have one entry per sequence");
  if (block_size < 1) return fail(op, "block_size must be >= 1");
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type())
    return fail(op, "q, k and v must share a dtype");
  if (rows == 0 || p.hq == 0) return ffi::Error::Success();
  if (p.d != 32 && p.d != 64 && p.d != 128 && p.d != 256)
    return fail(op, "head dim d=", p.d, " is not supported by the CUDA kernel (32, 64, 128 or 256)");
  p.scale_log2 = scale * 1.4426950408889634f;
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(op, stream, &dev));
  if (p.kb == 0) {  // nothing selected: zeros
    JH_CUDA_CHECK(op, cudaMemsetAsync(out->untyped_data(), 0, out->size_bytes(), stream));
    return ffi::Error::Success();
  }
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    auto go = [&](auto dpl) {
      return run_attention<T, decltype(dpl)::value>(stream, scratch, q.untyped_data(), k.untyped_data(),
                                                    v.untyped_data(), block_indices.typed_data(),
                                                    lengths.typed_data(), out->untyped_data(), rows, p, dev);
    };
    switch (p.d / 32) {
      case 1: return go(std::integral_constant<int, 1>{});
      case 2: return go(std::integral_constant<int, 2>{});
      case 4: return go(std::integral_constant<int, 4>{});
      default: return go(std::integral_constant<int, 8>{});
    }
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseAttentionCuda, sparse_attention_cuda,
                              sparse_attention_signature(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>().Ctx<ffi::ScratchAllocator>()));
JAX_HETERO_REGISTER("sparse_attention", SparseAttentionCuda);

}  // namespace jax_hetero
