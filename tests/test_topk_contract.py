"""topk is jax.lax.top_k exactly: property tests over shapes/k/lengths/dtypes and the
edge cases of the total order, on every backend."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, strategies as st

import jax_hetero as jh
from conftest import COMPILED, SPECIALS, needs_cpu_platform, topk_edge_rows

pytestmark = needs_cpu_platform  # the expected values come from lax.top_k on the CPU (below)
BACKENDS = ["xla", *COMPILED]
DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def _expected(scores, k, lengths):
    """lax.top_k over each row's valid prefix, padded with (-inf, -1).

    Computed on the CPU: XLA:GPU's top_k ranks a negative NaN above every number, while the
    contract (and the CPU) use the IEEE total order."""
    with jax.default_device(jax.devices("cpu")[0]):
        return _expected_here(scores, k, lengths)


def _expected_here(scores, k, lengths):
    values, indices = [], []
    flat = np.asarray(scores).reshape(-1, scores.shape[-1])
    for row, length in zip(flat, np.asarray(lengths).reshape(-1)):
        valid = min(int(length), row.shape[0])
        take = min(k, valid)
        v, i = jax.lax.top_k(jnp.asarray(row[:valid], scores.dtype), take) if take else (jnp.zeros(0, scores.dtype), jnp.zeros(0, jnp.int32))
        values.append(np.concatenate([np.asarray(v, np.float32), np.full(k - take, -np.inf, np.float32)]))
        indices.append(np.concatenate([np.asarray(i), np.full(k - take, -1)]))
    shape = scores.shape[:-1] + (k,)
    return np.array(values).reshape(shape), np.array(indices).reshape(shape)


def _check(scores, k, lengths, backend):
    values, indices = jax.jit(lambda s, l: jh.topk(s, k, lengths=l, backend=backend))(scores, lengths)
    ev, ei = _expected(scores, k, lengths)
    np.testing.assert_array_equal(np.asarray(indices), ei)
    # Compare bit patterns so NaN and -0.0 must match too.
    got = np.asarray(values, np.float32)
    assert np.array_equal(got, ev, equal_nan=True)
    assert np.array_equal(np.signbit(got), np.signbit(ev))


@pytest.mark.parametrize("backend", BACKENDS)
@given(data=st.data())
def test_random_rows(backend, data):
    rows = data.draw(st.integers(1, 4))
    n = data.draw(st.integers(1, 600))
    k = data.draw(st.integers(1, n))
    dtype = data.draw(st.sampled_from(DTYPES))
    seed = data.draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    pool = data.draw(st.sampled_from(["normal", "specials", "few_values"]))
    if pool == "normal":
        scores = rng.standard_normal((rows, n)).astype(np.float32)
    elif pool == "specials":
        scores = rng.choice(SPECIALS, (rows, n))
    else:  # heavy ties
        scores = rng.integers(-2, 3, (rows, n)).astype(np.float32)
    lengths = rng.integers(0, n + 1, rows).astype(np.int32)
    _check(jnp.asarray(scores).astype(dtype), k, jnp.asarray(lengths), backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_edge_cases(backend, dtype):
    n = 300
    full = jnp.array([n], jnp.int32)
    cases = topk_edge_rows(n)
    for name, row in cases.items():
        for k in (1, 7, n):
            _check(jnp.asarray(row[None]).astype(dtype), k, full, backend)
    # Lengths: empty rows, rows shorter than k, lengths beyond n are clipped.
    scores = jnp.asarray(np.random.default_rng(0).standard_normal((4, n)), dtype)
    _check(scores, 16, jnp.array([0, 5, n, 10 * n], jnp.int32), backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_row_matches_lax(backend):
    scores = jax.random.normal(jax.random.key(1), (2, 300_000))
    for k in (1, 100, 2048):
        values, indices = jh.topk(scores, k, backend=backend)
        ev, ei = jax.lax.top_k(scores, k)
        np.testing.assert_array_equal(np.asarray(indices), np.asarray(ei))
        np.testing.assert_array_equal(np.asarray(values), np.asarray(ev))


@pytest.mark.parametrize("backend", BACKENDS)
def test_leading_dims_and_default_lengths(backend):
    scores = jax.random.normal(jax.random.key(2), (2, 3, 50), jnp.bfloat16)
    values, indices = jh.topk(scores, 4, backend=backend)
    ev, ei = jax.lax.top_k(scores, 4)
    np.testing.assert_array_equal(np.asarray(indices), np.asarray(ei))
    np.testing.assert_array_equal(np.asarray(values, np.float32), np.asarray(ev, np.float32))
