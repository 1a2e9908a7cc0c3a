// Tests of the FPGA bridge below the FFI layer: memory mirror (delta uploads, stale data,
// stale handles, capacity, eviction), the bridge's indexer/gather on the emulated device
// against a brute-force host reference, argument errors, concurrent callers, and (mode
// "xrt-noop") XrtDevice buffers against the real XRT runtime with XCL_EMULATION_MODE=noop,
// (mode "xrt-nocard") the error without a card.  Built and run under AddressSanitizer by
// tests/test_fpga_bridge.py.  Exit status 0 = all passed.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <unistd.h>
#include <vector>

#include "fpga/bridge.h"
#include "fpga/device.h"
#include "fpga/memory_mirror.h"

using namespace jax_hetero::fpga;

namespace {

int failures = 0, checks = 0;

void check(bool ok, const std::string& what) {
  ++checks;
  if (!ok) {
    std::printf("FAIL: %s\n", what.c_str());
    ++failures;
  }
}

// Runs fn, expecting a DeviceError whose message contains `needle`.
void expect_error(const std::function<void()>& fn, const std::string& needle, const std::string& what) {
  try {
    fn();
  } catch (const DeviceError& e) {
    check(std::string(e.what()).find(needle) != std::string::npos,
          what + ": message '" + e.what() + "' lacks '" + needle + "'");
    return;
  }
  check(false, what + ": no error");
}

std::vector<float> random_ints(size_t n, std::mt19937& rng) {
  std::uniform_int_distribution<int> dist(-3, 3);
  std::vector<float> v(n);
  for (auto& x : v) x = float(dist(rng));
  return v;
}

// Host layout [batch][rows][segments * dim] float32 -> the mirror's device layout check.
bool device_matches(Device& dev, const DeviceBuffer& buf, const Layout& L, const std::vector<float>& host,
                    int64_t b, int64_t rows) {
  std::vector<uint8_t> entry(size_t(L.entry_bytes));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t s = 0; s < L.segments; ++s) {
      dev.read(buf, L.device_offset(b, r, s), entry.data(), entry.size());
      const float* want = host.data() + (b * L.rows + r) * L.segments * (L.segment_bytes / 4) + s * (L.segment_bytes / 4);
      if (std::memcmp(entry.data(), want, size_t(L.segment_bytes)) != 0) return false;
    }
  }
  return true;
}

Layout float_layout(int64_t batch, int64_t rows, int64_t segments, int64_t dim) {
  Layout L;
  L.batch = batch;
  L.rows = rows;
  L.segments = segments;
  L.segment_bytes = dim * 4;
  L.entry_bytes = (dim * 4 + 63) / 64 * 64;
  return L;
}

void test_mirror_delta(Device& dev) {
  std::mt19937 rng(1);
  const int64_t batch = 2, rows = 100, segments = 2, dim = 24;
  Layout L = float_layout(batch, rows, segments, dim);
  auto host = random_ints(size_t(batch * rows * segments * dim), rng);
  HostRowSource src(host.data(), rows, segments * dim * 4);
  MemoryMirror mirror(dev, MemoryMirror::Verify::kSampled);

  int32_t needed[2] = {10, 20};
  mirror.begin_call();
  SyncReport first;
  auto h = mirror.sync_prefix(L, src, needed, first);
  check(first.new_entry && first.rows_uploaded == 30, "first sync uploads all needed rows");
  check(device_matches(dev, mirror.buffer(h), L, host, 0, 10) && device_matches(dev, mirror.buffer(h), L, host, 1, 20),
        "device copy equals host rows after first sync");

  needed[0] = 13;  // three rows appended to batch element 0
  mirror.begin_call();
  const uint64_t before = dev.counters().bytes_to_device;
  SyncReport second;
  h = mirror.sync_prefix(L, src, needed, second);
  check(!second.new_entry && !second.stale_detected && second.rows_uploaded == 3, "append sends only the new rows");
  check(dev.counters().bytes_to_device - before == uint64_t(3 * segments * L.entry_bytes),
        "bytes sent = appended rows");
  check(device_matches(dev, mirror.buffer(h), L, host, 0, 13), "appended rows resident");

  // A changed last resident row is always checked: stale -> whole prefix re-sent.
  host[size_t((0 * rows + 12) * segments * dim + 5)] += 1;
  mirror.begin_call();
  SyncReport third;
  h = mirror.sync_prefix(L, src, needed, third);
  check(third.stale_detected && third.rows_uploaded == 33, "changed resident row detected, all re-sent");
  check(device_matches(dev, mirror.buffer(h), L, host, 0, 13), "device copy fresh after stale detection");

  // Changed row 0 = another tensor: a new entry, the old one stays until evicted.
  host[0] += 1;
  mirror.begin_call();
  SyncReport fourth;
  mirror.sync_prefix(L, src, needed, fourth);
  check(fourth.new_entry && mirror.entries() == 2, "changed first row maps to a new entry");
}

