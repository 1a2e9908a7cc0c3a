// CUDA handler for sparse_attention_bwd: the gradients of sparse_attention with respect to q,
// k and v, with the FFI signature of the CPU backward (common/signatures.h).
//
// Simple and exact rather than fast.  Four launches on XLA's stream:
//   1. slots:  one thread per (pair, slot), pair = (sequence, KV head): the block of the slot
//              if it counts (>= 0, first slot holding that block, its first token < length),
//              else -1.  Every later kernel reads these slots, so a token is visited by at
//              most one warp: dk and dv rows are written once, without atomics.
//   2. stats:  one CTA per (pair, split of the slots); each warp streams tokens and keeps,
//              per query head j of the group, the online softmax state m_j, l_j = sum e^(s-m)
//              and u_j = sum e^(s-m) (g_j . v_t); the warps are merged into one partial state
//              per split.
//   3. grads:  same grid; each CTA merges the splits' states (m, l, D = u / l = sum P dP),
//              recomputes s and P per token and writes dk_t = scale sum_j dS_jt q_j and
//              dv_t = sum_j P_jt g_j (dS = P (dP - D)); dq_j = scale sum_t dS_jt k_t is summed in
//              shared memory and written (one split) or kept per split in scratch.
//   4. dq:     sum of the splits' dq (several splits only).
// dk and dv are zeroed first (cudaMemsetAsync) so tokens nobody selected get zero gradients.
// Arithmetic is float32 whatever the storage type; results are rounded once.
#include <algorithm>
#include <type_traits>

#include "common/registry.h"
#include "common/signatures.h"
#include "cuda/cuda_util.h"

namespace jax_hetero {
namespace {

constexpr const char* kBwdOp = "sparse_attention_bwd";
constexpr int kBwdWarps = 4;
constexpr int kBwdThreads = kBwdWarps * 32;
constexpr int kBwdMaxLanes = 16;  // elements of a row per lane: head dims up to 512

__device__ __forceinline__ float bwd_warp_sum(float x) {
#pragma unroll
  for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
  return x;  // the butterfly leaves the same bits in every lane
}

// For one query head (q row qj, output gradient gj) and the warp's token (k and v rows in
// kf, vf, L elements a lane): s = scale * qj.k and dp = gj.v, the same in every lane.
template <int L>
__device__ __forceinline__ void bwd_scores(const float* qj, const float* gj, const float (&kf)[L],
                                           const float (&vf)[L], int lane, int d, float scale, float* s,
                                           float* dp) {
  float sd = 0.f, pd = 0.f;
#pragma unroll
  for (int c = 0; c < L; ++c) {
    const int e = lane + 32 * c;
    if (e < d) sd = fmaf(qj[e], kf[c], sd), pd = fmaf(gj[e], vf[c], pd);
  }
  *s = bwd_warp_sum(sd) * scale;
  *dp = bwd_warp_sum(pd);
}

struct BwdParams {
  int64_t rows, n;
  int hq, hkv, d, group, kb, block_size;
  int splits, slots_per_split;
  float scale;
  const int32_t* slots;  // [pairs, kb]: the counting block of each slot, or -1
  float* stats;          // [pairs, splits, group, 3]: (m, l, u)
  float* dq_partial;     // [pairs, splits, group, d] when splits > 1
};

// 1. The block of each slot if it counts, else -1 (same rule as the forward and the
// reference: duplicates count once, -1 and blocks starting at or past the length skipped).
__global__ void bwd_slots_kernel(const int32_t* block_indices, const int32_t* lengths, int32_t* slots,
                                 int64_t pairs, int hkv, int kb, int block_size, int64_t n) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= pairs * kb) return;
  const int64_t pair = i / kb;
  const int s = int(i % kb);
  const int32_t* row = block_indices + pair * kb;
  int32_t block = row[s];
  const int64_t limit = min64(max64(lengths[pair / hkv], 0), n);
  if (block >= 0 && int64_t(block) * block_size >= limit) block = -1;
  for (int e = 0; e < s && block >= 0; ++e)
    if (row[e] == block) block = -1;
  slots[i] = block;
}

// What a CTA of the stats and gradient kernels works on: (sequence row, KV head) pair and split
// of its slots [s0, s1), with the tokens below `limit` counting.
struct BwdWork {
  int split, head_kv, s0, s1;
  int64_t pair, row, limit;
  const int32_t* slots;  // the pair's counting slots
};

