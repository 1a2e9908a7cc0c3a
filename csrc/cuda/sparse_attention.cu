// CUDA handler for sparse_attention: decode attention of each query head over the tokens of
// its KV head's selected blocks.
//
// bfloat16/float16 with head dim 64 or 128 (group <= 8): tensor-core kernel.  One CTA of 4
// warps per (sequence, KV head, split of the selected tokens).  The CTA first lists the valid
// token positions of its split in shared memory (duplicates dropped with a hash table of
// first slots, -1 slots and tokens >= length skipped), then every warp streams tiles of 16 of
// those tokens through its own 3-stage cp.async ring: S = Q_group K^T and O += P V with
// mma.sync m16n8k16 (the group's query heads are the M rows, padded to 16), online softmax
// in base 2.  Warps, then splits (merge kernel), are combined with the log-sum-exp rule.
//
// float32, other head dims (any d <= 256) or groups: the warp kernel (every warp streams tokens,
// K and V rows read once for all query heads of the group, shuffle dot products).
#include <algorithm>
#include <climits>
#include <cstdlib>
#include <cstring>

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

// Loads this lane's `count` (< N) in-row elements one by one and zeroes the rest: head dims
// that are not a multiple of 32 leave the last lanes partly or wholly outside the row.
template <class T, int N>
__device__ __forceinline__ void load_row_part(const T* src, float* out, int count) {
#pragma unroll
  for (int i = 0; i < N; ++i) out[i] = i < count ? to_f32(src[i]) : 0.f;
}