void test_mirror_sampled_rotation(Device& dev) {
  std::mt19937 rng(5);
  const int64_t rows = 50, dim = 16;
  Layout L = float_layout(1, rows, 1, dim);
  auto host = random_ints(size_t(rows * dim), rng);
  HostRowSource src(host.data(), rows, dim * 4);
  MemoryMirror mirror(dev, MemoryMirror::Verify::kSampled);
  int32_t needed[1] = {int32_t(rows)};
  SyncReport first;
  mirror.begin_call();
  mirror.sync_prefix(L, src, needed, first);
  host[size_t(46 * dim)] += 1;  // a row between the samples of the first check
  bool detected = false;
  for (int call = 0; call < (rows + 15) / 16 && !detected; ++call) {
    SyncReport r;
    mirror.begin_call();
    auto h = mirror.sync_prefix(L, src, needed, r);
    detected = r.stale_detected && device_matches(dev, mirror.buffer(h), L, host, 0, rows);
  }
  check(detected, "sampled verification reaches every row within ceil(rows / 16) calls");
}

void test_mirror_full_verify(Device& dev) {
  std::mt19937 rng(2);
  const int64_t rows = 64, dim = 16;
  Layout L = float_layout(1, rows, 1, dim);
  auto host = random_ints(size_t(rows * dim), rng);
  HostRowSource src(host.data(), rows, dim * 4);
  MemoryMirror mirror(dev, MemoryMirror::Verify::kFull);
  int32_t needed[1] = {50};
  SyncReport a, b;
  mirror.begin_call();
  mirror.sync_prefix(L, src, needed, a);
  host[size_t(31 * dim + 3)] = 100;  // a middle row sampling could miss
  mirror.begin_call();
  auto h = mirror.sync_prefix(L, src, needed, b);
  check(b.stale_detected && b.rows_uploaded == 1 && b.rows_checked == 50, "full verify re-sends just the changed row");
  check(device_matches(dev, mirror.buffer(h), L, host, 0, 50), "full verify: device copy fresh");
}

void test_mirror_rows_and_capacity() {
  std::mt19937 rng(3);
  const int64_t rows = 32, dim = 16;  // 64-byte rows, 2 KiB per tensor
  auto dev = make_emulated_device(5000);
  Layout L = float_layout(1, rows, 1, dim);
  L.role = BufferRole::kGatherTable;
  auto t1 = random_ints(size_t(rows * dim), rng), t2 = random_ints(size_t(rows * dim), rng),
       t3 = random_ints(size_t(rows * dim), rng);
  HostRowSource s1(t1.data(), rows, dim * 4), s2(t2.data(), rows, dim * 4), s3(t3.data(), rows, dim * 4);
  MemoryMirror mirror(*dev, MemoryMirror::Verify::kSampled);
  const int32_t pick[3] = {4, -1, 9};

  mirror.begin_call();
  SyncReport r1;
  auto h1 = mirror.sync_rows(L, s1, 0, pick, 3, r1);
  check(r1.new_entry && r1.rows_uploaded == uint64_t(rows), "gather table uploaded whole at first sight");
  t1[size_t(9 * dim)] += 1;
  mirror.begin_call();
  SyncReport r2;
  h1 = mirror.sync_rows(L, s1, 0, pick, 3, r2);
  check(r2.stale_detected && r2.rows_uploaded == 1 && r2.rows_checked == 2, "gather re-sends the changed selected row");
  check(device_matches(*dev, mirror.buffer(h1), L, t1, 0, rows), "gather table fresh");

  mirror.begin_call();
  SyncReport r3, r4;
  auto h2 = mirror.sync_rows(L, s2, 0, pick, 3, r3);
  check(mirror.entries() == 2, "two tables fit");
  mirror.begin_call();
  mirror.sync_rows(L, s3, 0, pick, 3, r4);  // 3 x 2 KiB > 5000 bytes: evicts the LRU (t1)
  check(mirror.entries() == 2, "LRU eviction keeps the device within capacity");
  expect_error([&] { mirror.buffer(h1); }, "stale memory handle", "evicted entry's handle is refused");
  (void)h2;

  // One tensor larger than the device: a clear capacity error.
  Layout big = float_layout(1, 1000, 1, dim);
  std::vector<float> huge(size_t(1000 * dim));
  HostRowSource sb(huge.data(), 1000, dim * 4);
  int32_t needed[1] = {1000};
  SyncReport r5;
  expect_error([&] { mirror.sync_prefix(big, sb, needed, r5); }, "device memory", "capacity exceeded");
}