__device__ __forceinline__ BwdWork bwd_work(const int32_t* lengths, const BwdParams& p) {
  BwdWork w;
  w.split = int(blockIdx.x % unsigned(p.splits));
  w.pair = blockIdx.x / unsigned(p.splits);
  w.row = w.pair / p.hkv;
  w.head_kv = int(w.pair % p.hkv);
  w.slots = p.slots + w.pair * p.kb;
  w.s0 = w.split * p.slots_per_split;
  w.s1 = min(p.kb, w.s0 + p.slots_per_split);
  w.limit = min64(max64(lengths[w.row], 0), p.n);
  return w;
}

// Loads q and g of the pair's query heads into shared memory as float32 ([group][d] each).
template <class T>
__device__ __forceinline__ void bwd_load_heads(const T* q, const T* g, int64_t pair, const BwdParams& p,
                                               float* s_q, float* s_g) {
  const int64_t base = pair * p.group * p.d;  // query head pair * group + j of row pair / hkv
  for (int e = threadIdx.x; e < p.group * p.d; e += blockDim.x) {
    s_q[e] = to_f32(q[base + e]);
    s_g[e] = to_f32(g[base + e]);
  }
}

// The token position of token t of this split, or -1 if it does not count.
__device__ __forceinline__ int64_t bwd_token(const BwdParams& p, const int32_t* slots, int s0, int64_t t,
                                             int64_t limit) {
  const int block = slots[s0 + int(t / p.block_size)];
  if (block < 0) return -1;
  const int64_t pos = int64_t(block) * p.block_size + t % p.block_size;
  return pos < limit ? pos : -1;
}

// Row `pos` of k or v for this lane: elements lane + 32 c, zero past d.
template <class T, int L>
__device__ __forceinline__ void bwd_load_row(const T* base, int64_t pos, int64_t row_stride, int d, int lane,
                                             float* out) {
  const T* src = base + pos * row_stride;
#pragma unroll
  for (int c = 0; c < L; ++c) {
    const int e = lane + 32 * c;
    out[c] = e < d ? to_f32(src[e]) : 0.f;
  }
}

// 2. Per (pair, split): m, l and u of every query head of the group over the split's tokens.
template <class T, int L>
__global__ void __launch_bounds__(kBwdThreads)
bwd_stats_kernel(const T* q, const T* k, const T* v, const T* g, const int32_t* lengths, const BwdParams p) {
  extern __shared__ float smem[];
  float* s_q = smem;                     // [group][d]
  float* s_g = s_q + p.group * p.d;      // [group][d]
  float* s_m = s_g + p.group * p.d;      // [warps][group]
  float* s_l = s_m + kBwdWarps * p.group;
  float* s_u = s_l + kBwdWarps * p.group;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const BwdWork w = bwd_work(lengths, p);
  const int split = w.split, head_kv = w.head_kv, s0 = w.s0, s1 = w.s1;
  const int64_t pair = w.pair, row = w.row, limit = w.limit;
  const int32_t* slots = w.slots;
  bwd_load_heads(q, g, pair, p, s_q, s_g);
  for (int e = threadIdx.x; e < kBwdWarps * p.group; e += blockDim.x) s_m[e] = -INFINITY, s_l[e] = 0.f, s_u[e] = 0.f;
  __syncthreads();

  const int64_t row_stride = int64_t(p.hkv) * p.d;
  const T* kbase = k + (row * p.n * p.hkv + head_kv) * p.d;
  const T* vbase = v + (row * p.n * p.hkv + head_kv) * p.d;
  const int64_t tokens = int64_t(s1 - s0) * p.block_size;
  for (int64_t t = warp; t < tokens; t += kBwdWarps) {
    const int64_t pos = bwd_token(p, slots, s0, t, limit);  // the same in every lane
    if (pos < 0) continue;
    float kf[L], vf[L];
    bwd_load_row<T, L>(kbase, pos, row_stride, p.d, lane, kf);
    bwd_load_row<T, L>(vbase, pos, row_stride, p.d, lane, vf);
    for (int j = 0; j < p.group; ++j) {
      float s, dp;
      bwd_scores<L>(s_q + j * p.d, s_g + j * p.d, kf, vf, lane, p.d, p.scale, &s, &dp);
      if (lane == 0) {  // lane 0 owns the warp's state
        const int at = warp * p.group + j;
        const float m = s_m[at], m_new = fmaxf(m, s);
        const float corr = m == -INFINITY ? 0.f : expf(m - m_new), w = expf(s - m_new);
        s_l[at] = fmaf(s_l[at], corr, w);
        s_u[at] = fmaf(s_u[at], corr, w * dp);
        s_m[at] = m_new;
      }
    }
  }
  __syncthreads();
  for (int j = threadIdx.x; j < p.group; j += blockDim.x) {
    float top = -INFINITY;
    for (int w = 0; w < kBwdWarps; ++w) top = fmaxf(top, s_m[w * p.group + j]);
    float l = 0.f, u = 0.f;
    if (top != -INFINITY) {
      for (int w = 0; w < kBwdWarps; ++w) {
        const float m = s_m[w * p.group + j];
        if (m == -INFINITY) continue;
        const float f = expf(m - top);
        l = fmaf(s_l[w * p.group + j], f, l);
        u = fmaf(s_u[w * p.group + j], f, u);
      }
    }
    float* out = p.stats + ((pair * p.splits + split) * p.group + j) * 3;
    out[0] = top, out[1] = l, out[2] = u;
  }
}

