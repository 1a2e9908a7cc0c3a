// Project-owned stand-in for the Vitis HLS <ap_int.h>, for C simulation and the emulated
// device without a Vitis install. It implements only what hls/src uses: ap_uint<W> as a
// little-endian bit vector with range(hi, lo) read (to_uint / to_uint64) and write of fields up
// to 64 bits wide. Under Vitis the real header is found first (see hls/README.md), and the
// kernels use nothing outside this subset, so both give the same results.
#pragma once
#include <cstdint>
#include <type_traits>

template <int W>
struct ap_uint {
  static_assert(W > 0, "ap_uint width must be positive");
  static constexpr int kLimbs = (W + 63) / 64;
  uint64_t limb[kLimbs];

  ap_uint() : limb{} {}
  ap_uint(unsigned long long v) : limb{} { limb[0] = v; trim(); }

  // A field [lo, hi] of at most 64 bits; reads and writes go to the owning word.
  class range_ref {
   public:
    range_ref(ap_uint* word, int hi, int lo) : word_(word), hi_(hi), lo_(lo) {}
    uint64_t to_uint64() const { return word_->get(hi_, lo_); }
    unsigned to_uint() const { return unsigned(to_uint64()); }
    int to_int() const { return int(to_uint()); }
    operator uint64_t() const { return to_uint64(); }
    range_ref& operator=(uint64_t v) { word_->set(hi_, lo_, v); return *this; }
   private:
    ap_uint* word_;
    int hi_, lo_;
  };

  range_ref range(int hi, int lo) { return range_ref(this, hi, lo); }
  // Read-only access through a const word: a plain value is enough.
  struct const_range {
    uint64_t v;
    uint64_t to_uint64() const { return v; }
    unsigned to_uint() const { return unsigned(v); }
    int to_int() const { return int(unsigned(v)); }
    operator uint64_t() const { return v; }
  };
  const_range range(int hi, int lo) const { return {get(hi, lo)}; }

  bool operator==(const ap_uint& o) const {
    for (int i = 0; i < kLimbs; ++i) if (limb[i] != o.limb[i]) return false;
    return true;
  }
  bool operator!=(const ap_uint& o) const { return !(*this == o); }

  uint64_t get(int hi, int lo) const {
    const int width = hi - lo + 1, first = lo / 64, shift = lo % 64;
    uint64_t v = limb[first] >> shift;
    if (shift && first + 1 < kLimbs) v |= limb[first + 1] << (64 - shift);
    return width >= 64 ? v : v & ((uint64_t(1) << width) - 1);
  }
  void set(int hi, int lo, uint64_t v) {
    const int width = hi - lo + 1, first = lo / 64, shift = lo % 64;
    const uint64_t mask = width >= 64 ? ~uint64_t(0) : (uint64_t(1) << width) - 1;
    v &= mask;
    limb[first] = (limb[first] & ~(mask << shift)) | (v << shift);
    if (shift && first + 1 < kLimbs && shift + width > 64) {
      const int spill = 64 - shift;
      limb[first + 1] = (limb[first + 1] & ~(mask >> spill)) | (v >> spill);
    }
    trim();
  }

 private:
  void trim() {
    if (W % 64) limb[kLimbs - 1] &= (uint64_t(1) << (W % 64)) - 1;
  }
};

static_assert(sizeof(ap_uint<512>) == 64, "a 512-bit word must be exactly 64 bytes");
static_assert(std::is_standard_layout<ap_uint<512>>::value, "host buffers alias words");
