// The operands, results and attributes of every FFI target, written once for all platforms
// so no backend can drift from the Python op module that calls it (jax_hetero/ops/<op>.py).
// Each function takes a binding that already holds the platform's context (a CUDA stream,
// a scratch allocator, ...) and appends the target's own signature (Binding's builders are
// rvalue-qualified, hence the moves).
#pragma once
#include <utility>

#include "xla/ffi/api/ffi.h"

namespace jax_hetero {
namespace ffi = xla::ffi;

// scores [..., n], lengths [...] -> values [..., k], indices [..., k]
template <class B> auto topk_signature(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::Buffer<ffi::S32>>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::Buffer<ffi::S32>>().template Attr<int64_t>("k");
}

// table [..., m, F], indices [..., R] -> out [..., R, F].  check_indices: an index outside
// [-1, m) is an error (true) or reads as -1, a zero row (false: no device sync on a GPU).
template <class B> auto gather_signature(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::Buffer<ffi::S32>>().template Ret<ffi::AnyBuffer>()
      .template Attr<bool>("check_indices");
}

// k [..., n, hkv, d], lengths [...] -> mean, or (min, max), [..., nb, hkv, d]
template <class B> auto summarize_mean_signature(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::Buffer<ffi::S32>>()
      .template Ret<ffi::AnyBuffer>().template Attr<int64_t>("block_size");
}
template <class B> auto summarize_minmax_signature(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::Buffer<ffi::S32>>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Attr<int64_t>("block_size");
}

// Scoring operands: dot (q, summary), quest (q, min, max), dsa (q, keys, weights f32); then
// the valid count per batch row.
template <class B> auto dot_operands(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::Buffer<ffi::S32>>();
}
template <class B> auto quest_operands(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::Buffer<ffi::S32>>();
}
template <class B> auto dsa_operands(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::Buffer<ffi::F32>>()
      .template Arg<ffi::Buffer<ffi::S32>>();
}

// relevancy_<kind>: ... -> float32 scores
template <class B> auto relevancy_result(B b) { return std::move(b).template Ret<ffi::Buffer<ffi::F32>>(); }
// indexer_<kind>: ... -> float32 values [..., k], int32 indices [..., k]
template <class B> auto indexer_results(B b) {
  return std::move(b).template Ret<ffi::Buffer<ffi::F32>>().template Ret<ffi::Buffer<ffi::S32>>().template Attr<int64_t>("k");
}

// q [..., hq, d], k, v [..., n, hkv, d], block_indices [..., hkv, kb], lengths [...] -> out [..., hq, d]
template <class B> auto sparse_attention_signature(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::Buffer<ffi::S32>>().template Arg<ffi::Buffer<ffi::S32>>()
      .template Ret<ffi::AnyBuffer>().template Attr<int64_t>("block_size").template Attr<float>("scale")
      .template Attr<bool>("check_indices");  // as for gather: false skips blocks outside [0, nb)
}

// q [..., hq, d], k, v [..., n, hkv, d], block_indices [..., hkv, kb], lengths [...],
// g (cotangent of the output) [..., hq, d] -> dq [..., hq, d], dk, dv [..., n, hkv, d]
template <class B> auto sparse_attention_bwd_signature(B b) {
  return std::move(b).template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>().template Arg<ffi::AnyBuffer>()
      .template Arg<ffi::Buffer<ffi::S32>>().template Arg<ffi::Buffer<ffi::S32>>().template Arg<ffi::AnyBuffer>()
      .template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>().template Ret<ffi::AnyBuffer>()
      .template Attr<int64_t>("block_size").template Attr<float>("scale");
}

}  // namespace jax_hetero
