// hetero_gather: rows of a table by index (see hls/include/hetero_kernels.h).
//
// DATAFLOW of two processes: read_rows fetches each selected row as a burst of row_words
// 512-bit words (II=1) and pushes them into a FIFO; write_rows drains it into `out` as one
// long write burst. Index -1 and bad indices produce zero words without touching the table.
#include <hls_stream.h>

#include "hetero_kernels.h"

namespace hetero {
namespace {

struct BadIndex {
  int position;  // first bad position, or -1 when every index was good
  int value;
};

void read_rows(const hetero_word_t* table, const int* indices, int num_indices, int row_words,
               int num_rows, hls::stream<hetero_word_t>& words, BadIndex& bad) {
  bad.position = -1;
  bad.value = 0;
  for (int i = 0; i < num_indices; ++i) {
    const int index = indices[i];
    const bool in_range = index >= 0 && index < num_rows;
    if (!in_range && index != -1 && bad.position < 0) {
      bad.position = i;
      bad.value = index;
    }
    const long base = (long)(in_range ? index : 0) * row_words;
    for (int w = 0; w < row_words; ++w) {
#pragma HLS PIPELINE II=1
      words.write(in_range ? table[base + w] : hetero_word_t(0));
    }
  }
}

void write_rows(hls::stream<hetero_word_t>& words, long total_words, hetero_word_t* out) {
  for (long i = 0; i < total_words; ++i) {
#pragma HLS PIPELINE II=1
    out[i] = words.read();
  }
}

void gather_rows(const hetero_word_t* table, const int* indices, hetero_word_t* out, int num_indices,
                 int row_words, int num_rows, BadIndex& bad) {
#pragma HLS DATAFLOW
  hls::stream<hetero_word_t> words("words");
#pragma HLS STREAM variable=words depth=512
  read_rows(table, indices, num_indices, row_words, num_rows, words, bad);
  write_rows(words, (long)num_indices * row_words, out);
}

}  // namespace
}  // namespace hetero

void hetero_gather(const hetero_word_t* table, const int* indices, hetero_word_t* out,
                   int num_indices, int row_words, int num_rows, int* status) {
#pragma HLS INTERFACE m_axi port=table offset=slave bundle=gmem_table max_read_burst_length=64 num_read_outstanding=32 depth=4096
#pragma HLS INTERFACE m_axi port=indices offset=slave bundle=gmem_indices depth=2048
#pragma HLS INTERFACE m_axi port=out offset=slave bundle=gmem_out max_write_burst_length=64 num_write_outstanding=32 depth=4096
#pragma HLS INTERFACE m_axi port=status offset=slave bundle=gmem_indices depth=3
#pragma HLS INTERFACE s_axilite port=num_indices
#pragma HLS INTERFACE s_axilite port=row_words
#pragma HLS INTERFACE s_axilite port=num_rows
#pragma HLS INTERFACE s_axilite port=return
  using namespace hetero;
  if (num_indices < 0 || row_words < 1 || num_rows < 1) {
    status[0] = HETERO_BAD_ARGUMENT;
    status[1] = 8;
    status[2] = 0;
    return;
  }
  BadIndex bad;
  gather_rows(table, indices, out, num_indices, row_words, num_rows, bad);
  status[0] = bad.position < 0 ? HETERO_OK : HETERO_INDEX_OUT_OF_RANGE;
  status[1] = bad.position < 0 ? 0 : bad.position;
  status[2] = bad.value;
}
