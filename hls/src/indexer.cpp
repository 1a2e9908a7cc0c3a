// hetero_indexer: fused relevancy scoring and top-k (see hls/include/hetero_kernels.h).
//
// Per row, a DATAFLOW region of two processes joined by a FIFO:
//   score_row   streams the row's entries from HBM (one 512-bit word per cycle, II=1) and
//               emits one (score key, index) per entry;
//   select_topk the threshold filter + sorter (topk_sorter.h); while it sorts, the scorer
//               keeps filling the FIFO.
#include <hls_stream.h>

#include "hetero_kernels.h"
#include "indexer_score.h"
#include "topk_sorter.h"

namespace hetero {
namespace {

int check_arguments(int kind, int key_format, float key_scale, int num_entries, int row_stride,
                    int dim, int heads, int k, int rows) {
  if (kind < HETERO_KIND_DOT || kind > HETERO_KIND_DSA) return 1;
  if (key_format < HETERO_KEYS_F32 || key_format > HETERO_KEYS_INT16) return 2;
  if (dim < 1 || dim > HETERO_MAX_DIM) return 3;
  if (heads < 1 || heads > HETERO_MAX_HEADS) return 4;
  if (k < 1 || k > HETERO_MAX_K || k > num_entries) return 5;
  if (rows < 1 || num_entries < 1 || row_stride < num_entries) return 6;
  if (key_format == HETERO_KEYS_INT16 && !(key_scale > 0.0f && key_scale < 3.4028235e38f)) return 7;
  return 0;
}

// Reads heads * dim query values and heads weights (a wide burst from the query port); the
// padding slots are never read by the scorers, except the head reductions, which mask them.
void load_query(const float* query, const float* weights, int row, int kind, int key_format,
                float key_scale, int dim, int heads, RowQuery& rq) {
  const bool scaled = key_format == HETERO_KEYS_INT16;
  int h = 0, d = 0;
  for (int i = 0; i < heads * dim; ++i) {
#pragma HLS PIPELINE II=1
    const float q = query[(long)row * heads * dim + i];
    // Unscaled formats skip the multiply so float32/bfloat16 queries stay exact.
    rq.q[h][d] = scaled ? q * key_scale : q;
    if (++d == dim) d = 0, ++h;
  }
  for (h = 0; h < HETERO_MAX_HEADS; ++h) {
#pragma HLS PIPELINE II=1
    rq.w[h] = (kind == HETERO_KIND_DSA && h < heads) ? weights[(long)row * heads + h] : kNegZero;
  }
  if (kind == HETERO_KIND_DSA) return;
  for (d = 0; d < dim; ++d) {
#pragma HLS PIPELINE II=1
    float all[HETERO_MAX_HEADS], pos[HETERO_MAX_HEADS], neg[HETERO_MAX_HEADS];
    for (int g = 0; g < HETERO_MAX_HEADS; ++g) {
      const float q = g < heads ? rq.q[g][d] : kNegZero;
      all[g] = q;
      pos[g] = q >= 0.0f ? q : kNegZero;
      neg[g] = q < 0.0f ? q : kNegZero;
    }
    rq.qa[d] = kind == HETERO_KIND_QUEST ? Tree<HETERO_MAX_HEADS>::sum(pos) : Tree<HETERO_MAX_HEADS>::sum(all);
    rq.qb[d] = Tree<HETERO_MAX_HEADS>::sum(neg);
  }
}

// The elements of one word as float32 (lanes past the format's lane count are unused).
void decode_word(const hetero_word_t& word, int key_format, float x[kMaxLanes]) {
#pragma HLS INLINE
  for (int l = 0; l < kMaxLanes; ++l) x[l] = l < lanes_of(key_format) ? decode(word, l, key_format) : kNegZero;
}

// One word's lane products against query vector qv (offset by the word's first element),
// summed by Tree<32>. Lanes past dim give -0.0.
float lanes_dot(const float x[kMaxLanes], const float* qv, int first, int dim, int lanes) {
#pragma HLS INLINE
  float prod[kMaxLanes];
  for (int l = 0; l < kMaxLanes; ++l) {
    const int d = first + l;
    prod[l] = (l < lanes && d < dim) ? qv[d] * x[l] : kNegZero;
  }
  return Tree<kMaxLanes>::sum(prod);
}

float lanes_quest(const float lo[kMaxLanes], const float hi[kMaxLanes], const RowQuery& rq, int first, int dim,
                  int lanes) {
#pragma HLS INLINE
  float term[kMaxLanes];
  for (int l = 0; l < kMaxLanes; ++l) {
    const int d = first + l;
    term[l] = (l < lanes && d < dim) ? quest_term(lo[l], hi[l], rq.qa[d], rq.qb[d]) : kNegZero;
  }
  return Tree<kMaxLanes>::sum(term);
}

// dot / quest: one word per cycle; an entry's word sums go through Tree<16>.
void score_blocks(const hetero_word_t* memory, const hetero_word_t* memory_hi, long base, int count,
                  int kind, int key_format, int dim, const RowQuery& rq, hls::stream<Scored>& out) {
  const int words = entry_words_of(dim, key_format), lanes = lanes_of(key_format);
  float partial[HETERO_MAX_ENTRY_WORDS];
#pragma HLS ARRAY_PARTITION variable=partial complete
  for (int w = 0; w < HETERO_MAX_ENTRY_WORDS; ++w) partial[w] = kNegZero;
  int e = 0, w = 0;
  for (long i = 0; i < (long)count * words; ++i) {
#pragma HLS PIPELINE II=1
    const long at = base + i;
    float lo[kMaxLanes], hi[kMaxLanes];
    decode_word(memory[at], key_format, lo);
    if (kind == HETERO_KIND_QUEST) {
      decode_word(memory_hi[at], key_format, hi);
      partial[w] = lanes_quest(lo, hi, rq, w * lanes, dim, lanes);
    } else {
      partial[w] = lanes_dot(lo, rq.qa, w * lanes, dim, lanes);
    }
    if (w == words - 1) {
      out.write(Scored{order_key(Tree<HETERO_MAX_ENTRY_WORDS>::sum(partial)), e});
      ++e;
      w = 0;
    } else {
      ++w;
    }
  }
}

// dsa: each word is scored against kHeadLanes heads per cycle (kHeadLanes * 32 products);
// logit_h = Tree<16> over the entry's words, then score = Tree<64> over heads of
// w_h * ReLU(logit_h). One entry takes words * ceil(heads / kHeadLanes) cycles to score plus
// ceil(heads / kHeadLanes) to finish: unlike dot/quest, dsa with many heads is compute-bound.
void score_dsa(const hetero_word_t* memory, long base, int count, int key_format, int dim, int heads,
               const RowQuery& rq, hls::stream<Scored>& out) {
  const int words = entry_words_of(dim, key_format), lanes = lanes_of(key_format);
  float partial[HETERO_MAX_HEADS][HETERO_MAX_ENTRY_WORDS];
#pragma HLS ARRAY_PARTITION variable=partial dim=1 cyclic factor=8
#pragma HLS ARRAY_PARTITION variable=partial dim=2 complete
  float weighted[HETERO_MAX_HEADS];
#pragma HLS ARRAY_PARTITION variable=weighted complete
  for (int h = 0; h < HETERO_MAX_HEADS; ++h) {
    weighted[h] = kNegZero;
    for (int w = 0; w < HETERO_MAX_ENTRY_WORDS; ++w) partial[h][w] = kNegZero;
  }
  for (int e = 0; e < count; ++e) {
    for (int w = 0; w < words; ++w) {
      float x[kMaxLanes];
      decode_word(memory[base + (long)e * words + w], key_format, x);
      for (int h0 = 0; h0 < heads; h0 += kHeadLanes) {
#pragma HLS PIPELINE II=1
        for (int j = 0; j < kHeadLanes; ++j) {
#pragma HLS UNROLL
          const int h = h0 + j;
          if (h < heads) partial[h][w] = lanes_dot(x, rq.q[h], w * lanes, dim, lanes);
        }
      }
    }
    for (int h0 = 0; h0 < heads; h0 += kHeadLanes) {
#pragma HLS PIPELINE II=1
      for (int j = 0; j < kHeadLanes; ++j) {
#pragma HLS UNROLL
        const int h = h0 + j;
        if (h < heads) weighted[h] = rq.w[h] * relu(Tree<HETERO_MAX_ENTRY_WORDS>::sum(partial[h]));
      }
    }
    out.write(Scored{order_key(Tree<HETERO_MAX_HEADS>::sum(weighted)), e});
  }
}

void score_row(const hetero_word_t* memory, const hetero_word_t* memory_hi, long base, int count,
               int kind, int key_format, int dim, int heads, const RowQuery& rq,
               hls::stream<Scored>& out) {
  if (kind == HETERO_KIND_DSA)
    score_dsa(memory, base, count, key_format, dim, heads, rq, out);
  else
    score_blocks(memory, memory_hi, base, count, kind, key_format, dim, rq, out);
}

void process_row(const hetero_word_t* memory, const hetero_word_t* memory_hi, long base, int count,
                 int kind, int key_format, int dim, int heads, int k, const RowQuery& rq, TopK& top) {
#pragma HLS DATAFLOW
  hls::stream<Scored> scored("scored");
#pragma HLS STREAM variable=scored depth=4096
  score_row(memory, memory_hi, base, count, kind, key_format, dim, heads, rq, scored);
  select_topk(scored, count, k, top);
}

void write_row(const TopK& top, int row, int k, float* out_values, int* out_indices) {
  for (int j = 0; j < k; ++j) {
#pragma HLS PIPELINE II=1
    const bool found = j < top.best_count;
    out_values[(long)row * k + j] = found ? key_to_float(top.best[j].key) : -__builtin_inff();
    out_indices[(long)row * k + j] = found ? top.best[j].index : -1;
  }
}

}  // namespace
}  // namespace hetero