// Vector loads only when d == 32 N: other head dims leave rows unaligned for them.
template <class T, int N>
__device__ __forceinline__ void load_lane(const T* src, float* out, int count, bool whole_rows) {
  if (whole_rows) load_row<T, N>(src, out);
  else load_row_part<T, N>(src, out, count);
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
  // Lane l holds elements [l * DPL, l * DPL + DPL) of a row; `mine` of them are inside it.
  const int mine = max(0, min(DPL, p.d - lane * DPL));
  const bool whole = p.d == 32 * DPL;
  float qv[G][DPL], acc[G][DPL], m[G], l[G];
#pragma unroll
  for (int h = 0; h < G; ++h) {
    m[h] = -INFINITY;
    l[h] = 0.f;
#pragma unroll
    for (int i = 0; i < DPL; ++i) acc[h][i] = 0.f, qv[h][i] = 0.f;
    if (h < p.group) load_lane<T, DPL>(q + (row * p.hq + head_kv * p.group + h) * p.d + lane * DPL, qv[h], mine, whole);
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
        load_lane<T, DPL>(kbase + pos * row_stride, kf[u], mine, whole);
        load_lane<T, DPL>(vbase + pos * row_stride, vf[u], mine, whole);
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
    for (int i = 0; i < DPL; ++i)
      if (i < mine) s_acc[(warp * p.group + h) * p.d + lane * DPL + i] = acc[h][i];
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
ffi::Error run_attention(cudaStream_t stream, DeviceScratch& scratch, const void* q, const void* k,
                         const void* v, const int32_t* bi, const int32_t* lengths, void* out, int64_t rows,
                         AttnParams p, const DeviceInfo& dev) {
  const char* op = "sparse_attention";
  const int64_t pairs = rows * p.hkv;
  // Enough CTAs to fill the GPU a few times over; at least 256 tokens per split.
  const int64_t want = (4 * int64_t(dev.sms) + pairs - 1) / pairs;
  const int64_t most = std::max<int64_t>(1, int64_t(p.kb) * p.block_size / 256);
  p.splits = int(std::max<int64_t>(1, std::min<int64_t>({want, most, int64_t(p.kb)})));
  p.splits = std::max(p.splits, (p.kb + kMaxSlots - 1) / kMaxSlots);  // at most kMaxSlots slots per split
  p.slots_per_split = (p.kb + p.splits - 1) / p.splits;
  p.splits = (p.kb + p.slots_per_split - 1) / p.slots_per_split;
  if (p.slots_per_split > kMaxSlots) return op_error(op, "more than ", kMaxSlots, " slots per split");
  ScratchArena arena;
  const size_t partial_bytes = size_t(rows) * p.hq * p.splits * (p.d + 2) * 4;
  if (p.splits > 1) arena.reserve(partial_bytes);
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
  p.partial = p.splits > 1 ? arena.take<float>(partial_bytes) : nullptr;
  const size_t smem = size_t(kAttnWarps) * p.group * p.d * 4;
  auto kernel = p.group <= 4 ? attention_kernel<T, DPL, 4> : attention_kernel<T, DPL, kMaxGroup>;
  JH_CUDA_CHECK(op, allow_smem(kernel, smem));
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

// ---------------------------------------------------------------------------------------
// Tensor-core kernel (bfloat16 / float16, head dim 64 or 128, up to 8 query heads per KV head)
//
// Fragments of mma.sync m16n8k16 (row.col, f32 accumulation), lane = 4 * g + qd:
//   A (16x16): reg0 = A[g][2qd, 2qd+1], reg1 = A[g+8][2qd..], reg2 = A[g][2qd+8, 2qd+9], reg3 = A[g+8][2qd+8..]
//   B (16x8):  reg0 = B[2qd, 2qd+1][g], reg1 = B[2qd+8, 2qd+9][g]
//   C (16x8):  c0, c1 = C[g][2qd, 2qd+1], c2, c3 = C[g+8][2qd, 2qd+1]
// (lower index in the low 16 bits of a register).  M rows are the group's query heads (rows
// 8..15 are zero, their outputs dropped).
//   S = Q K^T per 8-token half nt of a 16-token tile: k runs over the head dims in a
//   permuted order (sums over k are order free): thread (g, qd) holds K chunk c = qd + 4j
//   (8 dims, 16 bytes) of token 8 nt + g; words (x, y) feed one k-step, (z, w) the next, and
//   q is read with the same permutation.  C: S[head g][token 8 nt + 2qd + e].
//   O += P V: A = P (its C layout is A's layout: tokens 2qd.. in reg0, 2qd+8.. in reg2), B = V
//   with n = 8 dims: thread (g, qd) holds chunks g + 8h of tokens 2qd, 2qd+1, 2qd+8, 2qd+9 and
//   pairs the same element of two tokens with a byte permute.  n-tile jd, column n is dim
//   8 n + 64 (jd / 8) + jd % 8.
// ---------------------------------------------------------------------------------------
constexpr int kMmaWarps = 4;
constexpr int kMmaThreads = kMmaWarps * 32;
constexpr int kStages = 3;            // cp.async ring depth per warp
constexpr int kTile = 16;             // tokens per warp step
constexpr int kMaxSplitTokens = 2048; // flattened (slot, offset) tokens per CTA
constexpr int kMinSplitTokens = 256;
constexpr int kPosBytes = kMaxSplitTokens * 4;
constexpr int kBlkEntries = kMaxSplitTokens + 4;  // slots a split can touch (+ padding)

template <int D>
struct MmaShape {
  static constexpr int kJ = D / 32;                  // K chunks per key row and thread (2 rows)
  static constexpr int kVC = D / 64;                 // V chunks per value row and thread (4 rows)
  static constexpr int kChunks = 2 * kJ + 4 * kVC;   // 16-byte chunks per thread per tile
  static constexpr int kNT = D / 8;                  // n-tiles of O
  static constexpr int kStageBytes = kChunks * 32 * 16;
  static constexpr int kWarpBytes = kStages * kStageBytes;
  static constexpr int kPipeBytes = kMmaWarps * kWarpBytes;
};

struct MmaParams {
  int64_t n;
  int hq, hkv, group, kb, block_size;
  int splits, split_tokens;
  int cap_log2;  // dedup hash table of 2^cap_log2 entries; 0: linear scan of the earlier slots
  float scale_log2;
  float* partial;  // [rows, hq, splits, d + 2] (m, l, acc) when splits > 1
};

// D = A * B + D for the rows 0..7 of A (rows 8..15 zero); d0, d1 are C[g][2qd, 2qd+1].
template <class T>
__device__ __forceinline__ void mma_rows8(float& d0, float& d1, uint32_t a0, uint32_t a2, uint32_t b0, uint32_t b1) {
  float z0, z1;
  if constexpr (std::is_same_v<T, bfloat16_bits>) {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%10,%11};"
        : "+f"(d0), "+f"(d1), "=f"(z0), "=f"(z1)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.f), "f"(0.f));
  } else {
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%10,%11};"
        : "+f"(d0), "+f"(d1), "=f"(z0), "=f"(z1)
        : "r"(a0), "r"(0u), "r"(a2), "r"(0u), "r"(b0), "r"(b1), "f"(0.f), "f"(0.f));
  }
}

