"""CUDA top-k on inputs that defeat shortcuts of the selection kernels (thresholds estimated
from part of a row, counting-rank final sort, narrowed sort bits, warp-aggregated counting,
the streaming level's running bar and in-place cuts):
sorted rows, all-equal rows, many ties at the k-th value, specials, short valid lengths, rows
whose early part is all small.  Compared bit for bit with a numpy total-order top-k.

Run on a GPU machine with ``JAX_PLATFORMS=cuda python -m pytest tests/test_cuda_topk.py -q``.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from conftest import SPECIALS, numpy_topk, run_stepped_in_command_buffers, skip_module_without_cuda

skip_module_without_cuda()

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


@functools.lru_cache(maxsize=None)
def cuda_topk(k):
    return jax.jit(lambda s, l: jh.topk(s, k, lengths=l, backend="cuda"))


def check(scores, k, lengths=None):
    check_many(scores, (k,), lengths)


def check_many(scores, ks, lengths=None):
    """Each k of ks against one reference: the top-k is a prefix of the top-max(ks)."""
    if lengths is None:
        lengths = np.full(scores.shape[:-1], scores.shape[-1], np.int32)
    lengths = jnp.asarray(lengths, jnp.int32)
    ref_values, ref_indices = numpy_topk(scores, max(ks), lengths)
    for k in ks:
        values, indices = cuda_topk(k)(scores, lengths)
        np.testing.assert_array_equal(np.asarray(indices), ref_indices[..., :k], err_msg=f"k={k}")
        got, want = np.asarray(values), np.asarray(ref_values[..., :k])
        view = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
        np.testing.assert_array_equal(got.view(view), want.view(view), err_msg=f"k={k}")


def pattern_rows(name, rows, n, rng):
    """[rows, n] float32 scores of one adversarial pattern."""
    i = np.arange(n, dtype=np.float32)
    if name == "ascending":
        return np.tile(i, (rows, 1))
    if name == "descending":
        return np.tile(-i, (rows, 1))
    if name == "all_equal":
        return np.full((rows, n), 0.5, np.float32)
    if name == "few_values":  # many ties at the k-th value
        return rng.integers(-2, 3, (rows, n)).astype(np.float32)
    if name == "specials":
        return rng.choice(SPECIALS, (rows, n))
    if name == "signed_zeros_and_neg_inf":
        return rng.choice(np.array([0.0, -0.0, -np.inf, -np.nan], np.float32), (rows, n))
    if name == "small_head":  # the first three quarters are tiny, the winners all come late
        x = rng.standard_normal((rows, n)).astype(np.float32)
        x[:, : 3 * n // 4] = -1e30
        return x
    if name == "large_tail_ramp":  # ascending ramp of normal noise: each tile beats the last
        return (rng.standard_normal((rows, n)) + np.linspace(-50, 50, n)).astype(np.float32)
    if name == "one_hot_bins":  # everything in one radix bin except a few outliers
        x = np.full((rows, n), 1.0, np.float32) + rng.integers(0, 4, (rows, n)).astype(np.float32) * 2**-20
        x[:, rng.integers(0, n, 5)] = 3.0
        return x
    return rng.standard_normal((rows, n)).astype(np.float32)


PATTERNS = ["ascending", "descending", "all_equal", "few_values", "specials", "signed_zeros_and_neg_inf",
            "small_head", "large_tail_ramp", "one_hot_bins", "normal"]


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_patterns_one_cluster(pattern, dtype):
    # One row in one cluster (final level only) and several shorter rows (clusters of one CTA;
    # rows of 3000 with k <= 256 take short_select.cuh).
    rng = np.random.default_rng(20)
    for rows, n in ((1, 131_072), (6, 20_000), (3, 3000)):
        scores = jnp.asarray(pattern_rows(pattern, rows, n, rng)).astype(dtype)
        for k in (1, 16, 64, 256, 257, 2048):
            check(scores, min(k, n))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_topk_patterns_candidate_levels(pattern, dtype):
    # Rows longer than one cluster: segments, candidate levels.
    rng = np.random.default_rng(21)
    scores = jnp.asarray(pattern_rows(pattern, 2, 600_000, rng)).astype(dtype)
    for k in (1, 64, 2048):
        check(scores, k)
    check(scores, 300, np.array([600_000, 262_145], np.int32))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_patterns_many_long_rows(pattern, dtype):
    # Enough rows of 131,072 that each gets a cluster of two CTAs, so 16-bit inputs stage
    # 65,536 keys per CTA (survivor positions up to 65,535), and float32 inputs their upper 16
    # bits (64 x 131,072 in one wave); five rows of 1M take clusters of 16 of those.  The odd
    # length puts every row but the first off a 16-byte boundary.  k >= 1024 keeps these rows
    # off the streaming level.
    rng = np.random.default_rng(29)
    for rows, n in ((64, 131_072), (40, 131_071), (5, 1_000_000)):
        scores = jnp.asarray(pattern_rows(pattern, rows, n, rng)).astype(dtype)
        lengths = np.full(rows, n, np.int32)
        lengths[:4] = [0, 65_536, 65_537, n - 1]
        check_many(scores, (1024, 2048), lengths)


@pytest.mark.parametrize("pattern", ["normal", "few_values", "all_equal", "specials", "ascending"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_topk_order_across_cluster(pattern, dtype):
    # Final levels with more than 256 winners in clusters of 8 or 16 order them across the
    # cluster in slices (select.cuh, order_across_cluster): a row of 131,072 (one level, 16
    # CTAs) and rows of 600,000 (a candidate level, then a final one of 8 or 16 CTAs, as the
    # number of candidate segments gives).  Winner counts that are
    # not powers of two, and valid lengths below k, leave the last slices short or empty; ties
    # span slices.
    rng = np.random.default_rng(30)
    for rows, n in ((1, 131_072), (2, 600_000)):
        scores = jnp.asarray(pattern_rows(pattern, rows, n, rng)).astype(dtype)
        check_many(scores, (300, 1025, 1536, 2047, 2048))
        for length in (n - 3, 2100, 1500, 300):
            check_many(scores, (1025, 2048), np.full(rows, length, np.int32))


@pytest.mark.parametrize("pattern", PATTERNS)
def test_topk_row_merged_level(pattern):
    # float32 rows too long for one wave of 65,536 truncated keys per CTA, and with k too large
    # for the streaming level, run as one row-merged level (select.cuh, SelectParams::row_merge):
    # one row of 9M over clusters of 16, two rows of 4.5M over clusters of 8.  Lengths below n
    # and below k leave CTAs empty and slots unfilled.
    rng = np.random.default_rng(31)
    for rows, n, lengths in ((1, 9_000_000, (8_765_433,)), (2, 4_500_000, (4_500_000, 1000))):
        scores = jnp.asarray(pattern_rows(pattern, rows, n, rng))
        check_many(scores, (1536, 2048))
        check_many(scores, (2048,), np.array(lengths, np.int32))


# The streaming level (csrc/cuda/filter_select.cuh) takes rows with at least max(64 k, 8192)
# entries per chunk when the chunks fill at least half the GPU's CTA slots (264 on an H100 or
# H200); the shapes below are chosen to take it there.


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_patterns_streaming_level(pattern, dtype):
    # Four rows of 1.5M in ~60 chunks each, then candidate levels.  Valid lengths end mid-chunk,
    # mid-step, and below k (later chunks are empty).
    rng = np.random.default_rng(25)
    n = 1_500_000
    scores = jnp.asarray(pattern_rows(pattern, 4, n, rng)).astype(dtype)
    check_many(scores, (1, 16, 257), np.array([n, 1_000_001, 5000, 100], np.int32))


@pytest.mark.parametrize("pattern", ["normal", "ascending", "few_values", "specials"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_streaming_level_unaligned_rows(pattern, dtype):
    # Rows of an odd length: every row but the first starts off a 16-byte boundary, so the
    # streaming level loads its chunks entry by entry instead of by cp.async vectors.
    rng = np.random.default_rng(28)
    n = 1_500_001
    scores = jnp.asarray(pattern_rows(pattern, 4, n, rng)).astype(dtype)
    check_many(scores, (1, 16, 257), np.array([n, n - 4096, 4097, 99], np.int32))


@pytest.mark.parametrize("pattern", ["normal", "ascending", "descending", "all_equal", "few_values",
                                     "small_head", "large_tail_ramp"])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_topk_streaming_level_large_k(pattern, dtype):
    # One row of 18M: chunks of at least 64 * 2048 entries, so k = 2048 streams too and the
    # kept entries are cut several times per chunk.
    rng = np.random.default_rng(26)
    scores = jnp.asarray(pattern_rows(pattern, 1, 18_000_000, rng)).astype(dtype)
    check_many(scores, (1000, 2048))


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_patterns_streaming_one_chunk(pattern, dtype):
    # 300 rows of 32,768, one chunk each: the streaming kernel orders and writes the output
    # itself (counting rank up to k = 256, block sort above), over two waves of CTAs.
    rng = np.random.default_rng(27)
    scores = jnp.asarray(pattern_rows(pattern, 300, 32_768, rng)).astype(dtype)
    lengths = rng.integers(0, 32_769, 300).astype(np.int32)
    lengths[:4] = [0, 1, 300, 32_768]
    check_many(scores, (1, 64, 256, 512), lengths)


@pytest.mark.parametrize("pattern", PATTERNS + ["one_outlier"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_short_rows(pattern, dtype):
    # Rows of at most 8192 with k <= 256: short_select.cuh (a CTA of 64-512 threads per row,
    # sized to n and k, the keys in registers, a floor from group maxima, radix passes over
    # [floor, max]).  One outlier per row makes the first pass's crossing digit hold nearly
    # every key, so further passes run; few_values and all_equal end in the tie scan; odd n
    # leaves rows unaligned.  k = 257 takes the cluster select on the same rows.
    rng = np.random.default_rng(31)
    for rows, n in ((64, 8192), (7, 8191), (16, 3000), (200, 8192), (300, 1024), (40, 2048), (5, 100)):
        if pattern == "one_outlier":
            x = rng.standard_normal((rows, n)).astype(np.float32)
            x[np.arange(rows), rng.integers(0, n, rows)] = 1e30
        else:
            x = pattern_rows(pattern, rows, n, rng)
        scores = jnp.asarray(x).astype(dtype)
        ks = tuple(sorted({min(k, n) for k in (1, 7, 32, 64, 128, 255, 256, 257)}))
        check_many(scores, ks)
        lengths = rng.integers(0, n + 1, rows).astype(np.int32)
        lengths[:3] = [0, min(n, 100), n]
        check_many(scores, ks, lengths)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_short_lengths(dtype):
    # Valid lengths shorter than k, than a tile, than a warp; zero; exactly k; one past k.
    rng = np.random.default_rng(22)
    n = 50_000
    lengths = np.array([0, 1, 5, 31, 33, 255, 256, 257, 2047, 2048, 2049, 16_383, 16_385, n], np.int32)
    base = rng.standard_normal((len(lengths), n)).astype(np.float32)
    base[1::2, :4000] = -np.inf  # some rows start with their smallest values
    scores = jnp.asarray(base).astype(dtype)
    for k in (1, 16, 256, 257, 2048):
        check(scores, k, lengths)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_k_equals_n_and_tiny_rows(dtype):
    rng = np.random.default_rng(23)
    for n in (1, 2, 31, 256, 257, 2048):
        scores = jnp.asarray(rng.choice(SPECIALS, (3, n))).astype(dtype)
        for k in sorted({1, n // 2 or 1, n}):
            check(scores, k)
            check(scores, k, np.array([n, n // 3, 0], np.int32))


def test_topk_ties_at_threshold_many_rows():
    # 256 rows of 32768 with four distinct values: the k-th value is shared by thousands.
    rng = np.random.default_rng(24)
    scores = jnp.asarray(rng.integers(0, 4, (256, 32_768)).astype(np.float32))
    check(scores, 64)
    lengths = rng.integers(0, 32_769, 256).astype(np.int32)
    check(scores, 64, lengths)
    check(scores.astype(jnp.bfloat16), 2048, lengths)


def test_topk_traced_into_a_command_buffer():
    # XLA traces graph-safe handlers into command buffers (CUDA graphs) and replays them
    # without calling the handler again, so each call site keeps its own scratch memory
    # (csrc/cuda/graph_safe.h).  A loop whose body runs levels that need scratch -- candidate
    # levels (2 x 600,000, k=2048), the streaming level (4 x 1.5M, k=16) and a full sort
    # (k > 2048) -- next to one that needs none, on a different input at every step: every
    # step must match the reference.
    rng = np.random.default_rng(32)
    cases = [((2, 600_000), 2048), ((4, 1_500_000), 16), ((3, 5000), 3000), ((64, 8192), 256)]
    steps = 3
    inputs = [jnp.asarray(rng.standard_normal((steps, *shape)).astype(np.float32)) for shape, _ in cases]

    one = lambda xs: tuple(jh.topk(x, k, backend="cuda") for x, (_, k) in zip(xs, cases))
    for outs in run_stepped_in_command_buffers(one, inputs, calls=len(cases)):
        for (values, indices), x, (shape, k) in zip(outs, inputs, cases):
            for step in range(steps):
                full = np.full(shape[:-1], shape[-1], np.int32)
                ref_values, ref_indices = numpy_topk(x[step], k, full)
                np.testing.assert_array_equal(np.asarray(indices[step]), ref_indices, err_msg=f"{shape} k={k}")
                np.testing.assert_array_equal(np.asarray(values[step]), ref_values, err_msg=f"{shape} k={k}")
