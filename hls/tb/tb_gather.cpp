// C-simulation testbench of hetero_gather.
//
//   tb_gather            self test: random tables and indices (with -1 and out-of-range
//                        entries) against a host reference, word for word.
//   tb_gather IN OUT     file mode (tests/test_hls_csim.py). IN: int32 num_rows, row_words,
//                        num_indices; table bytes [num_rows][row_words * 64]; int32 indices.
//                        OUT: int32 status[3]; output bytes [num_indices][row_words * 64].
// Exit status 0 when everything matches.
#include <cstdio>
#include <string>
#include <vector>

#include "hetero_kernels.h"
#include "tb_common.h"

namespace {

struct Outcome {
  int status[3] = {0, 0, 0};
  std::vector<unsigned char> out;
};

Outcome run_kernel(const std::vector<unsigned char>& table, int num_rows, int row_words,
                   const std::vector<int>& indices) {
  std::vector<hetero_word_t> words(size_t(num_rows) * row_words), out(indices.size() * row_words);
  tb::pack_bytes(table.data(), table.size(), words.data());
  Outcome o;
  hetero_gather(words.data(), indices.data(), out.data(), int(indices.size()), row_words, num_rows, o.status);
  o.out.resize(out.size() * 64);
  tb::unpack_bytes(out.data(), out.size(), o.out.data());
  return o;
}

Outcome reference(const std::vector<unsigned char>& table, int num_rows, int row_words,
                  const std::vector<int>& indices) {
  const size_t row_bytes = size_t(row_words) * 64;
  Outcome o;
  o.out.assign(indices.size() * row_bytes, 0);
  for (size_t i = 0; i < indices.size(); ++i) {
    const int index = indices[i];
    if (index >= 0 && index < num_rows)
      std::memcpy(&o.out[i * row_bytes], &table[size_t(index) * row_bytes], row_bytes);
    else if (index != -1 && o.status[0] == HETERO_OK)
      o.status[0] = HETERO_INDEX_OUT_OF_RANGE, o.status[1] = int(i), o.status[2] = index;
  }
  return o;
}

bool same(const Outcome& got, const Outcome& want, const std::string& name) {
  for (int i = 0; i < 3; ++i)
    if (got.status[i] != want.status[i]) {
      std::printf("FAIL %s: status[%d] kernel %d reference %d\n", name.c_str(), i, got.status[i], want.status[i]);
      return false;
    }
  if (got.out != want.out) {
    std::printf("FAIL %s: output rows differ\n", name.c_str());
    return false;
  }
  return true;
}

int self_test() {
  tb::Rng rng(7);
  struct Shape { int num_rows, row_words, num_indices; bool bad; };
  const Shape shapes[] = {{1, 1, 1, false},    {5, 3, 0, false},   {64, 2, 200, false},
                          {300, 64, 50, false}, {17, 4, 33, true},  {1000, 1, 4096, true}};
  int failures = 0, cases = 0;
  for (const Shape& s : shapes) {
    std::vector<unsigned char> table(size_t(s.num_rows) * s.row_words * 64);
    for (auto& b : table) b = (unsigned char)(rng.next());
    std::vector<int> indices(s.num_indices);
    for (int& i : indices) i = rng.uniform_int(-1, s.num_rows - 1);
    if (s.bad && s.num_indices > 2) {
      indices[s.num_indices / 2] = s.num_rows;  // first bad one
      indices[s.num_indices - 1] = -7;
    }
    const std::string name = "rows=" + std::to_string(s.num_rows) + " words=" + std::to_string(s.row_words) +
                             " indices=" + std::to_string(s.num_indices);
    ++cases;
    if (!same(run_kernel(table, s.num_rows, s.row_words, indices), reference(table, s.num_rows, s.row_words, indices),
              name))
      ++failures;
  }
  int status[3] = {-1, -1, -1};
  hetero_gather(nullptr, nullptr, nullptr, 1, 0, 1, status);
  ++cases;
  if (status[0] != HETERO_BAD_ARGUMENT) {
    std::printf("FAIL row_words=0: status %d\n", status[0]);
    ++failures;
  }
  std::printf("%s: %d of %d gather cases match the host reference\n", failures ? "FAIL" : "PASS", cases - failures,
              cases);
  return failures ? 1 : 0;
}

int file_mode(const char* in_path, const char* out_path) {
  FILE* in = std::fopen(in_path, "rb");
  if (!in) { std::printf("cannot open %s\n", in_path); return 2; }
  int header[3];
  bool ok = tb::read_exact(in, header, sizeof header) && header[0] > 0 && header[1] > 0 && header[2] >= 0;
  const int num_rows = header[0], row_words = header[1], num_indices = header[2];
  std::vector<unsigned char> table;
  std::vector<int> indices;
  if (ok) {
    table.resize(size_t(num_rows) * row_words * 64);
    indices.resize(num_indices);
    ok = tb::read_exact(in, table.data(), table.size()) && tb::read_exact(in, indices.data(), indices.size() * 4);
  }
  std::fclose(in);
  if (!ok) { std::printf("malformed input %s\n", in_path); return 2; }
  const Outcome got = run_kernel(table, num_rows, row_words, indices);
  FILE* out = std::fopen(out_path, "wb");
  if (!out || !tb::write_exact(out, got.status, sizeof got.status) || !tb::write_exact(out, got.out.data(), got.out.size())) {
    std::printf("cannot write %s\n", out_path);
    return 2;
  }
  std::fclose(out);
  return same(got, reference(table, num_rows, row_words, indices), "file case") ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3) return file_mode(argv[1], argv[2]);
  if (argc == 1) return self_test();
  std::printf("usage: %s [IN OUT]\n", argv[0]);
  return 2;
}
