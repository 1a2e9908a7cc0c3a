"""The CPU sparse_attention handler against the jnp reference (backend="xla") on fresh random
inputs: dtypes, GQA ratios, block sizes, duplicate and -1 block indices, lengths (0, partial
blocks, beyond n), rows with no token, the threaded split of long selections, jit, vmap,
vmap of vmap, gradients (the sparse_attention_bwd handler), and the run-time error for a block
index out of range."""
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from jax.test_util import check_grads

import jax_hetero as jh
from jax_hetero import backends

pytestmark = [pytest.mark.skipif(not backends.has("sparse_attention", "cpu"), reason="CPU backend not compiled"),
              pytest.mark.usefixtures("cpu_default_device")]

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
TOL = {jnp.float32: 2e-5, jnp.bfloat16: 2e-2, jnp.float16: 2e-3}


def make_inputs(rng, b, hq, hkv, d, n, block_size, kb, dtype=jnp.float32, unused=0.2, lengths=None):
    """Random q, k, v; block indices with -1 slots and duplicates; lengths in [0, n]."""
    nb = -(-n // block_size)
    q = jnp.asarray(rng.standard_normal((b, hq, d)), dtype)
    k = jnp.asarray(rng.standard_normal((b, n, hkv, d)), dtype)
    v = jnp.asarray(rng.standard_normal((b, n, hkv, d)), dtype)
    indices = rng.integers(0, nb, (b, hkv, kb))
    indices = np.where(rng.random((b, hkv, kb)) < unused, -1, indices)
    if lengths is None:
        lengths = rng.integers(0, n + 1, b)
    return q, k, v, jnp.asarray(indices, jnp.int32), jnp.asarray(lengths, jnp.int32)


@lru_cache(maxsize=None)
def attention(backend, block_size, scale=None):
    return jax.jit(lambda q, k, v, i, l: jh.sparse_attention(
        q, k, v, i, block_size=block_size, lengths=l, scale=scale, backend=backend))


def assert_close(out, ref, dtype):
    assert out.dtype == ref.dtype == jnp.dtype(dtype)
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32),
                               rtol=TOL[dtype], atol=TOL[dtype])


def check(inputs, block_size, dtype, scale=None):
    out = attention("cpu", block_size, scale)(*inputs)
    ref = attention("xla", block_size, scale)(*inputs)
    assert_close(out, ref, dtype)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("hq,hkv,block_size", [(1, 1, 16), (4, 1, 1), (8, 2, 5), (6, 3, 16), (7, 7, 4)])
def test_matches_reference(rng, dtype, hq, hkv, block_size):
    n = int(rng.integers(1, 300))
    inputs = make_inputs(rng, 2, hq, hkv, 24, n, block_size, int(rng.integers(1, 12)), dtype)
    check(inputs, block_size, dtype)


@settings(max_examples=15, deadline=None)
@given(data=st.data())
def test_random_shapes(data):
    draw = lambda s: data.draw(s)
    hkv = draw(st.integers(1, 3))
    hq = hkv * draw(st.integers(1, 6))
    d = draw(st.sampled_from([1, 3, 8, 13, 16, 40, 64]))
    n = draw(st.integers(1, 200))
    block_size = draw(st.integers(1, 20))
    kb = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**31 - 1))
    scale = draw(st.one_of(st.none(), st.floats(0.01, 2.0)))
    inputs = make_inputs(np.random.default_rng(seed), draw(st.integers(1, 3)), hq, hkv, d, n,
                         block_size, kb, unused=draw(st.floats(0, 1)))
    check(inputs, block_size, jnp.float32, scale)


def test_duplicates_count_once(rng):
    q, k, v, _, lengths = make_inputs(rng, 1, 4, 2, 16, 64, 8, 1, lengths=[64])
    once = jnp.asarray([[[3, 5, -1, -1]], [[0, 7, -1, -1]]], jnp.int32).reshape(1, 2, 4)
    twice = jnp.asarray([[[3, 5, 3, 5]], [[0, 0, 7, 0]]], jnp.int32).reshape(1, 2, 4)
    a = check((q, k, v, once, lengths), 8, jnp.float32)
    b = check((q, k, v, twice, lengths), 8, jnp.float32)
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-6)


def test_empty_rows_give_zeros(rng):
    """All slots -1, a length of 0, or only blocks past the length: zeros."""
    q, k, v, indices, _ = make_inputs(rng, 3, 4, 2, 16, 64, 8, 3, unused=0.0)
    indices = indices.at[0].set(-1)                   # batch 0: nothing selected
    indices = indices.at[2].set(7)                    # batch 2: only the last block ...
    lengths = jnp.asarray([64, 0, 50], jnp.int32)     # ... which starts at 56 > 50
    out = check((q, k, v, indices, lengths), 8, jnp.float32)
    np.testing.assert_array_equal(np.asarray(out[0]), 0)
    np.testing.assert_array_equal(np.asarray(out[1]), 0)
    np.testing.assert_array_equal(np.asarray(out[2]), 0)


