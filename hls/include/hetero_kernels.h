// Top-level FPGA kernels of jax_hetero (Vitis HLS, Alveo U55C).
//
// These two functions are, at once:
//   * the v++ kernels (each pointer argument is an AXI4 master port on HBM, each scalar an
//     AXI4-Lite register; see hls/connectivity.cfg for the port -> HBM pseudo-channel map),
//   * what the C-simulation testbenches in hls/tb/ call, and
//   * what the emulated FPGA device in csrc/fpga/ calls in-process.
// The sources (hls/src/*.cpp) compile with plain `g++ -std=c++17 -Ihls/include -Ihls/compat`
// (add -Wno-unknown-pragmas to silence the HLS pragmas). They hold no global or static mutable
// state: concurrent calls on different buffers are safe. Results are deterministic, so the
// emulated device is bit-identical to C simulation when built with the same flags
// (-ffp-contract=off, no -ffast-math). Under g++ a hetero_indexer call keeps about 120 KB of
// on-chip buffers on the calling thread's stack and an unbounded FIFO (8 bytes per valid entry
// of a row) on the heap; hetero_gather's FIFO holds its whole output (C simulation runs the
// DATAFLOW stages one after the other).
//
// 512-bit words: `hetero_word_t` is ap_uint<512>. With hls/compat/ap_int.h it is a standard
// layout struct of 8 little-endian uint64 (sizeof == 64, alignof == 8), i.e. exactly the 64
// bytes of the device buffer: element i of a word occupies bits [i*w, (i+1)*w) where w is the
// element width, so a little-endian host array of w-bit elements copied byte-for-byte into
// words gives the layout below.
#pragma once

#include <ap_int.h>

typedef ap_uint<512> hetero_word_t;

// ---- limits (checked; a violation returns a status code, never aborts) -----------------
enum {
  HETERO_WORD_BITS = 512,
  HETERO_MAX_K = 2048,          // top-k size
  HETERO_MAX_DIM = 256,         // elements per key / summary vector
  HETERO_MAX_HEADS = 64,        // query heads per row (group size for dot/quest, indexer heads for dsa)
  HETERO_MAX_ENTRY_WORDS = 16,  // ceil(dim / lanes) words per entry (256 float32 = 16 words)
};

// ---- indexer: kind -----------------------------------------------------------------------
enum hetero_kind {
  HETERO_KIND_DOT = 0,    // score = sum_d qs_d * x_d,            qs_d = sum_h q_hd
  HETERO_KIND_QUEST = 1,  // score = sum_d (max(lo,hi)_d * P_d + min(lo,hi)_d * N_d),
                          //   P_d = sum of q_hd >= 0 over h, N_d = sum of q_hd < 0 over h
                          //   (= sum_h sum_d max(q_hd*lo_d, q_hd*hi_d) for finite inputs)
  HETERO_KIND_DSA = 2,    // score = sum_h w_h * ReLU(sum_d q_hd * x_d)
};

// ---- indexer: key element format in HBM --------------------------------------------------
enum hetero_key_format {
  HETERO_KEYS_F32 = 0,   // IEEE float32, 16 per word
  HETERO_KEYS_BF16 = 1,  // bfloat16 (upper 16 bits of a float32), 32 per word; widened exactly
  HETERO_KEYS_INT16 = 2, // two's-complement int16, 32 per word; element value = v * key_scale.
                         //   The kernel folds the scale into the query once per row
                         //   (q'_hd = q_hd * key_scale, rounded to float) and uses float(v)
                         //   as the element, so scores equal the float formulas above on
                         //   dequantised keys up to rounding. key_scale must be > 0 and finite.
};