template <class T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  uint32_t r;
  if constexpr (std::is_same_v<T, bfloat16_bits>) {
    const __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);  // .x (low half) = lo
    memcpy(&r, &v, 4);
  } else {
    const __half2 v = __floats2half2_rn(lo, hi);
    memcpy(&r, &v, 4);
  }
  return r;
}

// Element el (0..7) of chunk a in the low half, the same element of chunk b in the high half.
__device__ __forceinline__ uint32_t pair_of(const uint32_t (&a)[4], const uint32_t (&b)[4], int el) {
  return __byte_perm(a[el >> 1], b[el >> 1], (el & 1) ? 0x7632 : 0x5410);
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool ok) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(ok ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory"); }

__device__ __forceinline__ uint32_t dedup_hash(int b, int cap_log2) {
  return (uint32_t(b) * 2654435761u) >> (32 - cap_log2);
}

template <class T, int D>
__global__ void __launch_bounds__(kMmaThreads, 2)
attention_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                     const int32_t* __restrict__ block_indices, const int32_t* __restrict__ lengths,
                     T* __restrict__ out, const MmaParams p) {
  using S = MmaShape<D>;
  extern __shared__ __align__(128) unsigned char smem[];
  int* s_pos = reinterpret_cast<int*>(smem);  // valid token positions of this split, in order
  unsigned char* pipe = smem + kPosBytes;     // per-warp cp.async rings (prologue: scratch)
  __shared__ float s_m[kMmaWarps][8], s_l[kMmaWarps][8];
  __shared__ int s_count[kMmaWarps];

  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, qd = lane & 3;
  const int split = int(blockIdx.x % unsigned(p.splits));
  const int64_t pair = blockIdx.x / unsigned(p.splits);  // (row, kv head)
  const int64_t row = pair / p.hkv;
  const int head_kv = int(pair % p.hkv);
  const int bs = p.block_size;
  const int64_t t0 = int64_t(split) * p.split_tokens;  // first flattened (slot, offset) token
  const int len = int(min64(int64_t(p.kb) * bs - t0, p.split_tokens));  // >= 1
  const int64_t limit = min64(max64(lengths[row], 0), p.n);
  const int32_t* slots = block_indices + pair * p.kb;
  const int sa = int(t0 / bs), sb = int((t0 + len - 1) / bs);  // slots touched: [sa, sb]
  const int ns = sb - sa + 1;

  // 1. The block of each touched slot, or -1 (unused slot, or the block of an earlier slot).
  int* blk = reinterpret_cast<int*>(pipe);
  if (p.cap_log2 > 0) {
    const int cap = 1 << p.cap_log2, mask = cap - 1;
    int* keys = blk + kBlkEntries;
    int* first = keys + cap;  // lowest slot holding the block
    for (int i = tid; i < cap; i += kMmaThreads) keys[i] = -1, first[i] = INT_MAX;
    __syncthreads();
    for (int s = tid; s <= sb; s += kMmaThreads) {
      const int b = slots[s];
      if (b < 0) continue;
      for (uint32_t h = dedup_hash(b, p.cap_log2);; h = (h + 1) & mask) {
        const int prev = atomicCAS(&keys[h], -1, b);
        if (prev == -1 || prev == b) {
          atomicMin(&first[h], s);
          break;
        }
      }
    }
    __syncthreads();
    for (int i = tid; i < ns; i += kMmaThreads) {
      const int s = sa + i, b = slots[s];
      int keep = -1;
      if (b >= 0) {
        uint32_t h = dedup_hash(b, p.cap_log2);
        while (keys[h] != b) h = (h + 1) & mask;
        if (first[h] == s) keep = b;
      }
      blk[i] = keep;
    }
  } else {
    for (int i = tid; i < ns; i += kMmaThreads) {
      const int s = sa + i;
      int b = slots[s];
      for (int e = 0; e < s && b >= 0; ++e)
        if (slots[e] == b) b = -1;
      blk[i] = b;
    }
  }
  __syncthreads();

  // 2. Compact the valid tokens of [t0, t0 + len) into s_pos (slot order, then offset).
  const int r0 = int(t0 - int64_t(sa) * bs);  // offset of t0 in slot sa
  int count = 0;
  for (int base = 0; base < len; base += kMmaThreads) {
    const int t = base + tid;
    bool ok = false;
    int pos = 0;
    if (t < len) {
      const int r = r0 + t, si = r / bs, off = r - si * bs;
      const int b = blk[si];
      const int64_t at = int64_t(b) * bs + off;
      ok = b >= 0 && at < limit;
      pos = int(at);
    }
    const unsigned ballot = __ballot_sync(~0u, ok);
    if (lane == 0) s_count[warp] = __popc(ballot);
    __syncthreads();
    int before = count;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) {
      const int c = s_count[w];
      if (w < warp) before += c;
      count += c;
    }
    if (ok) s_pos[before + __popc(ballot & ((1u << lane) - 1))] = pos;
    __syncthreads();
  }

  // 3. Every warp streams tiles warp, warp + 4, ... of the compacted tokens.
  const int tiles = (count + kTile - 1) / kTile;
  const int mine = warp < tiles ? (tiles - 1 - warp) / kMmaWarps + 1 : 0;
  const int64_t tok_stride = int64_t(p.hkv) * D;
  const T* kbase = k + (row * p.n * p.hkv + head_kv) * int64_t(D);
  const T* vbase = v + (row * p.n * p.hkv + head_kv) * int64_t(D);
  unsigned char* wpipe = pipe + warp * S::kWarpBytes;
  const uint32_t wpipe_s = uint32_t(__cvta_generic_to_shared(wpipe)) + lane * 16;

  uint32_t qa[S::kJ][4];  // q of head g, chunks qd + 4j (the K permutation); 0 past the group
  {
    const T* qrow = q + ((row * p.hq) + head_kv * p.group + g) * int64_t(D) + 8 * qd;
#pragma unroll
    for (int j = 0; j < S::kJ; ++j) {
      uint4 c = make_uint4(0, 0, 0, 0);
      if (g < p.group) c = __ldg(reinterpret_cast<const uint4*>(qrow + 32 * j));
      qa[j][0] = c.x, qa[j][1] = c.y, qa[j][2] = c.z, qa[j][3] = c.w;
    }
  }
  float acc[S::kNT][2];
