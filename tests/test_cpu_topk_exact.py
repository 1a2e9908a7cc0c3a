"""The CPU topk is bit-identical to jax.lax.top_k (through the reference, backend="xla") on
adversarial inputs: ties, constant rows, sorted rows, NaN / +-0 / +-inf, 16-bit floats,
lengths, and rows long enough to be split across threads."""
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from jax_hetero import backends

pytestmark = [pytest.mark.skipif(not backends.has("topk", "cpu"), reason="CPU backend not compiled"), pytest.mark.usefixtures("cpu_default_device")]

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
# 1 row of 2**17 is split into chunks (one per thread); 3 rows of 5000 are not.
SHAPES = [(3, 5000), (1, 1 << 17)]


def _bits(x):
    x = np.asarray(x)
    return x.view({2: np.uint16, 4: np.uint32}[x.dtype.itemsize])


def _specials(rng, shape):
    """Mostly +-0, +-inf and NaN of both signs, with a few ordinary values."""
    pool = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, -np.nan, 1.0, -1.0], np.float32)
    return pool[rng.integers(0, len(pool), shape)]


INPUTS = {
    "normal": lambda rng, shape: rng.standard_normal(shape).astype(np.float32),
    "few_values": lambda rng, shape: rng.integers(-2, 3, shape).astype(np.float32),
    "all_equal": lambda rng, shape: np.full(shape, 0.5, np.float32),
    "ascending": lambda rng, shape: np.broadcast_to(np.arange(shape[-1], dtype=np.float32), shape).copy(),
    "descending": lambda rng, shape: np.broadcast_to(-np.arange(shape[-1], dtype=np.float32), shape).copy(),
    "specials": _specials,
}


@lru_cache(maxsize=None)
def _topk(k, backend):
    return jax.jit(lambda s, l: jh.topk(s, k, lengths=l, backend=backend))


def _run(scores, k, lengths=None):
    fn, ref = _topk(k, "cpu"), _topk(k, "xla")
    if lengths is None:
        lengths = jnp.full(scores.shape[:-1], scores.shape[-1], jnp.int32)
    (v, i), (rv, ri) = fn(scores, lengths), ref(scores, lengths)
    np.testing.assert_array_equal(np.asarray(i), np.asarray(ri))
    np.testing.assert_array_equal(_bits(v), _bits(rv))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("kind", sorted(INPUTS))
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_matches_lax_top_k(rng, dtype, kind, shape):
    scores = jnp.asarray(INPUTS[kind](rng, shape)).astype(dtype)
    for k in (1, 7, 100, 2048):
        _run(scores, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("kind", ["normal", "few_values", "specials"])
def test_lengths(rng, dtype, kind):
    rows, n = 6, int(rng.integers(3000, 140_000))
    scores = jnp.asarray(INPUTS[kind](rng, (rows, n))).astype(dtype)
    # Zero, a few, fewer than k, a partial row, everything, and beyond n (clipped).
    lengths = jnp.asarray([0, 3, 500, n // 2, n, n + 10], jnp.int32)
    for k in (1, 64, 1000):
        _run(scores, k, lengths)
    # A single long row with a partial length is split across threads.
    _run(scores[:1], 777, jnp.asarray([n - 5], jnp.int32))


def test_k_equals_n(rng):
    scores = jnp.asarray(_specials(rng, (2, 300)))
    _run(scores, 300)


def test_matches_lax_directly(rng):
    """Without lengths the op is jax.lax.top_k itself."""
    scores = jnp.asarray(rng.standard_normal((4, 70_000)).astype(np.float32))
    values, indices = jax.jit(lambda s: jh.topk(s, 2048, backend="cpu"))(scores)
    ref_values, ref_indices = jax.lax.top_k(scores, 2048)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(ref_indices))
    np.testing.assert_array_equal(_bits(values), _bits(ref_values))


@pytest.mark.parametrize("k", [100, 300, 2048])
@pytest.mark.parametrize("kind", ["normal", "few_values", "ascending", "specials"])
def test_long_row_split_into_chunks(rng, k, kind):
    """A single long row (split into chunks that share a sampled threshold), with and
    without a length."""
    n = 600_000
    scores = jnp.asarray(INPUTS[kind](rng, (1, n)))
    _run(scores, k)
    _run(scores, k, jnp.asarray([int(rng.integers(k, n))], jnp.int32))


@pytest.mark.parametrize("rows", [1, 4])
def test_sample_that_overestimates(rows):
    """Large values only where the threshold sample looks (evenly spaced runs), so fewer
    than k entries reach the sampled threshold and the selection must fall back."""
    n, k, runs = 1 << 17, 2048, 64
    run = min(n // 8, 128 * n // k) // runs
    row = np.full(n, -1.0, np.float32)
    for r in range(runs):
        start = (n - run) * r // (runs - 1)
        row[start:start + run] = 1.0 + np.arange(run, dtype=np.float32) / run
    _run(jnp.asarray(np.tile(row, (rows, 1))), k)
