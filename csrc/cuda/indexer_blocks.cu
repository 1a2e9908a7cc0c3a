// CUDA handlers for the block kinds of relevancy and indexer: dot (score = (sum of the group's
// query heads) . summary) and quest (score = sum_j sum_d max(q_jd * min_d, q_jd * max_d), the
// Quest/LServe upper bound).  Rows are (batch, KV head); entries are the nb blocks of a row.
//
// One scorer serves both ops: relevancy writes its scores to memory, the indexer hands it to
// the selection of cuda/select.cuh as the first level's loader, so scores exist only as the
// select kernel's shared-memory keys.  Every score is computed by the same device code with
// explicit roundings (fmaf, __fmul_rn, __fadd_rn, a fixed warp reduction), so indexer_<kind>
// equals topk(relevancy_<kind>) of this backend bit for bit.  A warp scores one entry (lanes
// over the feature dim, float32 math): simple rather than fast.
#include "common/registry.h"
#include "common/signatures.h"
#include "cuda/select.cuh"

namespace jax_hetero {
namespace {

constexpr int kBlockCapacity = 1024;  // entries scored per CTA (relevancy) / keys per CTA (indexer)
constexpr int kBlockMaxCluster = 8;   // first-level cluster size cap, as indexer_dsa
constexpr size_t kMaxQueryBytes = 100 * 1024;  // staged query in shared memory

// max that returns NaN when either side is NaN (jnp.maximum; fmaxf would drop the NaN).
__device__ __forceinline__ float nan_max(float a, float b) { return a != a ? a : (a > b ? a : b); }

// Scores entries [begin, begin + len) of row (b, g); emit(i, score) for i in [0, len).
template <class T, bool kQuest>
struct BlockScorer {
  const T* q;                   // [batch, hq, d]
  const T* lo;                  // dot: summary; quest: min.  [batch, nb, hkv, d]
  const T* hi;                  // quest: max; dot: unused
  const int32_t* valid_counts;  // [batch] valid blocks
  int64_t nb;
  int hq, hkv, d;

  __host__ __device__ int group() const { return hq / hkv; }
  // dot: the group-summed query [d]; quest: the group's query heads [group][d]; float32.
  __host__ __device__ size_t extra_bytes() const { return size_t(kQuest ? group() : 1) * size_t(d) * 4; }

  __device__ int64_t valid(int64_t row) const { return min64(max64(valid_counts[row / hkv], 0), nb); }

  __device__ void stage(int64_t row, unsigned char* extra) const {
    float* qs = reinterpret_cast<float*>(extra);
    const int64_t b = row / hkv, g = row % hkv;
    const int grp = group();
    const T* qg = q + (b * hq + g * grp) * int64_t(d);
    if constexpr (kQuest) {
      for (int i = threadIdx.x; i < grp * d; i += blockDim.x) qs[i] = to_f32(qg[i]);
    } else {
      for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float s = 0.f;  // heads in order, as the CPU scorer
        for (int j = 0; j < grp; ++j) s = __fadd_rn(s, to_f32(qg[int64_t(j) * d + i]));
        qs[i] = s;
      }
    }
    __syncthreads();
  }

  // Every thread of the CTA must call this (it synchronises once after staging the query).
  template <class Emit>
  __device__ void score(int64_t row, int64_t begin, int len, unsigned char* extra, Emit& emit) const {
    stage(row, extra);
    const float* qs = reinterpret_cast<const float*>(extra);
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    const int64_t b = row / hkv, g = row % hkv;
    const int grp = group();
    for (int t = warp; t < len; t += warps) {
      const int64_t offset = ((b * nb + begin + t) * hkv + g) * int64_t(d);
      float s = 0.f;
      if constexpr (kQuest) {
        const T* el = lo + offset;
        const T* eh = hi + offset;
        for (int i = lane; i < d; i += 32) {
          const float l = to_f32(el[i]), h = to_f32(eh[i]);
          for (int j = 0; j < grp; ++j) {
            const float qv = qs[j * d + i];
            s = __fadd_rn(s, nan_max(__fmul_rn(qv, l), __fmul_rn(qv, h)));
          }
        }
      } else {
        const T* e = lo + offset;
        for (int i = lane; i < d; i += 32) s = fmaf(qs[i], to_f32(e[i]), s);
      }
      for (int o = 16; o; o >>= 1) s = __fadd_rn(s, __shfl_xor_sync(~0u, s, o));
      if (lane == 0) emit(t, s);
    }
  }
};

struct KeyEmit {  // indexer: the score becomes a selection key (and counts its first digit)
  uint32_t* keys;
  uint32_t* hist;
  __device__ void operator()(int i, float s) const { store_key(keys, i, key_of(s), hist); }
};

struct ScoreEmit {  // relevancy: the score goes to memory
  float* dst;
  __device__ void operator()(int i, float s) const { dst[i] = s; }
};

// indexer: the scorer as the first selection level's loader.
template <class T, bool kQuest>
struct BlockLoader {
  static constexpr bool kHasIdx = false;
  static constexpr bool kTruncated = false;
  static constexpr bool kRowMerge = false;
  using StagedKey = uint32_t;
  static constexpr int kCtasPerSm = kSelectCtasPerSm;
  BlockScorer<T, kQuest> scorer;