// 3. Per (pair, split): dk and dv of the split's tokens, and the split's share of dq.
template <class T, int L>
__global__ void __launch_bounds__(kBwdThreads)
bwd_grads_kernel(const T* q, const T* k, const T* v, const T* g, const int32_t* lengths, T* dq, T* dk, T* dv,
                 const BwdParams p) {
  extern __shared__ float smem[];
  float* s_q = smem;                   // [group][d]
  float* s_g = s_q + p.group * p.d;    // [group][d]
  float* s_dq = s_g + p.group * p.d;   // [group][d]: sum_t dS_jt k_t
  float* s_m = s_dq + p.group * p.d;   // [group]: the row maximum of the logits
  float* s_inv = s_m + p.group;        // [group]: 1 / sum e^(s - m), 0 for an empty row
  float* s_dot = s_inv + p.group;      // [group]: D = sum_t P dP
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const BwdWork w = bwd_work(lengths, p);
  const int split = w.split, head_kv = w.head_kv, s0 = w.s0, s1 = w.s1;
  const int64_t pair = w.pair, row = w.row, limit = w.limit;
  const int32_t* slots = w.slots;
  bwd_load_heads(q, g, pair, p, s_q, s_g);
  for (int e = threadIdx.x; e < p.group * p.d; e += blockDim.x) s_dq[e] = 0.f;
  for (int j = threadIdx.x; j < p.group; j += blockDim.x) {  // merge the splits' states
    const float* st = p.stats + pair * p.splits * p.group * 3;
    float top = -INFINITY;
    for (int s = 0; s < p.splits; ++s) top = fmaxf(top, st[(s * p.group + j) * 3]);
    float l = 0.f, u = 0.f;
    if (top != -INFINITY) {
      for (int s = 0; s < p.splits; ++s) {
        const float* e = st + (s * p.group + j) * 3;
        if (e[0] == -INFINITY) continue;
        const float f = expf(e[0] - top);
        l = fmaf(e[1], f, l);
        u = fmaf(e[2], f, u);
      }
    }
    s_m[j] = top == -INFINITY ? 0.f : top;
    s_inv[j] = l > 0.f ? 1.f / l : 0.f;
    s_dot[j] = l > 0.f ? u / l : 0.f;
  }
  __syncthreads();

  const int64_t row_stride = int64_t(p.hkv) * p.d;
  const int64_t head_offset = (row * p.n * p.hkv + head_kv) * p.d;
  const int64_t tokens = int64_t(s1 - s0) * p.block_size;
  for (int64_t t = warp; t < tokens; t += kBwdWarps) {
    const int64_t pos = bwd_token(p, slots, s0, t, limit);
    if (pos < 0) continue;
    float kf[L], vf[L], dkf[L], dvf[L];
    bwd_load_row<T, L>(k + head_offset, pos, row_stride, p.d, lane, kf);
    bwd_load_row<T, L>(v + head_offset, pos, row_stride, p.d, lane, vf);
#pragma unroll
    for (int c = 0; c < L; ++c) dkf[c] = 0.f, dvf[c] = 0.f;
    for (int j = 0; j < p.group; ++j) {
      const float* qj = s_q + j * p.d;
      const float* gj = s_g + j * p.d;
      float s, dp;
      bwd_scores<L>(qj, gj, kf, vf, lane, p.d, p.scale, &s, &dp);
      const float prob = s_inv[j] > 0.f ? expf(s - s_m[j]) * s_inv[j] : 0.f;
      const float ds = prob * (dp - s_dot[j]);
#pragma unroll
      for (int c = 0; c < L; ++c) {
        const int e = lane + 32 * c;
        if (e < p.d) {
          dkf[c] = fmaf(ds, qj[e], dkf[c]);
          dvf[c] = fmaf(prob, gj[e], dvf[c]);
          atomicAdd(s_dq + j * p.d + e, ds * kf[c]);
        }
      }
    }
    // This warp is the only one to visit token pos of this (sequence, KV head).
    T* dk_row = dk + head_offset + pos * row_stride;
    T* dv_row = dv + head_offset + pos * row_stride;
#pragma unroll
    for (int c = 0; c < L; ++c) {
      const int e = lane + 32 * c;
      if (e < p.d) {
        dk_row[e] = from_f32<T>(dkf[c] * p.scale);
        dv_row[e] = from_f32<T>(dvf[c]);
      }
    }
  }
  __syncthreads();
  const int64_t base = pair * p.group * p.d;  // dq rows of the group's query heads
  for (int e = threadIdx.x; e < p.group * p.d; e += blockDim.x) {
    if (p.splits == 1)
      dq[base + e] = from_f32<T>(s_dq[e] * p.scale);
    else
      p.dq_partial[(pair * p.splits + split) * p.group * p.d + e] = s_dq[e];
  }
}

