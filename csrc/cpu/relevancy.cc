// CPU handlers for relevancy_{dot,quest,dsa}: float32 scores of every memory entry; entries
// at or after a row's valid count score -inf.  Scoring code is shared with the indexer.
#include "common/ffi_util.h"
#include "common/registry.h"
#include "common/relevancy_args.h"
#include "common/score_driver.h"
#include "common/signatures.h"

namespace jax_hetero {
namespace {

constexpr const char* kOp = "relevancy";

template <class Scorer>
ffi::Error write_scores(const Scorer& scorer, const int32_t* valid, ffi::Result<ffi::Buffer<ffi::F32>> out) {
  if (int64_t(out->element_count()) != scorer.rows() * scorer.entries())
    return op_error(kOp, "scores have ", out->element_count(), " elements, expected ",
                    scorer.rows() * scorer.entries());
  relevancy_rows(scorer, valid, out->typed_data());
  return ffi::Error::Success();
}

ffi::Error relevancy_dot_cpu(ffi::AnyBuffer q, ffi::AnyBuffer summary, ffi::Buffer<ffi::S32> valid,
                             ffi::Result<ffi::Buffer<ffi::F32>> out) {
  return with_dot_scorer(kOp, q, summary, valid, batch_dims(*out, 2),
                         [&](const auto& s, const int32_t* counts) { return write_scores(s, counts, out); });
}

ffi::Error relevancy_quest_cpu(ffi::AnyBuffer q, ffi::AnyBuffer lo, ffi::AnyBuffer hi,
                               ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> out) {
  return with_quest_scorer(kOp, q, lo, hi, valid, batch_dims(*out, 2),
                           [&](const auto& s, const int32_t* counts) { return write_scores(s, counts, out); });
}

ffi::Error relevancy_dsa_cpu(ffi::AnyBuffer q, ffi::AnyBuffer keys, ffi::Buffer<ffi::F32> weights,
                             ffi::Buffer<ffi::S32> valid, ffi::Result<ffi::Buffer<ffi::F32>> out) {
  return with_dsa_scorer(kOp, q, keys, weights, valid, batch_dims(*out, 1),
                         [&](const auto& s, const int32_t* counts) { return write_scores(s, counts, out); });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RelevancyDotCpu, relevancy_dot_cpu,
                              relevancy_result(dot_operands(ffi::Ffi::Bind())));
XLA_FFI_DEFINE_HANDLER_SYMBOL(RelevancyQuestCpu, relevancy_quest_cpu,
                              relevancy_result(quest_operands(ffi::Ffi::Bind())));
XLA_FFI_DEFINE_HANDLER_SYMBOL(RelevancyDsaCpu, relevancy_dsa_cpu,
                              relevancy_result(dsa_operands(ffi::Ffi::Bind())));
JAX_HETERO_REGISTER("relevancy_dot", RelevancyDotCpu);
JAX_HETERO_REGISTER("relevancy_quest", RelevancyQuestCpu);
JAX_HETERO_REGISTER("relevancy_dsa", RelevancyDsaCpu);

}  // namespace jax_hetero
