// Helpers shared by the C-simulation testbenches: deterministic random numbers, packing of
// host arrays into 512-bit words (byte-wise, independent of the ap_uint implementation), and
// the little binary files exchanged with tests/test_hls_csim.py.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <vector>

#include "hetero_kernels.h"

namespace tb {

struct Rng {  // splitmix64
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int uniform_int(int lo, int hi) { return lo + int(next() % uint64_t(hi - lo + 1)); }  // [lo, hi]
  float uniform() { return float(next() >> 40) * (1.0f / 16777216.0f); }           // [0, 1)
  float normal() {
    const float u = uniform() + 1e-7f, v = uniform();
    return std::sqrt(-2.0f * std::log(u)) * std::cos(6.2831853f * v);
  }
};

// Little-endian bytes <-> words, 64 bits at a time through range(), so the testbenches
// also run against the Vitis ap_int.h. Bytes past `bytes` in the last word are zero.
inline void pack_bytes(const void* src, size_t bytes, hetero_word_t* words) {
  const unsigned char* p = static_cast<const unsigned char*>(src);
  for (size_t w = 0; w * 64 < bytes; ++w)
    for (int i = 0; i < 8; ++i) {
      uint64_t v = 0;
      const size_t at = w * 64 + 8 * i;
      if (at < bytes) std::memcpy(&v, p + at, bytes - at < 8 ? bytes - at : 8);
      words[w].range(64 * i + 63, 64 * i) = v;
    }
}
inline void unpack_bytes(const hetero_word_t* words, size_t num_words, void* dst) {
  unsigned char* p = static_cast<unsigned char*>(dst);
  for (size_t w = 0; w < num_words; ++w)
    for (int i = 0; i < 8; ++i) {
      const uint64_t v = words[w].range(64 * i + 63, 64 * i).to_uint64();
      std::memcpy(p + w * 64 + 8 * i, &v, 8);
    }
}

inline bool read_exact(FILE* f, void* dst, size_t bytes) {
  return bytes == 0 || std::fread(dst, 1, bytes, f) == bytes;
}
inline bool write_exact(FILE* f, const void* src, size_t bytes) {
  return bytes == 0 || std::fwrite(src, 1, bytes, f) == bytes;
}

}  // namespace tb