  __host__ __device__ size_t extra_bytes() const { return scorer.extra_bytes(); }
  __device__ int64_t valid(int64_t row) const { return scorer.valid(row); }
  __device__ void load(int64_t row, int64_t begin, int len, uint32_t* keys, int32_t*, uint32_t* hist,
                       unsigned char* extra) const {
    KeyEmit emit{keys, hist};
    scorer.score(row, begin, len, extra, emit);
  }
};

// relevancy: CTA c of a row scores entries [c * kBlockCapacity, ...); -inf past the valid count.
template <class T, bool kQuest>
__global__ void __launch_bounds__(kSelectThreads)
block_scores_kernel(const BlockScorer<T, kQuest> scorer, int64_t chunks, float* out) {
  extern __shared__ __align__(16) unsigned char extra[];
  const int64_t row = int64_t(blockIdx.x) / chunks;
  const int64_t begin = (int64_t(blockIdx.x) % chunks) * kBlockCapacity;
  const int span = int(min64(kBlockCapacity, scorer.nb - begin));
  const int len = int(max64(0, min64(begin + span, scorer.valid(row)) - begin));
  float* dst = out + row * scorer.nb + begin;
  for (int i = len + threadIdx.x; i < span; i += blockDim.x) dst[i] = -__int_as_float(0x7f800000);
  ScoreEmit emit{dst};
  scorer.score(row, begin, len, extra, emit);
}

// Valid blocks per selection row (batch, KV head), for the candidate levels of the selection.
__global__ void expand_valid_kernel(const int32_t* valid, int64_t rows, int hkv, int32_t* out) {
  const int64_t r = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r < rows) out[r] = valid[r / hkv];
}

struct BlockArgs {
  int64_t batch = 0, nb = 0;
  int hq = 0, hkv = 0, d = 0;
  int64_t rows() const { return batch * hkv; }
};

bool same_dims(const ffi::AnyBuffer& a, const ffi::AnyBuffer& b) {
  auto x = a.dimensions(), y = b.dimensions();
  if (x.size() != y.size()) return false;
  for (size_t i = 0; i < x.size(); ++i)
    if (x[i] != y[i]) return false;
  return true;
}

// q [B, hq, d], memory [B, nb, hkv, d] (and max of the same shape for quest), valid [B].
ffi::Error block_shapes(const char* op, const ffi::AnyBuffer& q, const ffi::AnyBuffer& lo, const ffi::AnyBuffer* hi,
                        const ffi::Buffer<ffi::S32>& valid, BlockArgs* a) {
  if (q.dimensions().size() < 2) return op_error(op, "q has rank ", q.dimensions().size(), ", expected at least 2");
  if (lo.dimensions().size() < 3)
    return op_error(op, "memory has rank ", lo.dimensions().size(), ", expected at least 3");
  if (q.element_type() != lo.element_type() || (hi && hi->element_type() != q.element_type()))
    return op_error(op, "q and memory must share a dtype");
  if (hi && !same_dims(lo, *hi)) return op_error(op, "memory[1] (max) must have the shape of memory[0] (min)");
  const int64_t batch = leading_size(q, 2), hq = dim_from_end(q, 1), d = dim_from_end(q, 0);
  const int64_t hkv = dim_from_end(lo, 1), nb = dim_from_end(lo, 2);
  if (leading_size(lo, 3) != batch) return op_error(op, "memory has ", leading_size(lo, 3), " batch rows, q has ", batch);
  if (int64_t(valid.element_count()) != batch)
    return op_error(op, "valid counts have ", valid.element_count(), " entries, expected ", batch);
  if (dim_from_end(lo, 0) != d) return op_error(op, "memory feature dim ", dim_from_end(lo, 0), " differs from q's ", d);
  if (hkv < 1 || hq % hkv != 0)
    return op_error(op, "query heads hq=", hq, " must be a multiple of the KV heads hkv=", hkv);
  if (nb > INT32_MAX) return op_error(op, "more than 2^31-1 memory entries are not supported");
  if (hq > INT32_MAX || d > INT32_MAX) return op_error(op, "q of shape [..., ", hq, ", ", d, "] is too large");
  const int64_t query_floats = hi ? hq / hkv * d : d;  // quest stages the group's heads
  if (size_t(query_floats) * 4 > kMaxQueryBytes)
    return op_error(op, "the query of one KV head (", query_floats, " floats) is too large for the CUDA scorer");
  a->batch = batch;
  a->nb = nb;
  a->hq = int(hq);
  a->hkv = int(hkv);
  a->d = int(d);
  return ffi::Error::Success();
}