def test_partial_blocks_and_lengths_beyond_n(rng):
    # n not a multiple of the block size (a short last block), lengths cutting blocks, and
    # a length larger than n (treated as n).
    inputs = make_inputs(rng, 4, 4, 2, 32, 61, 8, 8, unused=0.0, lengths=[61, 13, 60, 500])
    check(inputs, 8, jnp.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
def test_long_selection_split_across_threads(rng, dtype):
    """One (batch, KV head) pair with thousands of tokens is split into parts merged by
    log-sum-exp; logits with a large spread check the merge's rescaling."""
    q, k, v, _, _ = make_inputs(rng, 1, 4, 1, 64, 8192, 16, 1, dtype)
    q = (q.astype(jnp.float32) * 4).astype(dtype)
    indices = jnp.asarray(rng.permutation(512)[None, None, :400], jnp.int32)
    check((q, k, v, indices, jnp.asarray([8000], jnp.int32)), 16, dtype)


def test_vmap_and_vmap_of_vmap(rng):
    shapes = dict(b=2, hq=4, hkv=2, d=16, n=40, block_size=4, kb=5)
    stacked = [make_inputs(rng, **shapes) for _ in range(6)]
    batched = [jnp.stack(x).reshape((2, 3) + x[0].shape) for x in zip(*stacked)]
    fn = lambda backend: lambda q, k, v, i, l: jh.sparse_attention(q, k, v, i, block_size=4,
                                                                   lengths=l, backend=backend)
    out = jax.jit(jax.vmap(fn("cpu")))(*[x[0] for x in batched])
    ref = jax.jit(jax.vmap(fn("xla")))(*[x[0] for x in batched])
    assert_close(out, ref, jnp.float32)
    out = jax.jit(jax.vmap(jax.vmap(fn("cpu"))))(*batched)
    ref = jax.jit(jax.vmap(jax.vmap(fn("xla"))))(*batched)
    assert_close(out, ref, jnp.float32)


def test_eager_matches_jit(rng):
    inputs = make_inputs(rng, 2, 4, 2, 16, 50, 4, 6)
    eager = jh.sparse_attention(*inputs[:4], block_size=4, lengths=inputs[4], backend="cpu")
    np.testing.assert_allclose(np.asarray(eager), np.asarray(attention("cpu", 4)(*inputs)),
                               rtol=1e-6, atol=1e-6)


def test_grad(rng):
    q, k, v, indices, lengths = make_inputs(rng, 2, 4, 2, 8, 24, 4, 4, jnp.float32)
    fn = jax.jit(lambda q, k, v: jh.sparse_attention(q, k, v, indices, block_size=4, lengths=lengths,
                                                     backend="cpu"))
    check_grads(fn, (q, k, v), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)
    # The gradient flows through the handler's forward and backward.
    ref = jax.jit(lambda q, k, v: jh.sparse_attention(q, k, v, indices, block_size=4, lengths=lengths,
                                                      backend="xla"))
    loss = lambda f: lambda *a: jnp.sum(jnp.sin(f(*a)))
    grads = jax.grad(loss(fn), argnums=(0, 1, 2))(q, k, v)
    ref_grads = jax.grad(loss(ref), argnums=(0, 1, 2))(q, k, v)
    for g, r in zip(grads, ref_grads):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-5)


GRAD_TOL = {jnp.float32: 1e-4, jnp.bfloat16: 5e-2, jnp.float16: 5e-3}


@lru_cache(maxsize=None)
def attention_grad(backend, block_size):
    """The gradients of sum(out * ct) with respect to q, k and v."""
    def loss(q, k, v, i, l, ct):
        out = jh.sparse_attention(q, k, v, i, block_size=block_size, lengths=l, backend=backend)
        return jnp.sum(out.astype(jnp.float32) * ct)
    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