#pragma unroll
  for (int jd = 0; jd < S::kNT; ++jd) acc[jd][0] = acc[jd][1] = 0.f;
  float m = -INFINITY, l = 0.f;

  auto issue = [&](int i) {  // this warp's tile i into stage i % kStages
    const int base = (warp + i * kMmaWarps) * kTile;
    const uint32_t dst = wpipe_s + (i % kStages) * S::kStageBytes;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
      const int tok = base + 8 * nt + g;
      const bool ok = tok < count;
      const T* src = kbase + (ok ? s_pos[tok] : 0) * tok_stride + 8 * qd;
#pragma unroll
      for (int j = 0; j < S::kJ; ++j) cp_async16(dst + (nt * S::kJ + j) * 512, src + 32 * j, ok);
    }
#pragma unroll
    for (int ri = 0; ri < 4; ++ri) {
      const int tok = base + 2 * qd + (ri & 1) + 8 * (ri >> 1);
      const bool ok = tok < count;
      const T* src = vbase + (ok ? s_pos[tok] : 0) * tok_stride + 8 * g;
#pragma unroll
      for (int h = 0; h < S::kVC; ++h) cp_async16(dst + (2 * S::kJ + ri * S::kVC + h) * 512, src + 64 * h, ok);
    }
  };

#pragma unroll
  for (int i = 0; i < kStages - 1; ++i) {
    if (i < mine) issue(i);
    cp_async_commit();
  }
  for (int i = 0; i < mine; ++i) {
    if (i + kStages - 1 < mine) issue(i + kStages - 1);  // into the stage consumed at i - 1
    cp_async_commit();
    cp_async_wait<kStages - 1>();  // this thread's copies of tile i have landed
    const unsigned char* sbuf = wpipe + (i % kStages) * S::kStageBytes + lane * 16;
    auto chunk = [&](int c, uint32_t (&w)[4]) {
      const uint4 x = *reinterpret_cast<const uint4*>(sbuf + c * 512);
      w[0] = x.x, w[1] = x.y, w[2] = x.z, w[3] = x.w;
    };
    const int base = (warp + i * kMmaWarps) * kTile;

    // S = Q K^T for the tile's two 8-token halves.
    float s[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
    for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
      for (int j = 0; j < S::kJ; ++j) {
        uint32_t kc[4];
        chunk(nt * S::kJ + j, kc);
        mma_rows8<T>(s[nt][0], s[nt][1], qa[j][0], qa[j][1], kc[0], kc[1]);
        mma_rows8<T>(s[nt][0], s[nt][1], qa[j][2], qa[j][3], kc[2], kc[3]);
      }
    }
    // Online softmax of head g over tokens base + 8 nt + 2 qd + e (base 2).
    float x[2][2], top = -INFINITY;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) {
        const bool ok = base + 8 * nt + 2 * qd + e < count;
        x[nt][e] = ok ? s[nt][e] * p.scale_log2 : -INFINITY;
        top = fmaxf(top, x[nt][e]);
      }
    top = fmaxf(top, __shfl_xor_sync(~0u, top, 1));
    top = fmaxf(top, __shfl_xor_sync(~0u, top, 2));
    const float m_new = fmaxf(m, top);
    const float shift = m_new == -INFINITY ? 0.f : m_new;  // as the reference: all -inf shifts by 0
    const float corr = exp2f(m - shift);
    float pr[2][2], sum = 0.f;