template <class T, bool kQuest>
BlockScorer<T, kQuest> make_scorer(const ffi::AnyBuffer& q, const ffi::AnyBuffer& lo, const ffi::AnyBuffer* hi,
                                   const ffi::Buffer<ffi::S32>& valid, const BlockArgs& a) {
  return BlockScorer<T, kQuest>{reinterpret_cast<const T*>(q.untyped_data()),
                                reinterpret_cast<const T*>(lo.untyped_data()),
                                hi ? reinterpret_cast<const T*>(hi->untyped_data()) : nullptr,
                                valid.typed_data(), a.nb, a.hq, a.hkv, a.d};
}

template <bool kQuest>
ffi::Error block_relevancy(cudaStream_t stream, const ffi::AnyBuffer& q, const ffi::AnyBuffer& lo,
                           const ffi::AnyBuffer* hi, const ffi::Buffer<ffi::S32>& valid,
                           ffi::Result<ffi::Buffer<ffi::F32>>& scores) {
  const char* op = "relevancy";
  BlockArgs a;
  JH_RETURN_IF_ERROR(block_shapes(op, q, lo, hi, valid, &a));
  if (int64_t(scores->element_count()) != a.rows() * a.nb)
    return op_error(op, "scores have ", scores->element_count(), " elements, expected ", a.rows() * a.nb);
  if (a.rows() == 0 || a.nb == 0) return ffi::Error::Success();
  const int64_t chunks = (a.nb + kBlockCapacity - 1) / kBlockCapacity;
  if (a.rows() * chunks > INT32_MAX) return op_error(op, "too many rows x blocks for one CUDA launch");
  return dispatch_float(op, "q", q.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    const BlockScorer<T, kQuest> scorer = make_scorer<T, kQuest>(q, lo, hi, valid, a);
    const size_t smem = scorer.extra_bytes();
    auto kernel = block_scores_kernel<T, kQuest>;
    JH_CUDA_CHECK(op, allow_smem(kernel, smem));
    kernel<<<unsigned(a.rows() * chunks), kSelectThreads, smem, stream>>>(scorer, chunks, scores->typed_data());
    JH_CUDA_CHECK(op, cudaGetLastError());
    return ffi::Error::Success();
  });
}

