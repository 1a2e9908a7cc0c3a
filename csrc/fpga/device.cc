#include <cstdlib>
#include <string>

#include "fpga/device.h"

namespace jax_hetero::fpga {

size_t element_size(ElementType t) { return t == ElementType::kF32 ? 4 : 2; }

const char* element_name(ElementType t) {
  switch (t) {
    case ElementType::kF32: return "float32";
    case ElementType::kBF16: return "bfloat16";
    case ElementType::kF16: return "float16";
  }
  return "?";
}

const char* indexer_kind_name(IndexerKind k) {
  switch (k) {
    case IndexerKind::kDot: return "dot";
    case IndexerKind::kQuest: return "quest";
    case IndexerKind::kDsa: return "dsa";
  }
  return "?";
}

namespace {

constexpr uint64_t kU55cHbmBytes = uint64_t(16) << 30;

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::string(v) : std::string();
}

uint64_t memory_bytes_from_env() {
  const std::string v = env("JAX_HETERO_FPGA_MEMORY_BYTES");
  if (v.empty()) return kU55cHbmBytes;
  char* end = nullptr;
  const unsigned long long bytes = std::strtoull(v.c_str(), &end, 10);
  if (end == v.c_str() || *end != '\0' || bytes == 0) {
    throw DeviceError(DeviceError::Code::kInvalidArgument,
                      "JAX_HETERO_FPGA_MEMORY_BYTES='" + v + "' is not a positive byte count");
  }
  return bytes;
}

}  // namespace

std::unique_ptr<Device> open_device_from_env() {
  std::string spec = env("JAX_HETERO_FPGA_DEVICE");
  if (spec.empty() || spec == "auto") spec = xrt_device_count() > 0 ? "xrt:0" : "emulated";
  if (spec == "emulated") return make_emulated_device(memory_bytes_from_env());
  if (spec.rfind("xrt", 0) == 0) {
    unsigned index = 0;
    if (spec.size() > 3) {
      char* end = nullptr;
      const std::string digits = spec.substr(spec[3] == ':' ? 4 : 3);
      index = unsigned(std::strtoul(digits.c_str(), &end, 10));
      if (digits.empty() || *end != '\0') spec.clear();
    }
    if (!spec.empty()) return make_xrt_device(index, env("JAX_HETERO_XCLBIN"));
  }
  throw DeviceError(DeviceError::Code::kInvalidArgument,
                    "JAX_HETERO_FPGA_DEVICE='" + env("JAX_HETERO_FPGA_DEVICE") +
                        "' is not one of 'emulated', 'xrt:<index>', 'auto'");
}

}  // namespace jax_hetero::fpga
