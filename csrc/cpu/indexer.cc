// CPU handlers for indexer_{dot,quest,dsa}: fused scoring and top-k.  Scores exist only one
// tile at a time (common/score_driver.h), computed by the same code as the relevancy handlers,
// so the result equals topk(relevancy(...)) of this backend exactly.
#include "common/ffi_util.h"
#include "common/registry.h"
#include "common/relevancy_args.h"
#include "common/score_driver.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr const char* kOp = "indexer";

template <class Scorer>
ffi::Error select_top(const Scorer& scorer, const int32_t* valid, int64_t k,
                      ffi::Result<ffi::Buffer<ffi::F32>> values, ffi::Result<ffi::Buffer<ffi::S32>> indices) {
  const int64_t entries = scorer.entries(), rows = scorer.rows();
  if (k < 1 || k > entries) return op_error(kOp, "k=", k, " must satisfy 1 <= k <= ", entries, " (memory entries)");
  if (entries > INT32_MAX) return op_error(kOp, "more than 2^31-1 memory entries are not supported");
  if (int64_t(values->element_count()) != rows * k || int64_t(indices->element_count()) != rows * k)
    return op_error(kOp, "outputs must hold ", rows, " rows of k=", k, " entries");
  indexer_rows(scorer, valid, k, values->typed_data(), indices->typed_data());
  return ffi::Error::Success();
}

ffi::Error indexer_dot_cpu(ffi::AnyBuffer q, ffi::AnyBuffer summary, ffi::Buffer<ffi::S32> valid,
                           ffi::Result<ffi::Buffer<ffi::F32>> values,
                           ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  return with_dot_scorer(kOp, q, summary, valid, batch_dims(*values, 2), [&](const auto& s, const int32_t* counts) {
    return select_top(s, counts, k, values, indices);
  });
}

ffi::Error indexer_quest_cpu(ffi::AnyBuffer q, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                             ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> values,
                             ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  return with_quest_scorer(kOp, q, lo, hi, valid, batch_dims(*values, 2), [&](const auto& s, const int32_t* counts) {
    return select_top(s, counts, k, values, indices);
  });
}

ffi::Error indexer_dsa_cpu(ffi::AnyBuffer q, ffi::AnyBuffer keys, ffi::Buffer<ffi::F32> weights,
                           ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> values,
                           ffi::Result<ffi::Buffer<ffi::S32>> indices, int64_t k) {
  return with_dsa_scorer(kOp, q, keys, weights, valid, batch_dims(*values, 1),
                         [&](const auto& s, const int32_t* counts) { return select_top(s, counts, k, values, indices); });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerDotCpu, indexer_dot_cpu,
                              indexer_results(dot_operands(ffi::Ffi::Bind())));
XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerQuestCpu, indexer_quest_cpu,
                              indexer_results(quest_operands(ffi::Ffi::Bind())));
XLA_FFI_DEFINE_HANDLER_SYMBOL(IndexerDsaCpu, indexer_dsa_cpu,
                              indexer_results(dsa_operands(ffi::Ffi::Bind())));
JAX_HETERO_REGISTER("indexer_dot", IndexerDotCpu);
JAX_HETERO_REGISTER("indexer_quest", IndexerQuestCpu);
JAX_HETERO_REGISTER("indexer_dsa", IndexerDsaCpu);

}  // namespace jax_hetero