template <bool kQuest>
ffi::Error block_indexer(cudaStream_t stream, CallSiteScratch& site, const ffi::AnyBuffer& q,
                         const ffi::AnyBuffer& lo, const ffi::AnyBuffer* hi, const ffi::Buffer<ffi::S32>& valid,
                         ffi::Result<ffi::Buffer<ffi::F32>>& values, ffi::Result<ffi::Buffer<ffi::S32>>& indices,
                         int64_t k) {
  const char* op = "indexer";
  BlockArgs a;
  JH_RETURN_IF_ERROR(block_shapes(op, q, lo, hi, valid, &a));
  if (k < 1 || k > a.nb) return op_error(op, "k=", k, " must satisfy 1 <= k <= ", a.nb, " (memory entries)");
  if (k > kSortCap) return op_error(op, "k=", k, " > ", kSortCap, " is not supported by the CUDA indexer");
  const int64_t rows = a.rows();
  if (int64_t(values->element_count()) != rows * k || int64_t(indices->element_count()) != rows * k)
    return op_error(op, "outputs must hold ", rows, " rows of k=", k, " entries");
  if (rows == 0) return ffi::Error::Success();
  DeviceInfo dev;
  JH_RETURN_IF_ERROR(device_info(op, stream, &dev));
  DeviceScratch scratch{site, dev.device};

  // The candidate levels read the valid count of each selection row: expand [batch] to
  // [batch * hkv] unless they coincide.
  const int32_t* row_valid = valid.typed_data();
  ScratchArena arena;
  if (a.hkv > 1) {
    arena.reserve(size_t(rows) * 4);
    JH_RETURN_IF_ERROR(arena.allocate(op, scratch));
    int32_t* expanded = arena.take<int32_t>(size_t(rows) * 4);
    const int threads = 256;
    const int64_t blocks = (rows + threads - 1) / threads;
    if (blocks > INT32_MAX) return op_error(op, "too many rows for one CUDA launch");
    expand_valid_kernel<<<unsigned(blocks), threads, 0, stream>>>(valid.typed_data(), rows, a.hkv, expanded);
    JH_CUDA_CHECK(op, cudaGetLastError());
    row_valid = expanded;
  }

  return dispatch_float(op, "q", q.element_type(), [&](auto tag) -> ffi::Error {
    using T = decltype(tag);
    const BlockLoader<T, kQuest> loader{make_scorer<T, kQuest>(q, lo, hi, valid, a)};
    const SelectParams p = float32_select_params(k, values->typed_data(), indices->typed_data());
    const LevelPlan plan = plan_level(rows, a.nb, kBlockCapacity, kBlockMaxCluster, kSelectCtasPerSm * dev.sms,
                                      kMinSplitEntries);
    return run_select_levels(op, stream, scratch, loader, plan, kBlockCapacity, row_valid, rows, a.nb, p, dev);
  });
}

ffi::Error relevancy_dot_cuda(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer summary,
                              ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> scores) {
  return block_relevancy<false>(stream, q, summary, nullptr, valid, scores);
}

ffi::Error relevancy_quest_cuda(cudaStream_t stream, ffi::AnyBuffer q, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                                ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> scores) {
  return block_relevancy<true>(stream, q, lo, &hi, valid, scores);
}

ffi::Error indexer_dot_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer q,
                            ffi::AnyBuffer summary, ffi::Buffer<ffi::S32> valid,
                            ffi::Result<ffi::Buffer<ffi::F32>> values, ffi::Result<ffi::Buffer<ffi::S32>> indices,
                            int64_t k) {
  return block_indexer<false>(stream, *site, q, summary, nullptr, valid, values, indices, k);
}

ffi::Error indexer_quest_cuda(cudaStream_t stream, CallSiteScratch* site, ffi::AnyBuffer q,
                              ffi::AnyBuffer lo, ffi::AnyBuffer hi, ffi::Buffer<ffi::S32> valid,
                              ffi::Result<ffi::Buffer<ffi::F32>> values, ffi::Result<ffi::Buffer<ffi::S32>> indices,
                              int64_t k) {
  return block_indexer<true>(stream, *site, q, lo, &hi, valid, values, indices, k);
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelevancyDotCuda, relevancy_dot_cuda,
                              relevancy_result(dot_operands(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>())));
XLA_FFI_DEFINE_HANDLER_SYMBOL(RelevancyQuestCuda, relevancy_quest_cuda,
                              relevancy_result(quest_operands(ffi::Ffi::Bind().Ctx<ffi::PlatformStream<cudaStream_t>>())));
JAX_HETERO_REGISTER_GRAPH_SAFE("relevancy_dot", RelevancyDotCuda);
JAX_HETERO_REGISTER_GRAPH_SAFE("relevancy_quest", RelevancyQuestCuda);

XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerDotCuda, indexer_dot_cuda,
                              indexer_results(dot_operands(bind_stream_and_scratch())));
XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerQuestCuda, indexer_quest_cuda,
                              indexer_results(quest_operands(bind_stream_and_scratch())));
JAX_HETERO_REGISTER_GRAPH_SAFE("indexer_dot", IndexerDotCuda);
JAX_HETERO_REGISTER_GRAPH_SAFE("indexer_quest", IndexerQuestCuda);

}  // namespace jax_hetero