void hetero_indexer(const hetero_word_t* memory, const hetero_word_t* memory_hi,
                    const float* query, const float* weights, const int* lengths,
                    int kind, int key_format, float key_scale,
                    int num_entries, int row_stride, int dim, int heads, int k, int rows,
                    float* out_values, int* out_indices, int* status) {
#pragma HLS INTERFACE m_axi port=memory offset=slave bundle=gmem_keys max_read_burst_length=64 num_read_outstanding=32 depth=4096
#pragma HLS INTERFACE m_axi port=memory_hi offset=slave bundle=gmem_keys_hi max_read_burst_length=64 num_read_outstanding=32 depth=4096
#pragma HLS INTERFACE m_axi port=query offset=slave bundle=gmem_query depth=16384
#pragma HLS INTERFACE m_axi port=weights offset=slave bundle=gmem_query depth=64
#pragma HLS INTERFACE m_axi port=lengths offset=slave bundle=gmem_query depth=64
#pragma HLS INTERFACE m_axi port=out_values offset=slave bundle=gmem_out depth=2048
#pragma HLS INTERFACE m_axi port=out_indices offset=slave bundle=gmem_out depth=2048
#pragma HLS INTERFACE m_axi port=status offset=slave bundle=gmem_out depth=3
#pragma HLS INTERFACE s_axilite port=kind
#pragma HLS INTERFACE s_axilite port=key_format
#pragma HLS INTERFACE s_axilite port=key_scale
#pragma HLS INTERFACE s_axilite port=num_entries
#pragma HLS INTERFACE s_axilite port=row_stride
#pragma HLS INTERFACE s_axilite port=dim
#pragma HLS INTERFACE s_axilite port=heads
#pragma HLS INTERFACE s_axilite port=k
#pragma HLS INTERFACE s_axilite port=rows
#pragma HLS INTERFACE s_axilite port=return
  using namespace hetero;
  const int bad = check_arguments(kind, key_format, key_scale, num_entries, row_stride, dim, heads, k, rows);
  status[0] = bad ? HETERO_BAD_ARGUMENT : HETERO_OK;
  status[1] = bad;
  status[2] = 0;
  if (bad) return;
  static_assert(HETERO_MAX_DIM <= HETERO_MAX_ENTRY_WORDS * 16, "float32 entries must fit the word slots");
  const int words = entry_words_of(dim, key_format);
  RowQuery rq;
  TopK top;
  for (int r = 0; r < rows; ++r) {
    const int valid = lengths[r] < 0 ? 0 : (lengths[r] > num_entries ? num_entries : lengths[r]);
    load_query(query, weights, r, kind, key_format, key_scale, dim, heads, rq);
    process_row(memory, memory_hi, (long)r * row_stride * words, valid, kind, key_format, dim, heads, k, rq, top);
    write_row(top, r, k, out_values, out_indices);
  }
}