#pragma unroll
    for (int nt = 0; nt < 2; ++nt)
#pragma unroll
      for (int e = 0; e < 2; ++e) pr[nt][e] = exp2f(x[nt][e] - shift), sum += pr[nt][e];
    l = l * corr + sum;
    m = m_new;
    const uint32_t pa0 = pack2<T>(pr[0][0], pr[0][1]), pa2 = pack2<T>(pr[1][0], pr[1][1]);
    // O += P V.
    uint32_t vr[4][S::kVC][4];
#pragma unroll
    for (int ri = 0; ri < 4; ++ri)
#pragma unroll
      for (int h = 0; h < S::kVC; ++h) chunk(2 * S::kJ + ri * S::kVC + h, vr[ri][h]);
#pragma unroll
    for (int jd = 0; jd < S::kNT; ++jd) {
      const int h = jd / 8, el = jd % 8;
      acc[jd][0] *= corr;
      acc[jd][1] *= corr;
      mma_rows8<T>(acc[jd][0], acc[jd][1], pa0, pa2, pair_of(vr[0][h], vr[1][h], el), pair_of(vr[2][h], vr[3][h], el));
    }
  }
  cp_async_wait<0>();
  __syncwarp();

  // Combine the warps (each one's state in its own ring), then write the output (one split)
  // or this split's partial state.
  l += __shfl_xor_sync(~0u, l, 1);
  l += __shfl_xor_sync(~0u, l, 2);
  float* wacc = reinterpret_cast<float*>(wpipe);  // [group][D]
  if (g < p.group) {
    if (qd == 0) s_m[warp][g] = m, s_l[warp][g] = l;
#pragma unroll
    for (int jd = 0; jd < S::kNT; ++jd)
#pragma unroll
      for (int e = 0; e < 2; ++e) wacc[g * D + 8 * (2 * qd + e) + 64 * (jd / 8) + jd % 8] = acc[jd][e];
  }
  __syncthreads();
  for (int e = tid; e < p.group * D; e += kMmaThreads) {
    const int h = e / D, dim = e % D;
    float top = -INFINITY;
#pragma unroll
    for (int w = 0; w < kMmaWarps; ++w) top = fmaxf(top, s_m[w][h]);
    float total = 0.f, sum = 0.f;
    if (top != -INFINITY) {
#pragma unroll
      for (int w = 0; w < kMmaWarps; ++w) {
        const float f = exp2f(s_m[w][h] - top);
        total += s_l[w][h] * f;
        sum += reinterpret_cast<const float*>(pipe + w * S::kWarpBytes)[h * D + dim] * f;
      }
    }
    const int64_t head = row * p.hq + head_kv * p.group + h;
    if (p.splits == 1) {
      out[head * D + dim] = from_f32<T>(total > 0.f ? sum / total : 0.f);
    } else {
      float* part = p.partial + (head * p.splits + split) * (D + 2);
      part[2 + dim] = sum;
      if (dim == 0) part[0] = top, part[1] = total;
    }
  }
}

