"""The CUDA backend against the jnp reference (backend="xla") on the GPU.

Run on a GPU machine with ``JAX_PLATFORMS=cuda python -m pytest tests/test_cuda.py -q``;
skipped where JAX sees no CUDA device or the CUDA module was not built.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax_hetero as jh
from jax_hetero import backends
from jax_hetero.ops.gather import gather_reference
from jax_hetero.ops.sparse_attention import selected_token_mask, sparse_attention_reference
from conftest import (SPECIALS, child_env, numpy_topk, run_stepped_in_command_buffers, skip_module_without_cuda,
                      topk_edge_rows)

skip_module_without_cuda()

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def needs(op):
    return pytest.mark.skipif(not backends.has(op, "cuda"), reason=f"no CUDA handler for {op}")


def assert_same_bits(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype
    view = {2: np.uint16, 4: np.uint32}[got.dtype.itemsize]
    np.testing.assert_array_equal(got.view(view), want.view(view))


def check_topk(scores, k, lengths=None):
    if lengths is None:
        lengths = jnp.full(scores.shape[:-1], scores.shape[-1], jnp.int32)
    values, indices = jax.jit(lambda s, l: jh.topk(s, k, lengths=l, backend="cuda"))(scores, lengths)
    ref_values, ref_indices = numpy_topk(scores, k, lengths)
    np.testing.assert_array_equal(np.asarray(indices), ref_indices)
    assert_same_bits(values, ref_values)


# ---- topk ----

@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_topk_random(data):
    rows = data.draw(st.integers(1, 5))
    n = data.draw(st.sampled_from([1, 7, 100, 1000, 5000, 40_000]))
    k = data.draw(st.integers(1, min(n, 2048)))
    dtype = data.draw(st.sampled_from(DTYPES))
    rng = np.random.default_rng(data.draw(st.integers(0, 2**31)))
    pool = data.draw(st.sampled_from(["normal", "specials", "few_values"]))
    if pool == "normal":
        scores = rng.standard_normal((rows, n)).astype(np.float32)
    elif pool == "specials":
        scores = rng.choice(SPECIALS, (rows, n))
    else:
        scores = rng.integers(-2, 3, (rows, n)).astype(np.float32)
    lengths = rng.integers(0, n + 1, rows).astype(np.int32)
    check_topk(jnp.asarray(scores).astype(dtype), k, jnp.asarray(lengths))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_edge_cases(dtype):
    n = 3000
    cases = topk_edge_rows(n)
    for row in cases.values():
        for k in (1, 7, 2048, n):  # k = n takes the full-sort path
            check_topk(jnp.asarray(row[None]).astype(dtype), k)
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((4, n)), dtype)
    check_topk(scores, 16, jnp.array([0, 5, n, 1], jnp.int32))
    check_topk(scores, 2500, jnp.array([0, 5, n, 2600], jnp.int32))


@pytest.mark.parametrize("shape,k", [((1, 131_072), 2048), ((3, 300_000), 2048), ((1, 1_500_000), 16),
                                     ((2, 1_000_000), 2048), ((64, 8192), 256), ((2, 3, 500), 5)])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_topk_shapes(shape, k, dtype):
    rng = np.random.default_rng(1)
    scores = jnp.asarray(rng.standard_normal(shape, np.float32)).astype(dtype)
    check_topk(scores, k)
    lengths = jnp.asarray(rng.integers(0, shape[-1] + 1, shape[:-1]).astype(np.int32))
    check_topk(scores, k, lengths)


def test_topk_ties_across_ctas():
    # Many equal scores spread over the CTAs (and levels) of a row: ties go to lower indices.
    for n, k in ((131_072, 2048), (700_000, 100)):
        scores = jnp.asarray(np.random.default_rng(2).integers(0, 3, (2, n)).astype(np.float32))
        check_topk(scores, k)
        check_topk(jnp.zeros((1, n), jnp.bfloat16) - 0.0, k)


def test_topk_vmap_and_grad():
    scores = jax.random.normal(jax.random.key(3), (3, 4, 1000))
    f = lambda s, b: jh.topk(s, 10, backend=b)[0].sum()
    got = jax.jit(jax.vmap(jax.grad(f), in_axes=(0, None)), static_argnums=1)(scores, "cuda")
    want = jax.jit(jax.vmap(jax.grad(f), in_axes=(0, None)), static_argnums=1)(scores, "xla")
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


# ---- gather ----
# The references below skip the ops' run-time index checks, which use host callbacks that
# JAX_PLATFORMS=cuda (no CPU platform) cannot run.

def reference_gather(table, indices):
    flat = gather_reference(table.reshape(table.shape[0], -1), indices.reshape(-1))
    return flat.reshape(indices.shape + table.shape[1:])


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("row_shape", [(), (3,), (64, 2, 128), (5, 7)])
def test_gather_matches_reference(dtype, row_shape):
    rng = np.random.default_rng(4)
    m = 50
    table = jnp.asarray(rng.standard_normal((m,) + row_shape, np.float32)).astype(dtype)
    indices = jnp.asarray(rng.integers(-1, m, (4, 9)).astype(np.int32))
    got = jax.jit(lambda t, i: jh.gather(t, i, backend="cuda"))(table, indices)
    assert_same_bits(got, reference_gather(table, indices))


def test_gather_vmap_broadcasts_table():
    rng = np.random.default_rng(5)
    table = jnp.asarray(rng.standard_normal((20, 16), np.float32))
    indices = jnp.asarray(rng.integers(-1, 20, (3, 2, 6)).astype(np.int32))
    shared = jax.jit(jax.vmap(jax.vmap(lambda i: jh.gather(table, i, backend="cuda"))))(indices)
    np.testing.assert_array_equal(np.asarray(shared), np.asarray(reference_gather(table, indices)))
    tables = jnp.asarray(rng.standard_normal((3, 20, 16), np.float32))
    per = jax.jit(jax.vmap(lambda t, i: jh.gather(t, i, backend="cuda")))(tables, indices)
    want = jax.vmap(reference_gather)(tables, indices)
    np.testing.assert_array_equal(np.asarray(per), np.asarray(want))


def test_gather_out_of_range_is_a_runtime_error():
    # In a child process: a crash on the error path must fail this test, not end the run.
    import subprocess
    import sys
    script = os.path.join(os.path.dirname(__file__), "cuda_gather_error.py")
    done = subprocess.run([sys.executable, script], capture_output=True, text=True, timeout=120,
                          env=child_env(), cwd="/")
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), (done.returncode, done.stderr[-2000:])


def test_gather_grad():
    table = jax.random.normal(jax.random.key(6), (30, 8))
    indices = jnp.array([3, -1, 3, 29], jnp.int32)
    got = jax.grad(lambda t: (jh.gather(t, indices, backend="cuda") ** 2).sum())(table)
    want = jax.grad(lambda t: (reference_gather(t, indices) ** 2).sum())(table)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-6)


# ---- relevancy / indexer ----

def dsa_inputs(rng, b, h, di, n, dtype):
    q = jnp.asarray(rng.standard_normal((b, h, di), np.float32)).astype(dtype)
    keys = jnp.asarray(rng.standard_normal((b, n, di), np.float32)).astype(dtype)
    weights = jnp.asarray(rng.standard_normal((b, h), np.float32))
    return q, keys, weights


def block_inputs(rng, b, hq, hkv, d, nb, dtype):
    q = jnp.asarray(rng.standard_normal((b, hq, d), np.float32)).astype(dtype)
    lo = rng.standard_normal((b, nb, hkv, d), np.float32)
    hi = lo + np.abs(rng.standard_normal((b, nb, hkv, d), np.float32))
    return q, jnp.asarray(lo).astype(dtype), jnp.asarray(hi).astype(dtype)


@needs("relevancy_dsa")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("h,di,n", [(64, 128, 5000), (4, 32, 300), (16, 64, 1)])
def test_relevancy_dsa(dtype, h, di, n):
    rng = np.random.default_rng(7)
    q, keys, w = dsa_inputs(rng, 2, h, di, n, dtype)
    lengths = jnp.array([n, n // 2], jnp.int32)
    run = jax.jit(lambda b: jh.relevancy(q, keys, kind="dsa", weights=w, lengths=lengths, backend=b), static_argnums=0)
    got, want = np.asarray(run("cuda")), np.asarray(run("xla"))
    assert np.array_equal(np.isinf(got), np.isinf(want))
    scale = np.abs(want[np.isfinite(want)]).max(initial=1.0)
    np.testing.assert_allclose(np.where(np.isfinite(got), got, 0), np.where(np.isfinite(want), want, 0),
                               atol=2e-5 * scale * (di ** 0.5))


def check_indexer_selection(values, indices, ref_values, scores):
    """Same top-k up to float rounding: values close, each index carries its value."""
    values, indices, ref_values = np.asarray(values), np.asarray(indices), np.asarray(ref_values)
    scores = np.asarray(scores)
    assert ((indices == -1) == np.isneginf(ref_values)).all()
    scale = np.abs(ref_values[np.isfinite(ref_values)]).max(initial=1.0)
    np.testing.assert_allclose(np.where(indices >= 0, values, 0), np.where(indices >= 0, ref_values, 0),
                               atol=1e-4 * scale)
    picked = np.take_along_axis(scores, np.maximum(indices, 0), axis=-1)
    np.testing.assert_allclose(np.where(indices >= 0, picked, 0), np.where(indices >= 0, values, 0),
                               atol=1e-4 * scale)
    for row in indices.reshape(-1, indices.shape[-1]):
        assert len(set(row[row >= 0])) == (row >= 0).sum()


@needs("indexer_dsa")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("b,h,di,n,k", [(1, 64, 128, 131_072, 2048), (2, 64, 128, 5000, 64), (3, 4, 32, 700, 700),
                                        (1, 16, 64, 400_000, 100), (2, 64, 128, 100_000, 2048),
                                        (2, 8, 64, 20_000, 3000)])  # k > 2048: relevancy, then topk
def test_indexer_dsa(dtype, b, h, di, n, k):
    rng = np.random.default_rng(8)
    q, keys, w = dsa_inputs(rng, b, h, di, n, dtype)
    lengths = jnp.asarray(rng.integers(0, n + 1, b).astype(np.int32)).at[0].set(n)
    values, indices = jax.jit(lambda: jh.indexer(q, keys, k, kind="dsa", weights=w, lengths=lengths, backend="cuda"))()
    ref_values, _ = jh.indexer(q, keys, k, kind="dsa", weights=w, lengths=lengths, backend="xla")
    scores = jh.relevancy(q, keys, kind="dsa", weights=w, backend="xla")
    check_indexer_selection(values, indices, ref_values, scores)


@needs("indexer_dsa")
def test_indexer_dsa_zero_scores_tie_to_lower_index():
    # ReLU makes many scores exactly 0: those ties must go to the lowest token index.
    b, h, di, n = 1, 8, 64, 20_000
    q = -jnp.abs(jax.random.normal(jax.random.key(9), (b, h, di), jnp.bfloat16))
    keys = jnp.abs(jax.random.normal(jax.random.key(10), (b, n, di), jnp.bfloat16))
    w = jnp.ones((b, h))
    values, indices = jh.indexer(q, keys, 64, kind="dsa", weights=w, backend="cuda")
    np.testing.assert_array_equal(np.asarray(indices[0]), np.arange(64))
    np.testing.assert_array_equal(np.asarray(values), 0)


@needs("indexer_dsa")
@pytest.mark.parametrize("groups", [7, 50])
def test_indexer_dsa_ties_across_a_row_in_index_order(groups):
    # Tokens repeat `groups` key vectors, so scores tie in groups of n / groups: the top 2048
    # cut one group (the first with 7, the second with 50) across the many CTAs of a row.
    b, h, di, n, k = 2, 64, 128, 100_000, 2048
    q, keys, w = dsa_inputs(np.random.default_rng(12), b, h, di, groups, jnp.bfloat16)
    keys = jnp.tile(keys, (1, -(-n // groups), 1))[:, :n]
    lengths = jnp.asarray([n, 77_777], jnp.int32)
    values, indices = jh.indexer(q, keys, k, kind="dsa", weights=w, lengths=lengths, backend="cuda")
    ref_values, ref_indices = jh.indexer(q, keys, k, kind="dsa", weights=w, lengths=lengths, backend="xla")
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(ref_indices))
    np.testing.assert_allclose(np.asarray(values), np.asarray(ref_values), rtol=1e-5)


@needs("indexer_dsa")
@needs("indexer_quest")
def test_indexers_traced_into_a_command_buffer():
    # As test_topk_traced_into_a_command_buffer (test_cuda_topk.py): the dsa indexer over one
    # row of 131,072 (a row-merged level, whose barriers and histograms are scratch) and over
    # two short rows, and the quest indexer with hkv > 1 (its expanded lengths are scratch), in
    # a loop on a different input at every step.  Each step equals the same call made alone.
    rng = np.random.default_rng(33)
    steps = 2
    by_step = lambda *arrays: tuple(a.reshape(steps, -1, *a.shape[1:]) for a in arrays)

    def dsa(b, n, k):
        return by_step(*dsa_inputs(rng, steps * b, 64, 128, n, jnp.bfloat16)), \
            lambda q, keys, w: jh.indexer(q, keys, k, kind="dsa", weights=w, backend="cuda")

    quest = (by_step(*block_inputs(rng, steps * 2, 32, 8, 128, 4096, jnp.float32)),
             lambda q, lo, hi: jh.indexer(q, (lo, hi), 64, kind="quest", backend="cuda"))
    cases = [dsa(1, 131_072, 2048), dsa(2, 20_000, 256), quest]
    stacks = [args for args, _ in cases]

    one = lambda stacks: tuple(fn(*args) for args, (_, fn) in zip(stacks, cases))
    for outs in run_stepped_in_command_buffers(one, stacks, calls=len(cases)):
        for out, (args, fn) in zip(outs, cases):
            for step in range(steps):
                values, indices = jax.jit(fn)(*(a[step] for a in args))
                np.testing.assert_array_equal(np.asarray(out[1][step]), np.asarray(indices))
                assert_same_bits(out[0][step], values)


def block_memory(kind, lo, hi):
    return (lo, hi) if kind == "quest" else lo


def block_valid(lengths, bs, nb, hkv):
    """Valid blocks per (batch, KV head) row, as the ops compute them from token lengths."""
    lengths = np.asarray(lengths, np.int64)
    valid = np.clip((np.maximum(lengths, 0) + bs - 1) // bs, 0, nb).astype(np.int32)
    return np.repeat(valid[:, None], hkv, axis=1)


# (b, hq, hkv, d, nb, block_size, k, token lengths): k == nb; rows of 0 valid blocks and rows
# with fewer than k; feature dims that are not a multiple of 32; nb above one cluster
# (8 x 1024 blocks) so the selection runs candidate levels, with hkv > 1 and hkv == 1.
BLOCK_CASES = [
    (2, 8, 2, 64, 3000, 16, 64, (3000 * 16, 777)),
    (3, 4, 4, 128, 700, 1, 700, (700, 0, 333)),
    (2, 6, 2, 33, 50, 7, 5, (0, 20)),
    (2, 32, 8, 128, 20_000, 64, 2048, (20_000 * 64, 12_345 * 64 + 5)),
    (1, 2, 1, 16, 100_000, 4, 100, (250_001,)),
    (2, 4, 2, 32, 6000, 4, 3000, (6000 * 4, 2500 * 4)),  # k > 2048: relevancy, then topk
]


def block_case(case, kind, dtype, seed=11):
    b, hq, hkv, d, nb, bs, k, lengths = case
    q, lo, hi = block_inputs(np.random.default_rng(seed), b, hq, hkv, d, nb, dtype)
    return q, block_memory(kind, lo, hi), bs, k, jnp.asarray(lengths, jnp.int32), hkv, nb


@pytest.mark.parametrize("kind", ["dot", "quest"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_block_relevancy(kind, dtype, case):
    if not backends.has(f"relevancy_{kind}", "cuda"):
        pytest.skip(f"no CUDA handler for relevancy_{kind}")
    q, memory, bs, _, lengths, _, _ = block_case(case, kind, dtype)
    rel = lambda bk: jh.relevancy(q, memory, kind=kind, lengths=lengths, block_size=bs, backend=bk)
    got, want = np.asarray(jax.jit(lambda: rel("cuda"))()), np.asarray(rel("xla"))
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.array_equal(np.isneginf(got), np.isneginf(want))
    np.testing.assert_allclose(np.where(np.isfinite(got), got, 0), np.where(np.isfinite(want), want, 0),
                               rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("kind", ["dot", "quest"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("case", BLOCK_CASES, ids=lambda c: "x".join(map(str, c[:7])))
def test_block_indexer(kind, dtype, case):
    if not backends.has(f"indexer_{kind}", "cuda"):
        pytest.skip(f"no CUDA handler for indexer_{kind}")
    q, memory, bs, k, lengths, hkv, nb = block_case(case, kind, dtype)
    idx = lambda bk: jh.indexer(q, memory, k, kind=kind, lengths=lengths, block_size=bs, backend=bk)
    values, indices = jax.jit(lambda: idx("cuda"))()
    # Exact: the fused indexer selects from the very scores relevancy computes on the GPU.
    scores = jax.jit(lambda: jh.relevancy(q, memory, kind=kind, backend="cuda"))()
    ref_values, ref_indices = numpy_topk(scores, k, block_valid(lengths, bs, nb, hkv))
    np.testing.assert_array_equal(np.asarray(indices), ref_indices)
    assert_same_bits(values, ref_values)
    # And the same selection as the jnp reference up to float rounding.
    xla_values, _ = idx("xla")
    check_indexer_selection(values, indices, xla_values, jh.relevancy(q, memory, kind=kind, backend="xla"))


@pytest.mark.parametrize("kind", ["dot", "quest"])
def test_block_indexer_specials_and_ties(kind):
    if not backends.has(f"indexer_{kind}", "cuda"):
        pytest.skip(f"no CUDA handler for indexer_{kind}")
    rng = np.random.default_rng(14)
    b, hq, hkv, d, nb = 2, 4, 2, 64, 5000
    q, clean_lo, clean_hi = block_inputs(rng, b, hq, hkv, d, nb, jnp.float32)
    lo, hi = np.array(clean_lo), np.array(clean_hi)
    # NaN, +-inf and ties (equal blocks) in the memory: the total order decides.
    for value in (np.nan, np.inf, -np.inf):
        at = rng.integers(0, nb, 20)
        lo[:, at, :, 3] = value
        hi[:, at, :, 3] = value
    hi[:, 100:200] = hi[:, 50:51]
    lo[:, 100:200] = lo[:, 50:51]
    memory = block_memory(kind, jnp.asarray(lo), jnp.asarray(hi))
    lengths = jnp.array([nb, 4321], jnp.int32)
    scores = jax.jit(lambda: jh.relevancy(q, memory, kind=kind, backend="cuda"))()
    for k in (1, 150, 2048):
        values, indices = jax.jit(lambda: jh.indexer(q, memory, k, kind=kind, lengths=lengths, block_size=1,
                                                     backend="cuda"))()
        ref_values, ref_indices = numpy_topk(scores, k, block_valid(lengths, 1, nb, hkv))
        np.testing.assert_array_equal(np.asarray(indices), ref_indices)
        assert_same_bits(values, ref_values)
    # A zero query scores every (finite) block +0: the k lowest valid indices win.
    zero, clean = jnp.zeros_like(q), block_memory(kind, clean_lo, clean_hi)
    values, indices = jh.indexer(zero, clean, 64, kind=kind, lengths=jnp.array([nb, 10], jnp.int32),
                                 block_size=1, backend="cuda")
    want = np.broadcast_to(np.arange(64, dtype=np.int32), (hkv, 64))
    np.testing.assert_array_equal(np.asarray(indices[0]), want)
    np.testing.assert_array_equal(np.asarray(indices[1]), np.where(want < 10, want, -1))
    np.testing.assert_array_equal(np.asarray(values[0]), 0)


# ---- sparse attention ----

def attention_inputs(rng, b, hq, hkv, d, n, kb, bs, dtype):
    q = jnp.asarray(rng.standard_normal((b, hq, d), np.float32)).astype(dtype)
    k = jnp.asarray(rng.standard_normal((b, n, hkv, d), np.float32)).astype(dtype)
    v = jnp.asarray(rng.standard_normal((b, n, hkv, d), np.float32)).astype(dtype)
    nb = -(-n // bs)
    block_indices = jnp.asarray(rng.integers(-1, nb, (b, hkv, kb)).astype(np.int32))
    return q, k, v, block_indices


@needs("sparse_attention")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("b,hq,hkv,d,n,kb,bs", [(2, 8, 2, 128, 4096, 16, 64), (1, 32, 8, 128, 131_072, 64, 64),
                                                 (3, 4, 4, 64, 1000, 100, 1), (2, 6, 2, 32, 257, 9, 16)])
def test_sparse_attention(dtype, b, hq, hkv, d, n, kb, bs):
    rng = np.random.default_rng(12)
    q, k, v, block_indices = attention_inputs(rng, b, hq, hkv, d, n, kb, bs, dtype)
    block_indices = block_indices.at[0, 0, 1].set(block_indices[0, 0, 0])  # a duplicate counts once
    lengths = jnp.asarray(rng.integers(0, n + 1, b).astype(np.int32)).at[0].set(n)
    got = jax.jit(lambda: jh.sparse_attention(q, k, v, block_indices, block_size=bs, lengths=lengths, backend="cuda"))()
    want = sparse_attention_reference(q, k, v, block_indices, lengths, bs, d ** -0.5)
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}[dtype]
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


@needs("sparse_attention_unchecked")
@needs("gather_unchecked")
def test_unchecked_gather_and_attention_traced_into_a_command_buffer():
    # With check_indices=False, gather and sparse_attention (forward with its split merge, and
    # backward) call their graph-safe targets, which XLA traces into command buffers; each step
    # of a loop equals the same call made alone: bit for bit, but for the gradients, which the
    # backward kernel sums with shared-memory atomics in no fixed order (1 bfloat16 ulp in 1 of
    # 8192 dq entries on an H200, session 14).
    rng = np.random.default_rng(34)
    steps, b, hq, hkv, d, n, kb, bs = 2, 2, 32, 8, 128, 65_536, 64, 64
    inputs = [attention_inputs(rng, b, hq, hkv, d, n, kb, bs, jnp.bfloat16) for _ in range(steps)]
    q, k, v, block_indices = (jnp.stack(parts) for parts in zip(*inputs))
    table = jnp.asarray(rng.standard_normal((steps, 4096, 256)), jnp.bfloat16)
    rows = jnp.asarray(rng.integers(0, 4096, (steps, 1000)).astype(np.int32))

    def one(args):
        q, k, v, block_indices, table, rows = args
        attend = lambda q, k, v: jh.sparse_attention(q, k, v, block_indices, block_size=bs, check_indices=False,
                                                     backend="cuda")
        out, vjp = jax.vjp(attend, q, k, v)
        return (out, *vjp(out), jh.gather(table, rows, check_indices=False, backend="cuda"))

    args = (q, k, v, block_indices, table, rows)
    for outs in run_stepped_in_command_buffers(one, args, calls=3):
        for step in range(steps):
            out, dq, dk, dv, gathered = jax.jit(one)(tuple(a[step] for a in args))
            assert_same_bits(outs[0][step], out)
            assert_same_bits(outs[4][step], gathered)
            for got, want in zip(outs[1:4], (dq, dk, dv)):
                got, want = np.asarray(got[step], np.float32), np.asarray(want, np.float32)
                np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


# Tensor-core kernel (bfloat16/float16, d 64 or 128, group <= 8) and the warp kernel (float32,
# other head dims up to 256): GQA groups 1..8, block sizes 1 to 300, token-sparse slots beyond the
# dedup hash table, splits of one or many CTAs (merge kernel), lengths inside a block.
ATTENTION_CASES = [  # b, hq, hkv, d, n, kb, bs
    (2, 16, 2, 128, 4096, 16, 64),   # group 8
    (2, 8, 1, 64, 3000, 40, 16),     # group 8, d 64, bs 16
    (2, 4, 1, 128, 777, 300, 1),     # token-sparse
    (1, 8, 1, 128, 5000, 3000, 1),   # 3000 slots: dedup hash table of 8192
    (1, 2, 2, 64, 5000, 3000, 1),    # 3000 slots, d 64: linear dedup scan
    (3, 8, 8, 64, 1000, 7, 300),     # group 1, blocks larger than a split's tile run
    (2, 24, 4, 128, 1024, 50, 5),    # group 6, odd block size
    (40, 16, 8, 128, 512, 16, 16),   # many (sequence, KV head) pairs: one split each
    (80, 8, 8, 64, 256, 8, 32),      # one split each, d 64
    (2, 8, 2, 64, 100, 3, 1000),     # blocks longer than k (only block 0), a length > n
    # head dims that are not a multiple of 32 (warp kernel; the last lanes hold zeros)
    (2, 4, 2, 8, 64, 4, 4),
    (2, 6, 3, 40, 500, 12, 16),
    (1, 8, 2, 100, 700, 20, 8),
    (1, 4, 1, 250, 300, 5, 16),
]


def check_attention(q, k, v, block_indices, lengths, bs, dtype):
    d = q.shape[-1]
    got = jax.jit(lambda: jh.sparse_attention(q, k, v, block_indices, block_size=bs, lengths=lengths,
                                              backend="cuda"))()
    want = sparse_attention_reference(q, k, v, block_indices, lengths, bs, d ** -0.5)
    got, want = np.asarray(got, np.float32), np.asarray(want, np.float32)
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}[dtype]
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    return got


@needs("sparse_attention")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("case", ATTENTION_CASES, ids=lambda c: "x".join(map(str, c)))
def test_sparse_attention_kernels(dtype, case):
    b, hq, hkv, d, n, kb, bs = case
    rng = np.random.default_rng(15)
    q, k, v, block_indices = attention_inputs(rng, b, hq, hkv, d, n, kb, bs, dtype)
    block_indices = block_indices.at[:, :, 2].set(block_indices[:, :, 0])  # duplicates count once
    # full rows, lengths inside a block, a length shorter than any selected token
    lengths = jnp.asarray(rng.integers(0, n + 1, b).astype(np.int32)).at[0].set(n)
    if b > 1:
        lengths = lengths.at[1].set(bs * 3 + 1)
    check_attention(q, k, v, block_indices, lengths, bs, dtype)


@needs("sparse_attention")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("d", [64, 128])
def test_sparse_attention_duplicates_and_empty_rows(dtype, d):
    rng = np.random.default_rng(16)
    b, hq, hkv, n, kb, bs = 4, 8, 2, 640, 24, 16
    q, k, v, _ = attention_inputs(rng, b, hq, hkv, d, n, kb, bs, dtype)
    # blocks from a small range: most slots repeat an earlier one
    block_indices = rng.integers(-1, 4, (b, hkv, kb)).astype(np.int32)
    block_indices[1] = -1                       # no slot at all: zeros
    block_indices[2, 0] = [7] * kb              # one block many times
    lengths = np.array([n, n, 7 * bs + 3, 0], np.int32)  # row 3: length 0, zeros
    got = check_attention(q, k, v, jnp.asarray(block_indices), jnp.asarray(lengths), bs, dtype)
    np.testing.assert_array_equal(got[1], 0)
    np.testing.assert_array_equal(got[3], 0)


@needs("sparse_attention")
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=lambda d: jnp.dtype(d).name)
def test_sparse_attention_block_out_of_range_on_the_device(dtype):
    """Traced block indices skip the trace-time check: the handler's device check reports them
    (tensor-core kernel for bfloat16, warp kernel for float32), and a later good call works."""
    from jax_hetero._compat import RUNTIME_ERRORS
    rng = np.random.default_rng(17)
    q, k, v, block_indices = attention_inputs(rng, 2, 8, 2, 64, 512, 6, 32, dtype)
    f = jax.jit(lambda i: jh.sparse_attention(q, k, v, i, block_size=32, backend="cuda"))
    with pytest.raises(RUNTIME_ERRORS, match="sparse_attention: block_indices contains 16"):
        jax.block_until_ready(f(block_indices.at[1, 1, 5].set(16)))
    got = np.asarray(f(block_indices), np.float32)
    want = np.asarray(sparse_attention_reference(q, k, v, block_indices, jnp.full((2,), 512, jnp.int32), 32,
                                                 64 ** -0.5), np.float32)
    tol = {jnp.float32: 1e-5, jnp.bfloat16: 2e-2}[dtype]
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)


@needs("sparse_attention")
def test_sparse_attention_empty_rows_and_grad():
    rng = np.random.default_rng(13)
    q, k, v, block_indices = attention_inputs(rng, 2, 4, 2, 64, 512, 4, 32, jnp.float32)
    block_indices = block_indices.at[1].set(-1)
    out = jh.sparse_attention(q, k, v, block_indices, block_size=32, backend="cuda")
    np.testing.assert_array_equal(np.asarray(out[1]), 0)
    full = jnp.full((2,), 512, jnp.int32)
    cuda = lambda q, k, v: jh.sparse_attention(q, k, v, block_indices, block_size=32, backend="cuda").sum()
    ref = lambda q, k, v: sparse_attention_reference(q, k, v, block_indices, full, 32, 64 ** -0.5).sum()
    for g, w in zip(jax.grad(cuda, argnums=(0, 1, 2))(q, k, v), jax.grad(ref, argnums=(0, 1, 2))(q, k, v)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), atol=1e-5)


# The backward pass (the sparse_attention_bwd CUDA handler) against the jnp reference VJP.
GRAD_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 2e-2, jnp.float16: 4e-3}


def attention_vjp(q, k, v, block_indices, lengths, g, bs, backend):
    """dq, dk, dv of sparse_attention on `backend` for the cotangent g (jitted)."""
    def grads(q, k, v, g):
        f = lambda q, k, v: jh.sparse_attention(q, k, v, block_indices, block_size=bs, lengths=lengths,
                                                backend=backend)
        return jax.vjp(f, q, k, v)[1](g)
    return jax.jit(grads)(q, k, v, g)


def reference_attention_vjp(q, k, v, block_indices, lengths, g, bs):
    # The jnp reference itself: backend="xla" runs a host callback that JAX_PLATFORMS=cuda lacks.
    def grads(q, k, v, g):
        f = lambda q, k, v: sparse_attention_reference(q, k, v, block_indices, lengths, bs, q.shape[-1] ** -0.5)
        return jax.vjp(f, q, k, v)[1](g)
    return jax.jit(grads)(q, k, v, g)


def selected_tokens(block_indices, lengths, bs, n):
    """[b, n, hkv]: whether a token counts for its KV head (the rest must get zero dk, dv)."""
    pos, valid = (np.asarray(x) for x in selected_token_mask(block_indices, lengths, bs, n))
    selected = np.zeros((pos.shape[0], n, pos.shape[1]), bool)
    b, h, s, t = np.nonzero(valid)
    selected[b, pos[b, h, s, t], h] = True
    return selected


def check_attention_grads(got, want, selected, dtype):
    tol = GRAD_TOL[dtype]
    for name, x, w in zip(("dq", "dk", "dv"), got, want):
        assert x.dtype == w.dtype == jnp.dtype(dtype), name
        x, w = np.asarray(x, np.float32), np.asarray(w, np.float32)
        np.testing.assert_allclose(x, w, rtol=tol, atol=tol * float(np.abs(w).max()), err_msg=name)
        if name != "dq":  # tokens no slot selects: exactly zero, as in the reference
            np.testing.assert_array_equal(x[~selected], 0, err_msg=name)


@needs("sparse_attention_bwd")
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("b,hq,hkv,d,n,kb,bs,lengths", [
    (2, 8, 2, 128, 4096, 16, 64, (4096, 2459)),        # GQA 4, several splits
    (3, 4, 4, 64, 1000, 100, 1, (1000, 601, 0)),       # token-sparse (block_size 1), an empty row
    (3, 6, 2, 32, 257, 9, 16, (257, 100, 0)),          # GQA 3, a partial last block
    (1, 8, 1, 128, 16384, 64, 64, (16384 - 37,)),      # GQA 8 (one KV head), many splits
    (2, 4, 2, 256, 700, 40, 16, (700, 333)),           # head dim 256
    (2, 4, 2, 64, 100, 3, 1000, (150, -3)),            # blocks longer than k, length > n and < 0
])
def test_sparse_attention_grad_matches_reference_vjp(dtype, b, hq, hkv, d, n, kb, bs, lengths):
    rng = np.random.default_rng(14)
    q, k, v, block_indices = attention_inputs(rng, b, hq, hkv, d, n, kb, bs, dtype)
    nb = -(-n // bs)
    block_indices = np.array(block_indices)  # writable
    block_indices[rng.random(block_indices.shape) < 0.2] = -1      # unused slots
    block_indices[0, 0, [0, 1, kb - 1]] = nb - 1                   # the last block, three times
    block_indices[:, :, kb // 2] = block_indices[:, :, 0]          # a duplicate in every row
    if b > 1:
        block_indices[1, 0] = -1                                   # a (sequence, KV head) with nothing
    block_indices = jnp.asarray(block_indices)
    lengths = jnp.asarray(lengths, jnp.int32)
    g = jnp.asarray(rng.standard_normal(q.shape, np.float32)).astype(dtype)
    got = attention_vjp(q, k, v, block_indices, lengths, g, bs, "cuda")
    want = reference_attention_vjp(q, k, v, block_indices, lengths, g, bs)
    check_attention_grads(got, want, selected_tokens(block_indices, lengths, bs, n), dtype)


@needs("sparse_attention_bwd")
@pytest.mark.parametrize("backend", ["cuda", "auto"])
def test_sparse_attention_grad_runs_the_cuda_handler(backend):
    rng = np.random.default_rng(15)
    q, k, v, block_indices = attention_inputs(rng, 2, 4, 2, 64, 256, 4, 16, jnp.float32)
    loss = lambda q: jh.sparse_attention(q, k, v, block_indices, block_size=16, backend=backend).sum()
    grad = jax.jit(jax.grad(loss))
    assert "jax_hetero_sparse_attention_bwd_cuda" in grad.lower(q).as_text()
    want = jax.grad(lambda q: sparse_attention_reference(q, k, v, block_indices, jnp.full((2,), 256, jnp.int32),
                                                         16, 64 ** -0.5).sum())(q)
    np.testing.assert_allclose(np.asarray(grad(q)), np.asarray(want), rtol=1e-4, atol=1e-5)


@needs("sparse_attention_bwd")
def test_sparse_attention_vmap_of_grad():
    """Batch dimensions in front of the op's own reach the handler (vmap broadcasts them)."""
    rng = np.random.default_rng(16)
    inputs = [attention_inputs(rng, 2, 4, 2, 32, 96, 5, 8, jnp.float32) for _ in range(3)]
    q, k, v, block_indices = (jnp.stack(x) for x in zip(*inputs))
    lengths = jnp.asarray([[96, 50], [0, 96], [17, 80]], jnp.int32)
    g = jnp.asarray(rng.standard_normal(q.shape, np.float32))

    def grads(fn):
        return jax.jit(jax.vmap(lambda q, k, v, i, l, g: jax.vjp(lambda q, k, v: fn(q, k, v, i, l), q, k, v)[1](g)))
    cuda = grads(lambda q, k, v, i, l: jh.sparse_attention(q, k, v, i, block_size=8, lengths=l, backend="cuda"))
    ref = grads(lambda q, k, v, i, l: sparse_attention_reference(q, k, v, i, l, 8, 32 ** -0.5))
    for x, w in zip(cuda(q, k, v, block_indices, lengths, g), ref(q, k, v, block_indices, lengths, g)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(w), rtol=1e-4, atol=1e-5)


