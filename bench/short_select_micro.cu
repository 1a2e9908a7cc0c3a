// Stand-alone check and timing of short_select_kernel (csrc/cuda/short_select.cuh) against a
// host reference, and of a kernel that only reads the rows and writes k outputs (the floor any
// top-k of the shape pays).  Build and run (on the GPU machine):
//   nvcc -std=c++17 -O3 -arch=sm_90a -Icsrc -I$(python -c "import jax; print(jax.ffi.include_dir())") \
//     bench/short_select_micro.cu -o /tmp/short_micro && /tmp/short_micro
// Add -DJH_SELECT_TRACE for the phase cycles of block 0; pass --time-only to skip the checks.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "cuda/short_select.cuh"

using namespace jax_hetero;

#define CHECK(x)                                                                     \
  do {                                                                               \
    cudaError_t e = (x);                                                             \
    if (e != cudaSuccess) {                                                          \
      printf("CUDA error %s at %s:%d: %s\n", cudaGetErrorString(e), __FILE__, __LINE__, #x); \
      exit(1);                                                                       \
    }                                                                                \
  } while (0)

static uint32_t host_key(uint32_t bits, bool half) {
  if (half) {
    const uint32_t k16 = (bits & 0x8000u) ? (~bits & 0xffffu) : (bits | 0x8000u);
    return k16;
  }
  return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

template <class T>
static uint32_t to_bits(float f) {
  uint32_t b;
  std::memcpy(&b, &f, 4);
  if constexpr (sizeof(T) == 4) return b;
  else return (b + 0x7fffu + ((b >> 16) & 1)) >> 16;  // bfloat16, round to nearest even (NaN stays NaN here)
}

template <class T>
__global__ void read_floor_kernel(const T* x, int n, int k, T* values, int32_t* indices) {
  const int64_t row = blockIdx.x;
  const int col0 = threadIdx.x * kShortKeysPerThread;
  uint32_t acc = 0;
  if (col0 + kShortKeysPerThread <= n) {
    const uint4* v = reinterpret_cast<const uint4*>(x + row * n + col0);
    for (int j = 0; j < kShortKeysPerThread * int(sizeof(T)) / 16; ++j) {
      const uint4 q = __ldg(v + j);
      acc ^= q.x ^ q.y ^ q.z ^ q.w;
    }
  }
  if (threadIdx.x < k) {
    if constexpr (sizeof(T) == 4) reinterpret_cast<uint32_t*>(values)[row * k + threadIdx.x] = acc;
    else reinterpret_cast<uint16_t*>(values)[row * k + threadIdx.x] = uint16_t(acc);
    indices[row * k + threadIdx.x] = int(acc);
  }
}

template <class T>
static void launch(const T* x, const int32_t* len, int rows, int n, int k, T* v, int32_t* i, cudaStream_t s) {
  const uint32_t neg_inf = sizeof(T) == 4 ? 0xff800000u : 0xff80u;  // float32 or bfloat16
  CHECK(launch_short_select(s, short_select_threads(n, k), x, len, rows, n, k, v, i, neg_inf));
}

// Returns the number of mismatching rows.
template <class T>
static int check(const char* name, int rows, int n, int k, const std::vector<uint32_t>& bits,
                 const std::vector<int32_t>& lengths) {
  const bool half = sizeof(T) == 2;
  T *dx, *dv;
  int32_t *dl, *di;
  CHECK(cudaMalloc(&dx, size_t(rows) * n * sizeof(T)));
  CHECK(cudaMalloc(&dv, size_t(rows) * k * sizeof(T)));
  CHECK(cudaMalloc(&di, size_t(rows) * k * 4));
  CHECK(cudaMalloc(&dl, size_t(rows) * 4));
  std::vector<unsigned char> host(size_t(rows) * n * sizeof(T));
  for (size_t j = 0; j < bits.size(); ++j) std::memcpy(&host[j * sizeof(T)], &bits[j], sizeof(T));
  CHECK(cudaMemcpy(dx, host.data(), host.size(), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(dl, lengths.data(), rows * 4, cudaMemcpyHostToDevice));
  CHECK(cudaMemset(dv, 0x55, size_t(rows) * k * sizeof(T)));
  CHECK(cudaMemset(di, 0x55, size_t(rows) * k * 4));
  launch<T>(dx, dl, rows, n, k, dv, di, 0);
  CHECK(cudaGetLastError());
  CHECK(cudaDeviceSynchronize());
  std::vector<unsigned char> gv(size_t(rows) * k * sizeof(T));
  std::vector<int32_t> gi(size_t(rows) * k);
  CHECK(cudaMemcpy(gv.data(), dv, gv.size(), cudaMemcpyDeviceToHost));
  CHECK(cudaMemcpy(gi.data(), di, gi.size() * 4, cudaMemcpyDeviceToHost));
  int bad = 0;
  for (int r = 0; r < rows; ++r) {
    const int valid = std::min(std::max(lengths[r], 0), n);
    std::vector<int> order(valid);
    for (int c = 0; c < valid; ++c) order[c] = c;
    std::stable_sort(order.begin(), order.end(), [&](int a, int b) {
      return host_key(bits[size_t(r) * n + a], half) > host_key(bits[size_t(r) * n + b], half);
    });
    bool ok = true;
    for (int j = 0; j < k && ok; ++j) {
      uint32_t want_v, got_v = 0;
      int want_i;
      if (j < valid) want_i = order[j], want_v = bits[size_t(r) * n + want_i];
      else want_i = -1, want_v = half ? 0xff80u : 0xff800000u;
      std::memcpy(&got_v, &gv[(size_t(r) * k + j) * sizeof(T)], sizeof(T));
      const int got_i = gi[size_t(r) * k + j];
      if (got_i != want_i || got_v != want_v) {
        if (bad < 3)
          printf("  %s row %d slot %d: got (%08x, %d) want (%08x, %d), valid %d\n", name, r, j, got_v, got_i, want_v,
                 want_i, valid);
        ok = false;
      }
    }
    bad += !ok;
  }
  printf("%-40s %s (%d of %d rows wrong)\n", name, bad ? "FAIL" : "ok", bad, rows);
  cudaFree(dx), cudaFree(dv), cudaFree(di), cudaFree(dl);
  return bad;
}

template <class T>
static int checks(const char* tname) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  int bad = 0;
  char name[128];
  auto run = [&](const char* what, int rows, int n, int k, auto gen, auto lens) {
    std::vector<uint32_t> bits(size_t(rows) * n);
    std::vector<int32_t> lengths(rows);
    for (int r = 0; r < rows; ++r) {
      lengths[r] = lens(r);
      for (int c = 0; c < n; ++c) bits[size_t(r) * n + c] = gen(r, c);
    }
    snprintf(name, sizeof(name), "%s %s %dx%d k=%d", tname, what, rows, n, k);
    bad += check<T>(name, rows, n, k, bits, lengths);
  };
  auto full = [](int n) { return [n](int) { return n; }; };
  auto randn = [&](int, int) { return to_bits<T>(normal(rng)); };
  for (int k : {1, 7, 64, 255, 256}) run("normal", 16, 8192, k, randn, full(8192));
  run("normal", 64, 8192, 256, randn, full(8192));
  run("quantized", 32, 8192, 256, [&](int, int) { return to_bits<T>(std::round(normal(rng) * 4) / 4); }, full(8192));
  run("all equal", 4, 8192, 256, [&](int, int) { return to_bits<T>(1.5f); }, full(8192));
  run("zeros and ones", 8, 8192, 256, [&](int, int c) { return to_bits<T>(c % 97 == 0 ? 1.f : 0.f); }, full(8192));
  run("one outlier", 8, 8192, 256, [&](int, int c) { return to_bits<T>(c == 5 ? 1e30f : normal(rng)); }, full(8192));
  const float special[] = {NAN, -NAN, INFINITY, -INFINITY, 0.f, -0.f};
  run("specials", 16, 8192, 256,
      [&](int, int c) { return c % 5 == 0 ? to_bits<T>(special[(c / 5) % 6]) : to_bits<T>(normal(rng)); }, full(8192));
  run("lengths", 64, 8192, 256, randn, [&](int r) { return r == 0 ? 0 : r == 1 ? -3 : r == 2 ? 9000 : int(rng() % 8193); });
  run("k = n", 8, 256, 256, randn, full(256));
  run("odd n", 8, 8191, 100, randn, [&](int r) { return 8191 - r; });
  run("short n", 64, 100, 7, randn, full(100));
  // Smaller CTAs (short_select_threads): 64 threads up to 1024 keys and k = 32, 128 up to 2048
  // and 64, 256 up to 4096 and 128.
  for (int n : {1000, 1024, 2048, 3000, 4096})
    for (int k : {1, 31, 32, 64, 128}) run("normal", 8, n, k, randn, full(n));
  run("lengths", 64, 2048, 64, randn, [&](int r) { return r == 0 ? 0 : int(rng() % 2049); });
  run("specials", 16, 1000, 32,
      [&](int, int c) { return c % 5 == 0 ? to_bits<T>(special[(c / 5) % 6]) : to_bits<T>(normal(rng)); }, full(1000));
  run("all equal", 4, 1024, 32, [&](int, int) { return to_bits<T>(-2.5f); }, full(1024));
  run("one outlier", 8, 4096, 128, [&](int, int c) { return to_bits<T>(c == 77 ? 1e30f : normal(rng)); }, full(4096));
  run("ascending", 4, 8192, 256, [&](int, int c) { return to_bits<T>(float(c)); }, full(8192));
  run("descending", 4, 8192, 256, [&](int, int c) { return to_bits<T>(float(-c)); }, full(8192));
  return bad;
}

template <class T>
static void timing(const char* tname, int rows, int n, int k, int kBufs = 64) {  // kBufs x rows x n inputs rotate, so L2 (50-60 MB) does not hold them
  const size_t elems = size_t(rows) * n;
  const int threads = short_select_threads(n, k);
  T* x;
  T* v;
  int32_t *idx, *len;
  CHECK(cudaMalloc(&x, elems * sizeof(T) * kBufs));
  CHECK(cudaMalloc(&v, size_t(rows) * k * sizeof(T)));
  CHECK(cudaMalloc(&idx, size_t(rows) * k * 4));
  CHECK(cudaMalloc(&len, rows * 4));
  std::vector<uint32_t> hb(elems * kBufs / (4 / sizeof(T)));
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<unsigned char> host(elems * sizeof(T) * kBufs);
  for (size_t j = 0; j < elems * kBufs; ++j) {
    const uint32_t b = to_bits<T>(normal(rng));
    std::memcpy(&host[j * sizeof(T)], &b, sizeof(T));
  }
  CHECK(cudaMemcpy(x, host.data(), host.size(), cudaMemcpyHostToDevice));
  std::vector<int32_t> lengths(rows, n);
  CHECK(cudaMemcpy(len, lengths.data(), rows * 4, cudaMemcpyHostToDevice));
  cudaStream_t s;
  CHECK(cudaStreamCreate(&s));
  auto time_graph = [&](auto body) {
    cudaGraph_t g;
    cudaGraphExec_t ge;
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeGlobal));
    for (int b = 0; b < kBufs; ++b) body(x + elems * b);
    CHECK(cudaStreamEndCapture(s, &g));
    CHECK(cudaGraphInstantiate(&ge, g, 0));
    cudaEvent_t e0, e1;
    CHECK(cudaEventCreate(&e0));
    CHECK(cudaEventCreate(&e1));
    std::vector<float> per;
    for (int rep = 0; rep < (kBufs > 1 ? 30 : 1); ++rep) {
      CHECK(cudaEventRecord(e0, s));
      CHECK(cudaGraphLaunch(ge, s));
      CHECK(cudaEventRecord(e1, s));
      CHECK(cudaEventSynchronize(e1));
      float ms;
      CHECK(cudaEventElapsedTime(&ms, e0, e1));
      per.push_back(ms * 1000 / kBufs);
    }
    std::sort(per.begin(), per.end());
    return per[per.size() / 2];
  };
  const float ours = time_graph([&](const T* xb) { launch<T>(xb, len, rows, n, k, v, idx, s); });
  if (kBufs == 1) return;
  const float floor_us = time_graph([&](const T* xb) {
    read_floor_kernel<T><<<rows, threads, 0, s>>>(xb, n, k, v, idx);
  });
  const float empty_us = time_graph([&](const T*) { read_floor_kernel<T><<<rows, threads, 0, s>>>(x, 0, 0, v, idx); });
  printf("%-6s %dx%d k=%d (%d threads): short_select %.2f us | read+write floor %.2f us | empty launch %.2f us (graph of %d, median of 30)\n",
         tname, rows, n, k, threads, ours, floor_us, empty_us, kBufs);
  cudaFree(x), cudaFree(v), cudaFree(idx), cudaFree(len);
}

