// CPU handler for topk: rows in parallel; a long row is split into chunks that share one
// sampled threshold, so one decode row also uses every core (and a late thread delays it
// by one small chunk only).
#include <algorithm>
#include <vector>

#include "common/ffi_util.h"
#include "common/parallel.h"
#include "common/registry.h"
#include "common/topk_select.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

// Below this many entries per chunk, splitting a row costs more than it saves.
constexpr int64_t kMinChunk = 1 << 16;
// Chunks per thread for split rows: dynamic scheduling then evens out uneven progress.
constexpr int64_t kChunksPerThread = 4;

template <class T>
void topk_rows(const T* scores, const int32_t* lengths, int64_t rows, int64_t n, int64_t k,
               T* values, int32_t* indices) {
  if (rows == 0) return;
  const int64_t threads = ThreadPool::instance().num_threads();
  const int64_t chunks_per_row =
      rows >= threads ? 1
                      : std::max<int64_t>(1, std::min(kChunksPerThread * threads / rows, n / kMinChunk));
  auto valid_count = [&](int64_t row) { return std::clamp<int64_t>(lengths[row], 0, n); };
  if (chunks_per_row == 1) {
    parallel_for(rows, [&](int64_t row) {
      thread_local std::vector<uint64_t> cands;
      cands.clear();
      const T* x = scores + row * n;
      select_row(x, 0, valid_count(row), k, cands);
      write_packed(cands.data(), int64_t(cands.size()), k, false, x, values + row * k, indices + row * k);
    });
    return;
  }
  // Chunks keep only entries reaching their row's sampled threshold, so together they hold
  // little more than k candidates however many chunks there are.
  std::vector<uint32_t> admit(rows);
  for (int64_t row = 0; row < rows; ++row) admit[row] = sample_admit(scores + row * n, 0, valid_count(row), k);
  std::vector<std::vector<uint64_t>> partial(rows * chunks_per_row);
  parallel_for(rows * chunks_per_row, [&](int64_t task) {
    const int64_t row = task / chunks_per_row, chunk = task % chunks_per_row;
    const int64_t valid = valid_count(row);
    select_packed(scores + row * n, valid * chunk / chunks_per_row, valid * (chunk + 1) / chunks_per_row,
                  k, partial[task], admit[row]);
  });
  parallel_for(rows, [&](int64_t row) {
    std::vector<uint64_t> merged;
    for (int64_t c = 0; c < chunks_per_row; ++c) {
      const auto& part = partial[row * chunks_per_row + c];
      merged.insert(merged.end(), part.begin(), part.end());
    }
    const T* x = scores + row * n;
    const int64_t valid = valid_count(row);
    if (admit[row] != 0 && int64_t(merged.size()) < std::min(k, valid)) {
      merged.clear();  // the sample overestimated the threshold: a full pass instead
      select_packed(x, 0, valid, k, merged);
    }
    write_packed(merged.data(), int64_t(merged.size()), k, false, x, values + row * k, indices + row * k);
  });
}

ffi::Error topk_cpu(ffi::AnyBuffer scores, ffi::Buffer<ffi::S32> lengths,
                    ffi::Result<ffi::AnyBuffer> values, ffi::Result<ffi::Buffer<ffi::S32>> indices,
                    int64_t k) {
  const int64_t n = dim_from_end(scores, 0);
  const int64_t rows = leading_size(scores, 1);
  if (k < 1 || k > n) return op_error("topk", "k=", k, " must satisfy 1 <= k <= n=", n);
  if (lengths.element_count() != size_t(rows))
    return op_error("topk", "lengths has ", lengths.element_count(), " entries, expected ", rows);
  if (n > INT32_MAX) return op_error("topk", "rows longer than 2^31-1 entries are not supported");
  return dispatch_float("topk", "scores", scores.element_type(), [&](auto tag) {
    using T = decltype(tag);
    topk_rows(reinterpret_cast<const T*>(scores.untyped_data()), lengths.typed_data(), rows, n, k,
              reinterpret_cast<T*>(values->untyped_data()), indices->typed_data());
    return ffi::Error::Success();
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(TopkCpu, topk_cpu, topk_signature(ffi::Ffi::Bind()));
JAX_HETERO_REGISTER("topk", TopkCpu);

}  // namespace jax_hetero