// 4. dq = scale * sum over the splits (several splits only).
template <class T>
__global__ void bwd_dq_kernel(const float* partial, T* dq, int64_t elements, int splits, int64_t per_pair,
                              float scale) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= elements) return;
  const int64_t pair = i / per_pair, e = i % per_pair;
  float sum = 0.f;
  for (int s = 0; s < splits; ++s) sum += partial[(pair * splits + s) * per_pair + e];
  dq[i] = from_f32<T>(sum * scale);
}

template <class T, int L>
ffi::Error run_backward(cudaStream_t stream, DeviceScratch& scratch, const void* q, const void* k,
                        const void* v, const int32_t* block_indices, const int32_t* lengths, const void* g,
                        void* dq, void* dk, void* dv, BwdParams p, const DeviceInfo& dev) {
  const int64_t pairs = p.rows * p.hkv;
  // Enough CTAs to fill the GPU a few times over; at least 256 tokens per split.
  const int64_t want = (4 * int64_t(dev.sms) + pairs - 1) / pairs;
  const int64_t most = std::max<int64_t>(1, int64_t(p.kb) * p.block_size / 256);
  p.splits = int(std::max<int64_t>(1, std::min<int64_t>({want, most, int64_t(p.kb)})));
  p.slots_per_split = (p.kb + p.splits - 1) / p.splits;
  p.splits = (p.kb + p.slots_per_split - 1) / p.slots_per_split;
  const int64_t ctas = pairs * p.splits;
  if (ctas > 0x7fffffff) return op_error(kBwdOp, "too many (sequence, KV head) pairs for one grid: ", pairs);

  const size_t heads_bytes = size_t(p.group) * p.d * sizeof(float);
  const size_t stats_smem = 2 * heads_bytes + size_t(3) * kBwdWarps * p.group * sizeof(float);
  const size_t grads_smem = 3 * heads_bytes + size_t(3) * p.group * sizeof(float);
  int smem_limit = 0;
  JH_CUDA_CHECK(kBwdOp, cudaDeviceGetAttribute(&smem_limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev.device));
  if (std::max(stats_smem, grads_smem) > size_t(smem_limit))
    return op_error(kBwdOp, "group of ", p.group, " query heads x head dim ", p.d, " needs ",
                std::max(stats_smem, grads_smem), " bytes of shared memory, more than the device's ", smem_limit);

  ScratchArena arena;
  const size_t slots_bytes = size_t(pairs) * p.kb * sizeof(int32_t);
  const size_t stats_bytes = size_t(ctas) * p.group * 3 * sizeof(float);
  const size_t partial_bytes = size_t(ctas) * p.group * p.d * sizeof(float);
  arena.reserve(slots_bytes);
  arena.reserve(stats_bytes);
  if (p.splits > 1) arena.reserve(partial_bytes);
  JH_RETURN_IF_ERROR(arena.allocate(kBwdOp, scratch));
  int32_t* slots = arena.take<int32_t>(slots_bytes);
  p.slots = slots;
  p.stats = arena.take<float>(stats_bytes);
  p.dq_partial = p.splits > 1 ? arena.take<float>(partial_bytes) : nullptr;

  const T* qt = static_cast<const T*>(q);
  const T* kt = static_cast<const T*>(k);
  const T* vt = static_cast<const T*>(v);
  const T* gt = static_cast<const T*>(g);
  T* dqt = static_cast<T*>(dq);

  const int64_t slot_count = pairs * p.kb;
  bwd_slots_kernel<<<unsigned((slot_count + 255) / 256), 256, 0, stream>>>(block_indices, lengths, slots, pairs,
                                                                           p.hkv, p.kb, p.block_size, p.n);
  JH_CUDA_CHECK(kBwdOp, cudaGetLastError());

  auto stats = bwd_stats_kernel<T, L>;
  JH_CUDA_CHECK(kBwdOp, allow_smem(stats, stats_smem));
  stats<<<unsigned(ctas), kBwdThreads, stats_smem, stream>>>(qt, kt, vt, gt, lengths, p);
  JH_CUDA_CHECK(kBwdOp, cudaGetLastError());

  auto grads = bwd_grads_kernel<T, L>;
  JH_CUDA_CHECK(kBwdOp, allow_smem(grads, grads_smem));
  grads<<<unsigned(ctas), kBwdThreads, grads_smem, stream>>>(qt, kt, vt, gt, lengths, dqt, static_cast<T*>(dk),
                                                             static_cast<T*>(dv), p);
  JH_CUDA_CHECK(kBwdOp, cudaGetLastError());

  if (p.splits > 1) {
    const int64_t elements = pairs * p.group * p.d;
    bwd_dq_kernel<T><<<unsigned((elements + 255) / 256), 256, 0, stream>>>(p.dq_partial, dqt, elements, p.splits,
                                                                           int64_t(p.group) * p.d, p.scale);
    JH_CUDA_CHECK(kBwdOp, cudaGetLastError());
  }
  return ffi::Error::Success();
}