// Splits per (sequence, KV head) for the tensor-core kernel: a wave model where every CTA of
// a wave costs its tokens plus a fixed start-up, `resident` CTAs run at once, and a merge pass
// costs a little.
inline void choose_splits(int64_t pairs, int64_t total, int64_t resident, int* splits, int* split_tokens) {
  resident = std::max<int64_t>(resident, 1);
  const int64_t lo = (total + kMaxSplitTokens - 1) / kMaxSplitTokens;
  const int64_t hi = std::min(std::max(lo, (total + kMinSplitTokens - 1) / kMinSplitTokens), lo + 512);
  double best = 0;
  for (int64_t s = lo; s <= hi; ++s) {
    const int64_t ts = std::min<int64_t>(kMaxSplitTokens, ((total + s - 1) / s + kTile - 1) / kTile * kTile);
    const int64_t se = (total + ts - 1) / ts;
    const int64_t waves = (pairs * se + resident - 1) / resident;
    const double cost = double(waves) * double(ts + 192) + (se > 1 ? 96.0 : 0.0);
    if (s == lo || cost < best) best = cost, *splits = int(se), *split_tokens = int(ts);
  }
}

template <class T, int D>
ffi::Error run_attention_mma(cudaStream_t stream, DeviceScratch& scratch, const void* q, const void* k,
                             const void* v, const int32_t* bi, const int32_t* lengths, void* out, int64_t rows,
                             const AttnParams& ap, const DeviceInfo& dev) {
  using S = MmaShape<D>;
  const char* op = "sparse_attention";
  MmaParams p{};
  p.n = ap.n;
  p.hq = ap.hq;
  p.hkv = ap.hkv;
  p.group = ap.group;
  p.kb = ap.kb;
  p.block_size = ap.block_size;
  p.scale_log2 = ap.scale_log2;
  // Dedup hash table (at least twice the slots) in the ring memory next to the slot blocks.
  for (int lg = 4; lg < 31; ++lg) {
    const int64_t cap = int64_t(1) << lg;
    if (cap < 2 * int64_t(p.kb)) continue;
    if (4 * (kBlkEntries + 2 * cap) <= S::kPipeBytes) p.cap_log2 = lg;
    break;
  }
  const size_t smem = size_t(kPosBytes) + S::kPipeBytes;
  auto kernel = attention_mma_kernel<T, D>;
  JH_CUDA_CHECK(op, allow_smem(kernel, smem));
  const int occupancy = remembered(dev.device, int64_t(smem), [&] {  // 0: the query failed
    int blocks = 0;
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, kernel, kMmaThreads, smem) != cudaSuccess) {
      cudaGetLastError();  // so a later check does not report it again
      return 0;
    }
    return std::max(blocks, 1);
  });
  if (occupancy == 0) return op_error(op, "CUDA occupancy query for the attention kernel failed");
  const int64_t pairs = rows * p.hkv;
  const int64_t total = int64_t(p.kb) * p.block_size;
  // choose_splits picks at most lo + 512 splits (lo = total / kMaxSplitTokens, rounded up) and
  // narrows them to int: a count that could wrap is refused before (the grid check below is
  // exact once it fits).
  if ((total + kMaxSplitTokens - 1) / kMaxSplitTokens > INT_MAX - 512)
    return op_error(op, "too many tokens per (sequence, KV head): ", total);
  choose_splits(pairs, total, int64_t(occupancy) * dev.sms, &p.splits, &p.split_tokens);
  if (pairs * p.splits > INT_MAX) return op_error(op, "too many (sequence, KV head, split) blocks: ", pairs * p.splits);
  ScratchArena arena;
  const size_t partial_bytes = size_t(rows) * p.hq * p.splits * (D + 2) * 4;
  if (p.splits > 1) arena.reserve(partial_bytes);
  JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
  p.partial = p.splits > 1 ? arena.take<float>(partial_bytes) : nullptr;
  kernel<<<unsigned(pairs * p.splits), kMmaThreads, smem, stream>>>(
      static_cast<const T*>(q), static_cast<const T*>(k), static_cast<const T*>(v), bi, lengths,
      static_cast<T*>(out), p);
  JH_CUDA_CHECK(op, cudaGetLastError());
  if (p.splits > 1) {
    merge_splits_kernel<T><<<unsigned(rows * p.hq), 128, 0, stream>>>(p.partial, static_cast<T*>(out), rows * p.hq,
                                                                      p.splits, D);
    JH_CUDA_CHECK(op, cudaGetLastError());
  }
  return ffi::Error::Success();
}

