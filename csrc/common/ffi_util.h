// Helpers shared by the FFI handlers of every platform: error construction, shape access
// and element-type dispatch.
#pragma once
#include <cstdint>
#include <string>
#include <type_traits>
#include <utility>

#include "common/float_bits.h"
#include "xla/ffi/api/ffi.h"

namespace jax_hetero {
namespace ffi = xla::ffi;

// Error text is built with std::string, never iostreams: nvcc-compiled translation units
// instantiate their own ostream code, whose locale facet ids are hidden in the module and
// never registered, so `stream << number` crashed the CUDA module (gdb: _M_insert<long>).
inline void append_part(std::string& s, const char* x) { s += x; }
inline void append_part(std::string& s, const std::string& x) { s += x; }
inline void append_part(std::string& s, char x) { s += x; }
template <class T, class = std::enable_if_t<std::is_arithmetic_v<T>>>
void append_part(std::string& s, T x) { s += std::to_string(x); }

template <class... Parts>
std::string message(const char* op, const Parts&... parts) {
  std::string msg = std::string(op) + ": ";
  (append_part(msg, parts), ...);
  return msg;
}

template <class... Parts>
ffi::Error op_error(const char* op, const Parts&... parts) {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument, message(op, parts...));
}

// For bad *data* found while running (an index out of range): kOutOfRange reaches Python as
// jax.errors.JaxRuntimeError, whereas kInvalidArgument would surface as a plain ValueError.
template <class... Parts>
ffi::Error data_error(const char* op, const Parts&... parts) {
  return ffi::Error(ffi::ErrorCode::kOutOfRange, message(op, parts...));
}

inline int64_t product(ffi::Span<const int64_t> dims, size_t begin, size_t end) {
  int64_t p = 1;
  for (size_t i = begin; i < end; ++i) p *= dims[i];
  return p;
}

// Leading (batch) element count of a buffer whose last `core_rank` dims are the op's own.
template <class Buf>
int64_t leading_size(const Buf& buf, size_t core_rank) {
  auto dims = buf.dimensions();
  return product(dims, 0, dims.size() - core_rank);
}

template <class Buf>
int64_t dim_from_end(const Buf& buf, size_t i) {
  auto dims = buf.dimensions();
  return dims[dims.size() - 1 - i];
}

const char* dtype_name(ffi::DataType t);

// Calls fn(T{}) with T the C++ storage type of a floating buffer (float, bfloat16_bits,
// float16_bits); any other element type is an error naming op and argument.
template <class Fn>
ffi::Error dispatch_float(const char* op, const char* arg, ffi::DataType type, Fn&& fn) {
  switch (type) {
    case ffi::DataType::F32: return fn(float{});
    case ffi::DataType::BF16: return fn(bfloat16_bits{});
    case ffi::DataType::F16: return fn(float16_bits{});
    default:
      return op_error(op, arg, " must be float32, bfloat16 or float16, got ", dtype_name(type));
  }
}

inline const char* dtype_name(ffi::DataType t) {
  switch (t) {
    case ffi::DataType::F32: return "float32";
    case ffi::DataType::BF16: return "bfloat16";
    case ffi::DataType::F16: return "float16";
    case ffi::DataType::F64: return "float64";
    case ffi::DataType::S32: return "int32";
    case ffi::DataType::S64: return "int64";
    default: return "an unsupported type";
  }
}

}  // namespace jax_hetero
