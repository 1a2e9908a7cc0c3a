// C-simulation testbench of hetero_indexer.
//
//   tb_indexer                  self test: random cases (every kind and key format, ties,
//                               short rows, garbage in padding lanes) against the host
//                               reference below, bit for bit.
//   tb_indexer IN OUT           file mode (used by tests/test_hls_csim.py): runs the kernel on
//                               the case in IN, writes status/values/indices to OUT and checks
//                               them against the host reference too.
// Exit status 0 when everything matches.
//
// The host reference is written from the arithmetic documented in hetero_kernels.h, on the
// raw little-endian bytes, with a plain sort for the selection.
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "hetero_kernels.h"
#include "tb_common.h"

namespace {

struct Case {
  int kind, key_format;
  float key_scale;
  int num_entries, row_stride, dim, heads, k, rows;
  std::vector<unsigned char> memory, memory_hi;  // rows * row_stride * entry_words * 64 bytes
  std::vector<float> query, weights;
  std::vector<int> lengths;

  int lanes() const { return key_format == HETERO_KEYS_F32 ? 16 : 32; }
  int entry_words() const { return (dim + lanes() - 1) / lanes(); }
  size_t memory_bytes() const { return size_t(rows) * row_stride * entry_words() * 64; }
};

struct Result {
  int status[3] = {0, 0, 0};
  std::vector<float> values;
  std::vector<int> indices;
};

float bits_float(uint32_t b) { float f; std::memcpy(&f, &b, 4); return f; }
uint32_t float_bits(float f) { uint32_t b; std::memcpy(&b, &f, 4); return b; }

uint32_t order_key(float f) {
  const uint32_t b = float_bits(f);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}

float pairwise(const float* a, int n) { return n == 1 ? a[0] : pairwise(a, n / 2) + pairwise(a + n / 2, n / 2); }

// Element d of the entry at `bytes`, widened to float (int16 not scaled).
float element(const Case& c, const unsigned char* bytes, int d) {
  if (c.key_format == HETERO_KEYS_F32) { float f; std::memcpy(&f, bytes + 4 * d, 4); return f; }
  uint16_t h;
  std::memcpy(&h, bytes + 2 * d, 2);
  return c.key_format == HETERO_KEYS_BF16 ? bits_float(uint32_t(h) << 16) : float(int16_t(h));
}

// Sum over an entry of per-element terms: Tree<32> per word, Tree<16> over words, -0.0 pads.
template <class Term>
float entry_sum(const Case& c, Term term) {
  float words[16], lanes[32];
  for (int w = 0; w < 16; ++w) {
    for (int l = 0; l < 32; ++l) {
      const int d = w * c.lanes() + l;
      lanes[l] = (w < c.entry_words() && l < c.lanes() && d < c.dim) ? term(d) : -0.0f;
    }
    words[w] = pairwise(lanes, 32);
  }
  return pairwise(words, 16);
}

float reference_score(const Case& c, int row, int e, const float* qp /*[64][dim]*/, const float* qa,
                      const float* qb) {
  const size_t at = (size_t(row) * c.row_stride + e) * c.entry_words() * 64;
  const unsigned char* lo = c.memory.data() + at;
  if (c.kind == HETERO_KIND_DOT) return entry_sum(c, [&](int d) { return qa[d] * element(c, lo, d); });
  if (c.kind == HETERO_KIND_QUEST) {
    const unsigned char* hi = c.memory_hi.data() + at;
    return entry_sum(c, [&](int d) {
      const float a = element(c, lo, d), b = element(c, hi, d);
      const float top = a > b ? a : b, bottom = a > b ? b : a;
      const float x = top * qa[d], y = bottom * qb[d];
      return x + y;
    });
  }
  float weighted[64];
  for (int h = 0; h < 64; ++h) {
    if (h >= c.heads) { weighted[h] = -0.0f; continue; }
    const float logit = entry_sum(c, [&](int d) { return qp[h * c.dim + d] * element(c, lo, d); });
    const float relu = (logit > 0.0f || logit != logit) ? logit : 0.0f;
    weighted[h] = c.weights[size_t(row) * c.heads + h] * relu;
  }
  return pairwise(weighted, 64);
}

Result reference(const Case& c) {
  Result r;
  r.values.assign(size_t(c.rows) * c.k, 0.0f);
  r.indices.assign(size_t(c.rows) * c.k, 0);
  for (int row = 0; row < c.rows; ++row) {
    std::vector<float> qp(size_t(c.heads) * c.dim), qa(c.dim), qb(c.dim);
    for (int i = 0; i < c.heads * c.dim; ++i) {
      const float q = c.query[size_t(row) * c.heads * c.dim + i];
      qp[i] = c.key_format == HETERO_KEYS_INT16 ? q * c.key_scale : q;
    }
    for (int d = 0; d < c.dim; ++d) {
      float all[64], pos[64], neg[64];
      for (int h = 0; h < 64; ++h) {
        const float q = h < c.heads ? qp[h * c.dim + d] : -0.0f;
        all[h] = q;
        pos[h] = q >= 0.0f ? q : -0.0f;
        neg[h] = q < 0.0f ? q : -0.0f;
      }
      qa[d] = pairwise(c.kind == HETERO_KIND_QUEST ? pos : all, 64);
      qb[d] = pairwise(neg, 64);
    }
    const int valid = std::min(std::max(c.lengths[row], 0), c.num_entries);
    std::vector<std::pair<uint32_t, int>> scored;
    for (int e = 0; e < valid; ++e)
      scored.push_back({order_key(reference_score(c, row, e, qp.data(), qa.data(), qb.data())), e});
    std::sort(scored.begin(), scored.end(), [](auto& a, auto& b) {
      return a.first != b.first ? a.first > b.first : a.second < b.second;
    });
    for (int j = 0; j < c.k; ++j) {
      const bool found = j < int(scored.size());
      float v;
      if (found) {
        const uint32_t key = scored[j].first;
        v = bits_float((key & 0x80000000u) ? (key & 0x7fffffffu) : ~key);
      } else {
        v = -INFINITY;
      }
      r.values[size_t(row) * c.k + j] = v;
      r.indices[size_t(row) * c.k + j] = found ? scored[j].second : -1;
    }
  }
  return r;
}

Result run_kernel(const Case& c) {
  std::vector<hetero_word_t> memory(c.memory_bytes() / 64), memory_hi;
  tb::pack_bytes(c.memory.data(), c.memory.size(), memory.data());
  if (c.kind == HETERO_KIND_QUEST) {
    memory_hi.resize(memory.size());
    tb::pack_bytes(c.memory_hi.data(), c.memory_hi.size(), memory_hi.data());
  }
  Result r;
  r.values.assign(size_t(c.rows) * c.k, 0.0f);
  r.indices.assign(size_t(c.rows) * c.k, 0);
  hetero_indexer(memory.data(), memory_hi.empty() ? nullptr : memory_hi.data(), c.query.data(),
                 c.weights.empty() ? nullptr : c.weights.data(), c.lengths.data(), c.kind, c.key_format,
                 c.key_scale, c.num_entries, c.row_stride, c.dim, c.heads, c.k, c.rows, r.values.data(),
                 r.indices.data(), r.status);
  return r;
}

bool same(const Case& c, const Result& got, const Result& want, const std::string& name) {
  if (got.status[0] != HETERO_OK) {
    std::printf("FAIL %s: status %d/%d\n", name.c_str(), got.status[0], got.status[1]);
    return false;
  }
  for (size_t i = 0; i < want.values.size(); ++i)
    if (float_bits(got.values[i]) != float_bits(want.values[i]) || got.indices[i] != want.indices[i]) {
      std::printf("FAIL %s: row %zu slot %zu: kernel (%.9g, %d) reference (%.9g, %d)\n", name.c_str(),
                  i / c.k, i % c.k, got.values[i], got.indices[i], want.values[i], want.indices[i]);
      return false;
    }
  return true;
}

// Random case; `ties` draws elements from a few small integers so many scores tie.
Case make_case(tb::Rng& rng, int kind, int key_format, int dim, int heads, int k, int num_entries, int rows,
               bool ties) {
  Case c;
  c.kind = kind;
  c.key_format = key_format;
  c.key_scale = key_format == HETERO_KEYS_INT16 ? 0.0078125f * (1.0f + rng.uniform()) : 1.0f;
  c.num_entries = num_entries;
  c.row_stride = num_entries + rng.uniform_int(0, 3);
  c.dim = dim;
  c.heads = heads;
  c.k = k;
  c.rows = rows;
  const int size = key_format == HETERO_KEYS_F32 ? 4 : 2;
  const size_t entry_bytes = size_t(c.entry_words()) * 64;
  auto fill = [&](std::vector<unsigned char>& mem) {
    mem.assign(c.memory_bytes(), 0);
    for (size_t at = 0; at < mem.size(); at += entry_bytes) {
      for (size_t b = size_t(dim) * size; b < entry_bytes; ++b) mem[at + b] = 0xff;  // NaN padding
      for (int d = 0; d < dim; ++d) {
        const float x = ties ? float(rng.uniform_int(-2, 2)) : rng.normal();
        if (key_format == HETERO_KEYS_F32) {
          std::memcpy(&mem[at + 4 * d], &x, 4);
        } else if (key_format == HETERO_KEYS_BF16) {
          const uint16_t h = uint16_t(float_bits(x) >> 16);
          std::memcpy(&mem[at + 2 * d], &h, 2);
        } else {
          const int16_t v = int16_t(ties ? x : x * 3000.0f);
          std::memcpy(&mem[at + 2 * d], &v, 2);
        }
      }
    }
  };
  fill(c.memory);
  if (kind == HETERO_KIND_QUEST) fill(c.memory_hi);
  c.query.resize(size_t(rows) * heads * dim);
  for (float& q : c.query) q = ties ? float(rng.uniform_int(-1, 1)) : rng.normal();
  if (kind == HETERO_KIND_DSA) {
    c.weights.resize(size_t(rows) * heads);
    for (float& w : c.weights) w = ties ? -1.0f : rng.normal();
  }
  c.lengths.resize(rows);
  for (int r = 0; r < rows; ++r) {
    const int pick = rng.uniform_int(0, 3);
    c.lengths[r] = pick == 0 ? num_entries : pick == 1 ? rng.uniform_int(0, k) : rng.uniform_int(0, num_entries);
  }
  return c;
}

int self_test() {
  tb::Rng rng(20261127);
  int failures = 0, cases = 0;
  const char* kinds[] = {"dot", "quest", "dsa"};
  const char* formats[] = {"f32", "bf16", "int16"};
  struct Shape { int dim, heads, k, num_entries, rows; };
  const Shape shapes[] = {{1, 1, 1, 1, 1},      {7, 3, 5, 40, 3},      {16, 4, 16, 300, 2},
                          {33, 2, 64, 700, 2},  {128, 8, 100, 3000, 2}, {256, 1, 2048, 4100, 1},
                          {128, 64, 20, 200, 1}, {64, 16, 2048, 2048, 1}};
  for (int kind = 0; kind < 3; ++kind)
    for (int key_format = 0; key_format < 3; ++key_format)
      for (const Shape& s : shapes)
        for (int ties = 0; ties < 2; ++ties) {
          Case c = make_case(rng, kind, key_format, s.dim, s.heads, s.k, s.num_entries, s.rows, ties);
          const std::string name = std::string(kinds[kind]) + "/" + formats[key_format] + " dim=" +
                                   std::to_string(s.dim) + " heads=" + std::to_string(s.heads) +
                                   " k=" + std::to_string(s.k) + " n=" + std::to_string(s.num_entries) +
                                   (ties ? " ties" : "");
          ++cases;
          if (!same(c, run_kernel(c), reference(c), name)) ++failures;
        }
  // Bad arguments give a status code and leave the outputs alone.
  Case bad = make_case(rng, HETERO_KIND_DOT, HETERO_KEYS_F32, 8, 1, 4, 10, 1, false);
  bad.k = HETERO_MAX_K + 1;
  Result r;
  r.values.assign(1, 7.0f);
  r.indices.assign(1, 7);
  hetero_indexer(nullptr, nullptr, bad.query.data(), nullptr, bad.lengths.data(), bad.kind, bad.key_format, 1.0f,
                 bad.num_entries, bad.row_stride, bad.dim, bad.heads, bad.k, bad.rows, r.values.data(),
                 r.indices.data(), r.status);
  ++cases;
  if (r.status[0] != HETERO_BAD_ARGUMENT || r.status[1] != 5 || r.values[0] != 7.0f) {
    std::printf("FAIL bad k: status %d/%d\n", r.status[0], r.status[1]);
    ++failures;
  }
  std::printf("%s: %d of %d indexer cases match the host reference\n", failures ? "FAIL" : "PASS",
              cases - failures, cases);
  return failures ? 1 : 0;
}

// File mode. IN: int32 kind, key_format; float32 key_scale; int32 num_entries, row_stride,
// dim, heads, k, rows; then memory bytes, memory_hi bytes (quest only), float32 query
// [rows][heads][dim], float32 weights [rows][heads] (dsa only), int32 lengths [rows].
// OUT: int32 status[3], float32 values [rows][k], int32 indices [rows][k].
int file_mode(const char* in_path, const char* out_path) {
  FILE* in = std::fopen(in_path, "rb");
  if (!in) { std::printf("cannot open %s\n", in_path); return 2; }
  Case c;
  int header[9];
  bool ok = tb::read_exact(in, header, sizeof header);
  c.kind = header[0];
  c.key_format = header[1];
  std::memcpy(&c.key_scale, &header[2], 4);
  c.num_entries = header[3];
  c.row_stride = header[4];
  c.dim = header[5];
  c.heads = header[6];
  c.k = header[7];
  c.rows = header[8];
  if (ok && c.rows > 0 && c.dim > 0 && c.k > 0) {
    c.memory.resize(c.memory_bytes());
    ok = tb::read_exact(in, c.memory.data(), c.memory.size());
    if (c.kind == HETERO_KIND_QUEST) {
      c.memory_hi.resize(c.memory_bytes());
      ok = ok && tb::read_exact(in, c.memory_hi.data(), c.memory_hi.size());
    }
    c.query.resize(size_t(c.rows) * c.heads * c.dim);
    ok = ok && tb::read_exact(in, c.query.data(), c.query.size() * 4);
    if (c.kind == HETERO_KIND_DSA) {
      c.weights.resize(size_t(c.rows) * c.heads);
      ok = ok && tb::read_exact(in, c.weights.data(), c.weights.size() * 4);
    }
    c.lengths.resize(c.rows);
    ok = ok && tb::read_exact(in, c.lengths.data(), c.lengths.size() * 4);
  } else {
    ok = false;
  }
  std::fclose(in);
  if (!ok) { std::printf("malformed input %s\n", in_path); return 2; }
  const Result got = run_kernel(c);
  FILE* out = std::fopen(out_path, "wb");
  if (!out || !tb::write_exact(out, got.status, sizeof got.status) ||
      !tb::write_exact(out, got.values.data(), got.values.size() * 4) ||
      !tb::write_exact(out, got.indices.data(), got.indices.size() * 4)) {
    std::printf("cannot write %s\n", out_path);
    return 2;
  }
  std::fclose(out);
  if (got.status[0] != HETERO_OK) return 0;  // the caller checks the status it asked for
  return same(c, got, reference(c), "file case") ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3) return file_mode(argv[1], argv[2]);
  if (argc == 1) return self_test();
  std::printf("usage: %s [IN OUT]\n", argv[0]);
  return 2;
}