template <class A, class B>
bool bwd_same_shape(const A& a, const B& b) {
  return std::equal(a.dimensions().begin(), a.dimensions().end(), b.dimensions().begin(), b.dimensions().end());
}

ffi::Error sparse_attention_bwd_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer q,
                                     ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::Buffer<ffi::S32> block_indices,
                                     ffi::Buffer<ffi::S32> lengths, ffi::AnyBuffer g, ffi::Result<ffi::AnyBuffer> dq,
                                     ffi::Result<ffi::AnyBuffer> dk, ffi::Result<ffi::AnyBuffer> dv,
                                     int64_t block_size, float scale) {
  // The checks of the CPU backward (cpu/attention_args.h) that need no host copy of the
  // indices; indices outside [-1, blocks) are skipped here (the forward reports them).
  if (q.dimensions().size() < 2 || k.dimensions().size() < 3 || block_indices.dimensions().size() < 2)
    return op_error(kBwdOp, "expected q [..., hq, d], k/v [..., n, hkv, d] and block_indices [..., hkv, kb]");
  BwdParams p{};
  p.rows = leading_size(q, 2);
  const int64_t hq = dim_from_end(q, 1), d = dim_from_end(q, 0), hkv = dim_from_end(k, 1);
  const int64_t kb = dim_from_end(block_indices, 0);
  p.n = dim_from_end(k, 2);
  if (block_size < 1) return op_error(kBwdOp, "block_size=", block_size, " must be >= 1");
  // A block longer than k has only its first n tokens (blocks >= 1 start at or past n): the
  // same tokens with block_size min(block_size, n), which keeps the kernels' int exact and
  // their token loops short.
  const int64_t kernel_block_size = std::min<int64_t>(block_size, std::max<int64_t>(p.n, 1));
  if (kernel_block_size > 0x7fffffff) return op_error(kBwdOp, "block_size=", block_size, " is too large");
  if (dim_from_end(k, 0) != d || leading_size(k, 3) != p.rows)
    return op_error(kBwdOp, "k must be [..., n, hkv, d] with q's batch and head dim d=", d);
  if (!bwd_same_shape(v, k)) return op_error(kBwdOp, "v must have the shape of k");
  if (hkv < 1 || hq % hkv != 0)
    return op_error(kBwdOp, "query heads hq=", hq, " must be a multiple of the KV heads hkv=", hkv);
  if (dim_from_end(block_indices, 1) != hkv || leading_size(block_indices, 2) != p.rows)
    return op_error(kBwdOp, "block_indices must be [..., hkv, kb] with hkv=", hkv);
  if (lengths.element_count() != size_t(p.rows))
    return op_error(kBwdOp, "lengths has ", lengths.element_count(), " entries, expected ", p.rows);
  const ffi::DataType type = q.element_type();
  if (k.element_type() != type || v.element_type() != type)
    return op_error(kBwdOp, "q, k and v must share a dtype, got ", dtype_name(type), ", ", dtype_name(k.element_type()),
                ", ", dtype_name(v.element_type()));
  if (!bwd_same_shape(g, q) || g.element_type() != type) return op_error(kBwdOp, "g must have q's shape and dtype");
  if (!bwd_same_shape(*dq, q) || !bwd_same_shape(*dk, k) || !bwd_same_shape(*dv, k) || dq->element_type() != type ||
      dk->element_type() != type || dv->element_type() != type)
    return op_error(kBwdOp, "dq must have the shape and dtype of q, dk and dv those of k");
  if (type != ffi::DataType::F32 && type != ffi::DataType::BF16 && type != ffi::DataType::F16)
    return op_error(kBwdOp, "q must be float32, bfloat16 or float16, got ", dtype_name(type));
  if (d > 32 * kBwdMaxLanes)
    return op_error(kBwdOp, "head dim d=", d, " is not supported by the CUDA kernel (at most ", 32 * kBwdMaxLanes, ")");
  if (kb > 0x7fffffff || hq > 0x7fffffff) return op_error(kBwdOp, "too many slots or heads");
  p.hq = int(hq);
  p.hkv = int(hkv);
  p.d = int(d);
  p.group = int(hq / hkv);
  p.kb = int(kb);
  p.block_size = int(kernel_block_size);
  p.scale = scale;

  // Tokens no slot selects get zero gradients; the grads kernel writes the selected ones.
  JH_CUDA_CHECK(kBwdOp, cudaMemsetAsync(dk->untyped_data(), 0, dk->size_bytes(), stream));
  JH_CUDA_CHECK(kBwdOp, cudaMemsetAsync(dv->untyped_data(), 0, dv->size_bytes(), stream));
  if (p.rows == 0 || p.hq == 0 || p.d == 0 || p.kb == 0) {  // nothing selected: zeros
    JH_CUDA_CHECK(kBwdOp, cudaMemsetAsync(dq->untyped_data(), 0, dq->size_bytes(), stream));
    return ffi::Error::Success();
  }
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(kBwdOp, stream, &dev));
  DeviceScratch scratch{*site, dev.device};
  return dispatch_float(kBwdOp, "q", type, [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    auto go = [&](auto lanes) {
      return run_backward<T, decltype(lanes)::value>(stream, scratch, q.untyped_data(), k.untyped_data(),
                                                     v.untyped_data(), block_indices.typed_data(),
                                                     lengths.typed_data(), g.untyped_data(), dq->untyped_data(),
                                                     dk->untyped_data(), dv->untyped_data(), p, dev);
    };
    if (p.d <= 32) return go(std::integral_constant<int, 1>{});
    if (p.d <= 64) return go(std::integral_constant<int, 2>{});
    if (p.d <= 128) return go(std::integral_constant<int, 4>{});
    if (p.d <= 256) return go(std::integral_constant<int, 8>{});
    return go(std::integral_constant<int, kBwdMaxLanes>{});
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseAttentionBwdCuda, sparse_attention_bwd_cuda,
                              sparse_attention_bwd_signature(bind_stream_and_scratch()));
JAX_HETERO_REGISTER_GRAPH_SAFE("sparse_attention_bwd", SparseAttentionBwdCuda);

}  // namespace jax_hetero