// The tensor-core kernel takes this call unless JAX_HETERO_CUDA_ATTENTION=warp forces the
// warp kernel (for comparisons).
inline bool mma_kernel_allowed() {
  const char* env = std::getenv("JAX_HETERO_CUDA_ATTENTION");
  return env == nullptr || std::strcmp(env, "warp") != 0;
}

ffi::Error sparse_attention_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer q,
                                 ffi::AnyBuffer k, ffi::AnyBuffer v, ffi::Buffer<ffi::S32> block_indices,
                                 ffi::Buffer<ffi::S32> lengths, ffi::Result<ffi::AnyBuffer> out,
                                 int64_t block_size, float scale, bool check_indices) {
  const char* op = "sparse_attention";
  if (q.dimensions().size() < 2 || k.dimensions().size() < 3 || block_indices.dimensions().size() < 2)
    return op_error(op, "expected q [b, hq, d], k/v [b, n, hkv, d], block_indices [b, hkv, kb]");
  const int64_t rows = leading_size(q, 2);
  AttnParams p{};
  p.hq = int(dim_from_end(q, 1));
  p.d = int(dim_from_end(q, 0));
  p.n = dim_from_end(k, 2);
  p.hkv = int(dim_from_end(k, 1));
  p.kb = int(dim_from_end(block_indices, 0));
  if (dim_from_end(k, 0) != p.d || leading_size(k, 3) != rows || k.element_count() != v.element_count())
    return op_error(op, "k and v must be [b, n, hkv, d] with q's batch and head dim");
  if (p.hkv < 1 || p.hq % p.hkv) return op_error(op, "hq=", p.hq, " must be a multiple of hkv=", p.hkv);
  p.group = p.hq / p.hkv;
  if (p.group > kMaxGroup) return op_error(op, "at most ", kMaxGroup, " query heads per KV head, got ", p.group);
  if (dim_from_end(block_indices, 1) != p.hkv || leading_size(block_indices, 2) != rows)
    return op_error(op, "block_indices must be [b, hkv, kb]");
  if (lengths.element_count() != size_t(rows)) return op_error(op, "lengths must have one entry per sequence");
  if (block_size < 1) return op_error(op, "block_size must be >= 1");
  // A block longer than k only has its first n tokens (only block 0 is in range, and blocks
  // >= 1 start at or past n either way): the same tokens with block_size min(block_size, n),
  // which keeps the kernels' int block size exact and their token count small.
  const int64_t kernel_block_size = std::min<int64_t>(block_size, std::max<int64_t>(p.n, 1));
  if (kernel_block_size > INT_MAX) return op_error(op, "block_size=", block_size, " is too large");
  p.block_size = int(kernel_block_size);
  if (q.element_type() != k.element_type() || q.element_type() != v.element_type())
    return op_error(op, "q, k and v must share a dtype");
  if (rows == 0 || p.hq == 0 || p.d == 0) return ffi::Error::Success();
  if (p.d > 256) return op_error(op, "head dim d=", p.d, " is not supported by the CUDA kernel (at most 256)");
  p.scale_log2 = scale * 1.4426950408889634f;
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(op, stream, &dev));
  DeviceScratch scratch{*site, dev.device};
  if (p.kb == 0) {  // nothing selected: zeros
    JH_CUDA_CHECK(op, cudaMemsetAsync(out->untyped_data(), 0, out->size_bytes(), stream));
    return ffi::Error::Success();
  }
  const bool mma_shape = (p.d == 64 || p.d == 128) && p.block_size <= (1 << 30) && p.n <= INT_MAX &&
                         mma_kernel_allowed();
  // Both kernels skip blocks outside [0, nb); the check turns them into an error.
  const int64_t nb = (p.n + block_size - 1) / block_size;
  int* index_flag = nullptr;
  if (check_indices)
    JH_RETURN_IF_ERROR(queue_index_check(op, stream, scratch, block_indices.typed_data(),
                                         int64_t(block_indices.element_count()), nb, dev.sms, &index_flag));
  JH_RETURN_IF_ERROR(dispatch_float(op, "q", q.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    if constexpr (!std::is_same_v<T, float>) {
      if (mma_shape) {
        auto mma = [&](auto dim) {
          return run_attention_mma<T, decltype(dim)::value>(stream, scratch, q.untyped_data(), k.untyped_data(),
                                                            v.untyped_data(), block_indices.typed_data(),
                                                            lengths.typed_data(), out->untyped_data(), rows, p, dev);
        };
        if (p.d == 128) return mma(std::integral_constant<int, 128>{});
        return mma(std::integral_constant<int, 64>{});
      }
    }
    auto go = [&](auto dpl) {
      return run_attention<T, decltype(dpl)::value>(stream, scratch, q.untyped_data(), k.untyped_data(),
                                                    v.untyped_data(), block_indices.typed_data(),
                                                    lengths.typed_data(), out->untyped_data(), rows, p, dev);
    };
    const int per_lane = (p.d + 31) / 32;  // elements a lane holds: 1, 2, 4 or 8
    if (per_lane == 1) return go(std::integral_constant<int, 1>{});
    if (per_lane == 2) return go(std::integral_constant<int, 2>{});
    if (per_lane <= 4) return go(std::integral_constant<int, 4>{});
    return go(std::integral_constant<int, 8>{});
  }));
  if (!check_indices) return ffi::Error::Success();
  return read_index_check(op, stream, index_flag, "block_indices", nb,
                          "k has " + std::to_string(nb) + " blocks of " + std::to_string(block_size) + " tokens");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(SparseAttentionCuda, sparse_attention_cuda,
                              sparse_attention_signature(bind_stream_and_scratch()));
JAX_HETERO_REGISTER("sparse_attention", SparseAttentionCuda);
// Called with check_indices=false only: no host synchronisation, so XLA may trace it.
JAX_HETERO_REGISTER_GRAPH_SAFE("sparse_attention_unchecked", SparseAttentionCuda);

}  // namespace jax_hetero