# ---- the device of XLA's stream ----

def test_ops_run_on_a_second_gpu():
    """Handlers use the device of the stream XLA gives them, not device 0: every op's result
    on the second GPU equals its result on the first (and stays on the second)."""
    gpus = jax.devices("gpu")
    if len(gpus) < 2:
        pytest.skip("needs two visible GPUs")
    rng = np.random.default_rng(17)
    scores = jnp.asarray(rng.standard_normal((3, 50_000), np.float32))
    table = jnp.asarray(rng.standard_normal((300, 64), np.float32))
    rows = jnp.asarray(rng.integers(-1, 300, (40,)).astype(np.int32))
    q, keys, w = dsa_inputs(rng, 2, 8, 64, 5000, jnp.bfloat16)
    aq, ak, av, blocks = attention_inputs(rng, 2, 8, 2, 128, 4096, 16, 64, jnp.bfloat16)
    cases = [
        (lambda s: jh.topk(s, 2048, backend="cuda"), (scores,)),
        (lambda t, i: jh.gather(t, i, backend="cuda"), (table, rows)),
        (lambda q, k, w: jh.indexer(q, k, 64, kind="dsa", weights=w, backend="cuda"), (q, keys, w)),
        (lambda q, k, v, i: jh.sparse_attention(q, k, v, i, block_size=64, backend="cuda"), (aq, ak, av, blocks)),
    ]
    for fn, args in cases:
        first = jax.jit(fn)(*jax.device_put(args, gpus[0]))
        second = jax.jit(fn)(*jax.device_put(args, gpus[1]))
        for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
            assert b.devices() == {gpus[1]}
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