// ---- status codes (status[0]) ------------------------------------------------------------
enum hetero_status {
  HETERO_OK = 0,
  HETERO_BAD_ARGUMENT = 1,     // a size or enum outside the limits above; status[1] = which:
                               //   1 kind, 2 key_format, 3 dim, 4 heads, 5 k, 6 rows/num_entries/
                               //   row_stride, 7 key_scale, 8 row_words/num_rows/num_indices
  HETERO_INDEX_OUT_OF_RANGE = 2,  // gather: status[1] = position of the first bad index,
                                  //         status[2] = its value
};

// Fused relevancy + top-k over `rows` independent rows (a row = one (batch, KV head) pair for
// dot/quest, one batch element for dsa). Scores never leave the chip.
//
// memory     [rows][row_stride][entry_words] words, entry_words = ceil(dim / lanes), lanes =
//            16 (F32) or 32 (BF16, INT16). Entry e of row r starts at word
//            (r * row_stride + e) * entry_words; its elements 0..dim-1 are packed from the
//            low bits of its first word on; lanes past dim are ignored (never read into a
//            score). dot: block summaries (mean); quest: block minima; dsa: indexer keys.
// memory_hi  same layout as `memory`: block maxima for quest. Unused (may be null, never
//            read) for dot and dsa.
// query      float32 [rows][heads][dim], dense. dot/quest: the query heads of the row's KV
//            group; dsa: the indexer heads.
// weights    float32 [rows][heads]: dsa head weights w_h. Unused (may be null) otherwise.
// lengths    int32 [rows]: valid entries of each row, in [0, num_entries] (values outside are
//            clamped); entries e >= lengths[r] are never read or scored.
// kind       hetero_kind; key_format: hetero_key_format; key_scale: INT16 scale (ignored
//            for F32/BF16).
// num_entries entries per row that may be valid (1 <= num_entries <= row_stride < 2^31);
// row_stride entries allocated per row in `memory` (capacity, lets the host append rows).
// dim        1..HETERO_MAX_DIM; heads 1..HETERO_MAX_HEADS; k 1..min(HETERO_MAX_K, num_entries).
// rows       >= 1.
// out_values float32 [rows][k]: the k best scores, descending in the total order of
//            jax.lax.top_k (NaN above +inf, -0.0 below +0.0).
// out_indices int32 [rows][k]: entry index of each value; ties go to the lower index.
//            When a row has fewer than k valid entries the remaining slots are (-inf, -1).
// status     int32 [3]: status[0] = hetero_status, status[1..2] details. On a bad argument
//            nothing else is written.
//
// Arithmetic (all float32, round to nearest even, no FMA contraction; the exact order, which
// a host reference must follow for bit-equality, is in hls/src/indexer_score.h):
//   products of query and element per lane; lanes of one word summed by a pairwise tree
//   over the lane slots (lanes past dim contribute +0.0); the words of an entry summed in
//   word order starting from word 0; dsa heads summed in head order starting from head 0.
void hetero_indexer(const hetero_word_t* memory, const hetero_word_t* memory_hi,
                    const float* query, const float* weights, const int* lengths,
                    int kind, int key_format, float key_scale,
                    int num_entries, int row_stride, int dim, int heads, int k, int rows,
                    float* out_values, int* out_indices, int* status);

// Gather of table rows (KV pages, documents, memory slots).
//
// table       [num_rows][row_words] words: row i at word i * row_words (the host pads rows to
//             whole 64-byte words).
// indices     int32 [num_indices]: -1 gives an all-zero output row; any other value outside
//             [0, num_rows) is an error.
// out         [num_indices][row_words] words.
// row_words   >= 1; num_rows >= 1; num_indices >= 0.
// status      int32 [3]: HETERO_OK, or HETERO_INDEX_OUT_OF_RANGE with status[1] = first bad
//             position and status[2] = its index value (its output row, and every other bad
//             one, is written as zeros; good rows are still copied), or HETERO_BAD_ARGUMENT.
void hetero_gather(const hetero_word_t* table, const int* indices, hetero_word_t* out,
                   int num_indices, int row_words, int num_rows, int* status);