// Brute force: dot scores summed over the group, top-k by (value desc, index asc).
void reference_dot(const std::vector<float>& q, const std::vector<float>& mem, int64_t batch, int64_t hq,
                   int64_t hkv, int64_t dim, int64_t n, const int32_t* valid, int64_t k,
                   std::vector<float>& values, std::vector<int32_t>& indices) {
  const int64_t g = hq / hkv;
  values.assign(size_t(batch * hkv * k), -INFINITY);
  indices.assign(size_t(batch * hkv * k), -1);
  for (int64_t b = 0; b < batch; ++b)
    for (int64_t h = 0; h < hkv; ++h) {
      std::vector<std::pair<float, int32_t>> s;
      for (int64_t e = 0; e < std::min<int64_t>(valid[b], n); ++e) {
        float acc = 0;
        for (int64_t j = 0; j < g; ++j)
          for (int64_t d = 0; d < dim; ++d)
            acc += q[size_t((b * hq + h * g + j) * dim + d)] * mem[size_t(((b * n + e) * hkv + h) * dim + d)];
        s.push_back({acc, int32_t(e)});
      }
      std::sort(s.begin(), s.end(), [](auto& x, auto& y) { return x.first != y.first ? x.first > y.first : x.second < y.second; });
      for (int64_t j = 0; j < std::min<int64_t>(k, int64_t(s.size())); ++j) {
        values[size_t((b * hkv + h) * k + j)] = s[size_t(j)].first;
        indices[size_t((b * hkv + h) * k + j)] = s[size_t(j)].second;
      }
    }
}

struct DotCase {
  int64_t batch = 2, hq = 4, hkv = 2, dim = 40, n = 300, k = 16;
  std::vector<float> q, mem;
  std::vector<int32_t> valid;
  explicit DotCase(unsigned seed) {
    std::mt19937 rng(seed);
    q = random_ints(size_t(batch * hq * dim), rng);
    mem = random_ints(size_t(batch * n * hkv * dim), rng);
    valid = {int32_t(n - 37), 9};
  }
  bool run_and_check() {
    HostRowSource src(mem.data(), n, hkv * dim * 4);
    IndexerRequest r;
    r.kind = IndexerKind::kDot;
    r.batch = batch; r.entries = n; r.heads = hq; r.kv_heads = hkv; r.dim = dim; r.k = k;
    std::vector<float> values(size_t(batch * hkv * k));
    std::vector<int32_t> indices(values.size());
    r.q = q.data(); r.valid = valid.data(); r.memory[0] = &src;
    r.values = values.data(); r.indices = indices.data();
    Bridge::instance().indexer(r);
    std::vector<float> want_v;
    std::vector<int32_t> want_i;
    reference_dot(q, mem, batch, hq, hkv, dim, n, valid.data(), k, want_v, want_i);
    return values == want_v && indices == want_i;
  }
};

void test_bridge_indexer_and_errors() {
  setenv("JAX_HETERO_FPGA_DEVICE", "emulated", 1);
  Bridge::instance().reset();
  Bridge::instance().reset_stats();
  DotCase c(4);
  check(c.run_and_check(), "bridge indexer (dot) equals brute force");
  c.valid[1] = 12;  // three rows appended
  check(c.run_and_check(), "bridge indexer after append equals brute force");
  auto stats = Bridge::instance().stats();
  check(stats.size() == 2 && stats[1].memory_rows_uploaded == 3 && !stats[1].new_memory,
        "second call sent only the appended rows");

  IndexerRequest bad;
  bad.kind = IndexerKind::kDot; bad.batch = 1; bad.entries = 5000; bad.heads = 1; bad.kv_heads = 1; bad.dim = 8;
  bad.k = 4096;
  expect_error([&] { Bridge::instance().indexer(bad); }, "exceeds the FPGA kernel's maximum k=2048", "k too large");
  bad.k = 8;
  bad.dtype = ElementType::kF16;
  expect_error([&] { Bridge::instance().indexer(bad); }, "got float16", "unsupported dtype");

  setenv("JAX_HETERO_FPGA_DEVICE", "nonsense", 1);
  Bridge::instance().reset();
  expect_error([&] { c.run_and_check(); }, "is not one of 'emulated'", "bad device spec");
  setenv("JAX_HETERO_FPGA_DEVICE", "emulated", 1);
  Bridge::instance().reset();
}