int main(int argc, char** argv) {
  const bool time_only = argc > 1 && std::strcmp(argv[1], "--time-only") == 0;  // e.g. under ncu
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  printf("device: %s, shared memory per CTA of 64/128/256/512 threads: %zu/%zu/%zu/%zu bytes\n", prop.name,
         sizeof(ShortSmem<64>), sizeof(ShortSmem<128>), sizeof(ShortSmem<256>), sizeof(ShortSmem<512>));
#ifdef JH_SELECT_TRACE
  // Phase cycles of block 0, warm: the last of four launches over the same rows.
  for (int rep = 0; rep < 4; ++rep) timing<float>("f32", 64, 8192, 256, 1);
  for (int rep = 0; rep < 2; ++rep) timing<bfloat16_bits>("bf16", 64, 8192, 256, 1);
  int bad = 0;
#else
  int bad = time_only ? 0 : checks<float>("f32") + checks<bfloat16_bits>("bf16");
  timing<float>("f32", 64, 8192, 256);
  timing<bfloat16_bits>("bf16", 64, 8192, 256);
  timing<float>("f32", 64, 8192, 64);
  timing<float>("f32", 256, 8192, 256);
  timing<float>("f32", 512, 4096, 128, 16);
  timing<float>("f32", 1024, 2048, 64, 16);
  timing<float>("f32", 4096, 1024, 32, 16);
  printf("%s\n", bad ? "SOME CHECKS FAILED" : "all checks passed");
#endif
  return bad != 0;
}