def check_grad(inputs, block_size, dtype):
    ct = jnp.asarray(np.random.default_rng(1).standard_normal(inputs[0].shape), jnp.float32)
    grads = attention_grad("cpu", block_size)(*inputs, ct)
    ref = attention_grad("xla", block_size)(*inputs, ct)
    for g, r in zip(grads, ref):
        assert g.dtype == r.dtype == jnp.dtype(dtype)
        np.testing.assert_allclose(np.asarray(g, np.float32), np.asarray(r, np.float32),
                                   rtol=GRAD_TOL[dtype], atol=GRAD_TOL[dtype])
    return grads


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda t: jnp.dtype(t).name)
@pytest.mark.parametrize("hq,hkv,block_size", [(2, 2, 8), (8, 2, 5), (4, 1, 1)])
def test_grad_matches_reference(rng, dtype, hq, hkv, block_size):
    """GQA ratios 1 and 4, block_size 1; -1 slots, duplicates, a length of 0 and lengths
    that cut blocks."""
    n = 45
    q, k, v, indices, _ = make_inputs(rng, 3, hq, hkv, 16, n, block_size, 6, dtype)
    indices = indices.at[:, :, 1].set(indices[:, :, 0])  # a duplicate in every row
    lengths = jnp.asarray([0, 23, n], jnp.int32)
    check_grad((q, k, v, indices, lengths), block_size, dtype)


def test_grad_of_unselected_tokens_and_empty_rows_is_zero(rng):
    q, k, v, _, _ = make_inputs(rng, 3, 4, 2, 8, 32, 4, 2)
    indices = jnp.asarray([[[1, 1], [-1, 6]], [[-1, -1], [-1, -1]], [[7, 2], [0, -1]]], jnp.int32)
    lengths = jnp.asarray([32, 32, 30], jnp.int32)  # batch 2: block 7 holds tokens 28, 29
    dq, dk, dv = check_grad((q, k, v, indices, lengths), 4, jnp.float32)
    selected = np.zeros((3, 32, 2), bool)
    selected[0, 4:8, 0] = selected[0, 24:28, 1] = True
    selected[2, 28:30, 0] = selected[2, 8:12, 0] = selected[2, 0:4, 1] = True
    for g in (dk, dv):
        np.testing.assert_array_equal(np.asarray(g)[~selected], 0)
        assert np.all(np.any(np.asarray(g)[selected] != 0, axis=-1))
    np.testing.assert_array_equal(np.asarray(dq[1]), 0)


def test_check_grads_gqa(rng):
    q, k, v, indices, lengths = make_inputs(rng, 2, 8, 2, 8, 20, 2, 5, lengths=[20, 7])
    fn = jax.jit(lambda q, k, v: jh.sparse_attention(q, k, v, indices, block_size=2, lengths=lengths,
                                                     backend="cpu"))
    check_grads(fn, (q, k, v), order=1, modes=["rev"], atol=2e-2, rtol=2e-2, eps=1e-2)


def test_vmap_of_grad(rng):
    stacked = [make_inputs(rng, 2, 4, 2, 8, 24, 4, 4) for _ in range(3)]
    q, k, v, i, l = (jnp.stack(x) for x in zip(*stacked))
    ct = jnp.asarray(rng.standard_normal(q.shape[1:]), jnp.float32)
    grad = lambda backend: jax.jit(jax.vmap(lambda *a: attention_grad(backend, 4)(*a, ct)))
    for g, r in zip(grad("cpu")(q, k, v, i, l), grad("xla")(q, k, v, i, l)):
        np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("backend", ["cpu", "auto"])
def test_grad_uses_the_backward_handler(rng, backend):
    q, k, v, indices, lengths = make_inputs(rng, 1, 2, 1, 8, 8, 4, 2)
    loss = lambda backend: lambda q: jnp.sum(jh.sparse_attention(q, k, v, indices, block_size=4,
                                                                 lengths=lengths, backend=backend))
    grad = jax.jit(jax.grad(loss(backend)))
    assert "jax_hetero_sparse_attention_bwd_cpu" in grad.lower(q).as_text()
    np.testing.assert_allclose(np.asarray(grad(q)), np.asarray(jax.grad(loss("xla"))(q)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("bad", [4, 100, -2])
def test_out_of_range_index_under_jit(rng, bad):
    q, k, v, indices, lengths = make_inputs(rng, 2, 4, 2, 8, 32, 8, 3)  # 4 blocks
    indices = indices.at[1, 0, 2].set(bad)
    with pytest.raises(jax.errors.JaxRuntimeError, match="sparse_attention"):
        jax.block_until_ready(attention("cpu", 8)(q, k, v, indices, lengths))


def test_float16_subnormal_values(rng):
    """Values below float16's normal range (subnormal halves) convert exactly."""
    q, k, v, indices, lengths = make_inputs(rng, 2, 4, 2, 16, 64, 8, 4, jnp.float16)
    v = (v.astype(jnp.float32) * 1e-5).astype(jnp.float16)  # mostly subnormal
    out = attention("cpu", 8)(q, k, v, indices, lengths)
    ref = attention("xla", 8)(q, k, v, indices, lengths)
    # Two subnormal steps (2**-24 each) of rounding difference at most.
    np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=0, atol=2**-23)
