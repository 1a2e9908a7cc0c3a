"""Gradients (check_grads) and shard_map over a batch-sharded input for every op."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from jax.test_util import check_grads

import jax_hetero as jh
from jax_hetero._compat import shard_map
from conftest import COMPILED, needs_cpu_platform, random_array

BACKENDS = ["xla", *COMPILED]
# The shard_map tests shard over eight forced *CPU* devices, so they test the CPU backend.
HOST_BACKENDS = ["xla", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_grad(backend, rng):
    # Top-k is differentiable only away from ties: values at least 0.04 apart in a random order,
    # so the finite difference (steps of ~1e-4) never reorders them (two normal draws 9e-5 apart
    # made it fail, seed 2923182833).
    spaced = rng.permuted(np.tile(np.arange(50, dtype=np.float32), (3, 1)), axis=1) * 0.05
    scores = jnp.asarray(spaced + rng.uniform(0, 0.01, (3, 50)).astype(np.float32))
    lengths = jnp.array([50, 20, 3], jnp.int32)
    f = lambda s: jh.topk(s, 5, lengths=lengths, backend=backend)[0]
    check_grads(f, (scores,), order=1, modes=["rev"])
    # The gradient lands exactly on the selected positions (missing slots drop).
    g = jax.grad(lambda s: f(s).sum())(scores)
    _, idx = jax.lax.top_k(jnp.where(jnp.arange(50) < lengths[:, None], scores, -jnp.inf), 5)
    expected = np.zeros((3, 50), np.float32)
    for r in range(3):
        expected[r, np.asarray(idx[r])[: int(min(5, lengths[r]))]] = 1
    np.testing.assert_array_equal(np.asarray(g), expected)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_grad(backend, rng):
    table = random_array(rng, (6, 4))
    indices = jnp.array([[0, 5, -1], [5, 5, 2]], jnp.int32)
    check_grads(lambda t: jh.gather(t, indices, backend=backend), (table,), order=1, modes=["rev"])
    g = jax.grad(lambda t: jh.gather(t, indices, backend=backend).sum())(table)
    np.testing.assert_array_equal(np.asarray(g[:, 0]), [1, 0, 1, 0, 0, 3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_attention_grad(backend, rng):
    b, hq, hkv, d, n, block = 2, 4, 2, 8, 40, 8
    q, k, v = (random_array(rng, s) for s in [(b, hq, d), (b, n, hkv, d), (b, n, hkv, d)])
    blocks = jnp.array([[[0, 3, -1], [4, 4, 1]], [[2, 0, 1], [-1, -1, 3]]], jnp.int32)
    lengths = jnp.array([37, 20], jnp.int32)
    f = lambda q, k, v: jh.sparse_attention(q, k, v, blocks, block_size=block, lengths=lengths, backend=backend)
    check_grads(f, (q, k, v), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_attention_without_slots_gives_zeros(backend, rng):
    q, kv = random_array(rng, (2, 4, 8)), random_array(rng, (2, 32, 2, 8))
    out = jh.sparse_attention(q, kv, kv, jnp.zeros((2, 2, 0), jnp.int32), block_size=8, backend=backend)
    np.testing.assert_array_equal(np.asarray(out), 0)


@pytest.mark.parametrize("kind", ["dot", "quest"])
def test_relevancy_reference_is_differentiable(kind, rng):
    q = random_array(rng, (2, 4, 8))
    # Both scores are piecewise linear in q with kinks only where some q_d = 0 (quest switches
    # between min and max there): with q kept off 0, a wide finite difference is exact, where
    # a narrow float32 one drowns in rounding.
    q = jnp.where(q < 0, q - 0.25, q + 0.25)
    lo = random_array(rng, (2, 5, 2, 8))
    memory = (lo, lo + 1.0) if kind == "quest" else lo
    check_grads(lambda q: jh.relevancy(q, memory, kind=kind, backend="xla"),
                (q,), order=1, modes=["rev"], atol=1e-2, rtol=1e-2, eps=1e-2)


def test_relevancy_dsa_reference_gradient(rng):
    """d/dq_h of sum_t sum_h w_h ReLU(q_h . k_t) is w_h * sum of the k_t with q_h . k_t > 0."""
    q, keys, weights = random_array(rng, (2, 4, 8)), random_array(rng, (2, 30, 8)), random_array(rng, (2, 4))
    grad = jax.grad(lambda q: jh.relevancy(q, keys, kind="dsa", weights=weights, backend="xla").sum())(q)
    q64, k64, w64 = (np.asarray(a, np.float64) for a in (q, keys, weights))
    active = np.einsum("bhd,btd->bht", q64, k64) > 0
    expected = w64[..., None] * np.einsum("bht,btd->bhd", active, k64)
    np.testing.assert_allclose(np.asarray(grad), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["dot", "quest", "dsa"])
def test_vmap_over_queries_shares_the_memory(kind, backend, rng):
    """vmap over a batch of queries against one memory: same result as the reference, and the
    CPU handlers read the memory in place (no copy of it per query in the program)."""
    v, b, hq, hkv, d, n, block = 3, 2, 4, 2, 8, 96, 8
    lengths = jnp.array([90, 96], jnp.int32)
    if kind == "dsa":
        memory, weights = random_array(rng, (b, n, d)), random_array(rng, (v, b, hq))
        shared = (v, b, n, d)
    else:
        keys = random_array(rng, (b, n, hkv, d))
        memory = jh.summarize(keys, block_size=block, kind="minmax" if kind == "quest" else "mean")
        weights = jnp.zeros((v, b, hq))
        shared = (v, *memory[0].shape) if kind == "quest" else (v, *memory.shape)
    queries = random_array(rng, (v, b, hq, d))

    def both(q, w, backend):
        opts = dict(kind=kind, lengths=lengths, backend=backend,
                    **({"weights": w} if kind == "dsa" else {"block_size": block}))
        return jh.relevancy(q, memory, **opts), jh.indexer(q, memory, 5, **opts)

    run = jax.jit(jax.vmap(lambda q, w: both(q, w, backend)))
    got, want = run(queries, weights), jax.vmap(lambda q, w: both(q, w, "xla"))(queries, weights)
    finite = jnp.isfinite(want[0])
    np.testing.assert_allclose(np.where(finite, got[0], 0), np.where(finite, want[0], 0), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got[1][1], want[1][1])
    if backend == "cpu":
        text = run.lower(queries, weights).as_text()
        assert "x".join(map(str, shared)) + "xf32" not in text, "the shared memory was copied per query"


def _mesh():
    devices = jax.devices("cpu")
    if len(devices) < 8:
        pytest.skip("needs XLA_FLAGS=--xla_force_host_platform_device_count=8 (set by conftest)")
    return Mesh(np.array(devices[:8]), ("batch",))


def _sharded_run(fn, args, specs, out_specs):
    mesh = _mesh()
    args = [jax.device_put(a, NamedSharding(mesh, s)) for a, s in zip(args, specs)]
    mapped = jax.jit(shard_map(fn, mesh=mesh, in_specs=tuple(specs), out_specs=out_specs))
    hlo = mapped.lower(*args).compile().as_text()
    assert "all-gather" not in hlo and "all-to-all" not in hlo, "the batch-sharded input was gathered"
    return mapped(*args)


@needs_cpu_platform
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_shard_map_topk_and_attention(backend, rng):
    b, hq, hkv, d, n, block = 8, 4, 2, 8, 64, 8
    with jax.default_device(jax.devices("cpu")[0]):
        q, k, v = (random_array(rng, s) for s in [(b, hq, d), (b, n, hkv, d), (b, n, hkv, d)])
        lengths = jnp.asarray(rng.integers(1, n + 1, b), jnp.int32)

    def step(q, k, v, lengths):
        lo, hi = jh.summarize(k, block_size=block, kind="minmax", lengths=lengths, backend=backend)
        _, blocks = jh.indexer(q, (lo, hi), 3, kind="quest", lengths=lengths, block_size=block, backend=backend)
        return jh.sparse_attention(q, k, v, blocks, block_size=block, lengths=lengths, backend=backend)

    spec = P("batch")
    out = _sharded_run(step, (q, k, v, lengths), [spec] * 4, spec)
    np.testing.assert_allclose(np.asarray(out), np.asarray(jax.jit(step)(q, k, v, lengths)), rtol=1e-5, atol=1e-5)


@needs_cpu_platform
@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_shard_map_gather_and_topk(backend, rng):
    with jax.default_device(jax.devices("cpu")[0]):
        scores = random_array(rng, (8, 100))
        table = random_array(rng, (8, 10, 3))

    def step(scores, table):
        _, idx = jh.topk(scores, 4, backend=backend)
        return jax.vmap(lambda t, i: jh.gather(t, i % 10, backend=backend))(table, idx)

    spec = P("batch")
    out = _sharded_run(step, (scores, table), [spec, spec], spec)
    np.testing.assert_array_equal(np.asarray(out), np.asarray(jax.jit(step)(scores, table)))