void test_bridge_gather() {
  const int64_t rows = 50, features = 20;  // 40-byte bf16-sized rows, padded to 64 on the device
  std::vector<uint16_t> table(size_t(rows * features));
  for (size_t i = 0; i < table.size(); ++i) table[i] = uint16_t(i * 7 + 3);
  HostRowSource src(table.data(), rows, features * 2);
  std::vector<int32_t> idx = {3, -1, 49, 3};
  std::vector<uint16_t> out(idx.size() * features, 0xffff);
  GatherRequest r;
  r.dtype = ElementType::kBF16;
  r.table_rows = rows;
  r.row_bytes = features * 2;
  r.count = int64_t(idx.size());
  r.table_of = {0};
  r.table = &src;
  r.indices = idx.data();
  r.out = reinterpret_cast<uint8_t*>(out.data());
  Bridge::instance().gather(r);
  bool ok = true;
  for (size_t j = 0; j < idx.size(); ++j)
    for (int64_t f = 0; f < features; ++f)
      ok &= out[j * features + f] == (idx[j] < 0 ? 0 : table[size_t(idx[j] * features + f)]);
  check(ok, "bridge gather equals table rows (-1 gives zeros)");
  idx[2] = 50;
  expect_error([&] { Bridge::instance().gather(r); }, "indices[2]=50 is outside [-1, 50)", "gather index out of range");
}

void test_concurrent_callers() {
  std::vector<std::thread> threads;
  std::vector<int> ok(4, 0);
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([t, &ok] {
      DotCase c(100 + t);
      bool good = true;
      for (int rep = 0; rep < 5; ++rep) {
        c.valid[0] = int32_t(100 + rep * 10);
        good &= c.run_and_check();
      }
      ok[size_t(t)] = good;
    });
  }
  for (auto& th : threads) th.join();
  check(std::all_of(ok.begin(), ok.end(), [](int v) { return v; }), "4 threads x 5 calls all correct");
}

// An xclbin container with no sections (the format of xrt/xclbin.h): valid, but no kernels.
std::string write_empty_xclbin() {
  std::vector<char> bytes(496, 0);
  std::memcpy(bytes.data(), "xclbin2", 8);
  const int32_t no_signature = -1;
  std::memcpy(bytes.data() + 8, &no_signature, 4);
  std::memset(bytes.data() + 12, 0xff, 28);
  const uint64_t length = bytes.size();
  std::memcpy(bytes.data() + 8 + 4 + 28 + 256 + 8, &length, 8);  // m_header.m_length
  const std::string path = "/tmp/jax_hetero_empty_" + std::to_string(getpid()) + ".xclbin";
  std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
  return path;
}

void test_xrt_noop() {
  auto dev = make_xrt_device(0, "");
  check(dev->info().kind == "xrt", "noop shim opens XRT device 0");
  test_mirror_delta(*dev);
  test_mirror_full_verify(*dev);
  IndexerLaunch launch;
  expect_error([&] { dev->run_indexer(launch); }, "no xclbin loaded", "kernel launch without xclbin");
  {  // XRT's own failure (a write past the buffer's end) comes back as a DeviceError
    auto buf = dev->allocate(4096, BufferRole::kGatherTable);
    std::vector<uint8_t> bytes(8192);
    expect_error([&] { dev->write(*buf, 0, bytes.data(), bytes.size()); }, "failed on xrt:0 (XRT:",
                 "XRT failure is reported");
  }
  expect_error([&] { make_xrt_device(0, "/nonexistent/hetero.xclbin"); }, "does not exist", "missing xclbin");
  const std::string empty = write_empty_xclbin();
  expect_error([&] { make_xrt_device(0, empty); }, "hetero_indexer", "xclbin lacking the kernel");
  std::remove(empty.c_str());
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "emulated";
  if (mode == "emulated") {
    auto dev = make_emulated_device(uint64_t(1) << 30);
    test_mirror_delta(*dev);
    test_mirror_full_verify(*dev);
    test_mirror_sampled_rotation(*dev);
    test_mirror_rows_and_capacity();
    test_bridge_indexer_and_errors();
    test_bridge_gather();
    test_concurrent_callers();
  } else if (mode == "xrt-noop") {
    test_xrt_noop();
  } else if (mode == "xrt-nocard") {
    expect_error([] { make_xrt_device(0, ""); }, "Could not open device with index '0'", "no card");
  } else {
    std::printf("unknown mode %s\n", mode.c_str());
    return 2;
  }
  Bridge::instance().reset();
  std::printf("%s: %d checks, %s\n", mode.c_str(), checks, failures ? "FAILED" : "ok");
  return failures ? 1 : 0;
}
