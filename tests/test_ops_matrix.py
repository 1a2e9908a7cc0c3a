"""Every op on every compiled backend against the jnp reference: eager, jit, vmap,
vmap of vmap, on fresh random inputs and all floating dtypes."""
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from conftest import COMPILED, assert_topk_equivalent, random_array, tolerance

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


def case_topk(rng, dtype):
    rows, n, k = 3, int(rng.integers(40, 3000)), None
    k = int(rng.integers(1, n + 1))
    scores = random_array(rng, (rows, n), dtype)
    lengths = jnp.asarray(rng.integers(0, n + 1, rows), jnp.int32)
    call = lambda backend, s, l: jh.topk(s, k, lengths=l, backend=backend)

    def check(out, ref):
        for a, b in zip(out, ref):
            np.testing.assert_array_equal(np.asarray(a, np.float32), np.asarray(b, np.float32))
    return (scores, lengths), call, check


def case_gather(rng, dtype):
    m = int(rng.integers(1, 50))
    table = random_array(rng, (m, 3, 4), dtype)
    indices = jnp.asarray(rng.integers(-1, m, (5, 7)), jnp.int32)
    call = lambda backend, t, i: jh.gather(t, i, backend=backend)
    return (table, indices), call, _exact


def _exact(out, ref):
    np.testing.assert_array_equal(np.asarray(out, np.float32), np.asarray(ref, np.float32))


def _kv_shapes(rng):
    b, hkv = 2, int(rng.choice([1, 2]))
    return b, hkv * int(rng.choice([1, 4])), hkv, int(rng.choice([8, 32])), int(rng.integers(20, 300))


def case_summarize(rng, dtype, kind):
    b, _, hkv, d, n = _kv_shapes(rng)
    block = int(rng.choice([1, 7, 16]))
    keys = random_array(rng, (b, n, hkv, d), dtype)
    lengths = jnp.asarray(rng.integers(0, n + 1, b), jnp.int32)
    call = lambda backend, k, l: jh.summarize(k, block_size=block, kind=kind, lengths=l, backend=backend)

    def check(out, ref):
        for a, r in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
            np.testing.assert_allclose(np.asarray(a, np.float32), np.asarray(r, np.float32),
                                       rtol=tolerance(dtype), atol=tolerance(dtype))
    return (keys, lengths), call, check


def _scoring_inputs(rng, dtype, kind):
    b, hq, hkv, d, n = _kv_shapes(rng)
    block = int(rng.choice([4, 16]))
    nb = -(-n // block)
    if kind == "dsa":
        heads = int(rng.choice([1, 4]))
        q = random_array(rng, (b, heads, d), dtype)
        memory = random_array(rng, (b, n, d), dtype)
        weights = jnp.asarray(rng.standard_normal((b, heads)), jnp.float32)
        entries = n
    else:
        q = random_array(rng, (b, hq, d), dtype)
        lo = random_array(rng, (b, nb, hkv, d), dtype)
        memory = (lo, (lo.astype(jnp.float32) + jnp.abs(random_array(rng, lo.shape))).astype(dtype)) \
            if kind == "quest" else lo
        weights = None
        entries = nb
    lengths = jnp.asarray(rng.integers(0, n + 1, b), jnp.int32)
    return q, memory, weights, lengths, block, entries


def case_relevancy(rng, dtype, kind):
    q, memory, weights, lengths, block, _ = _scoring_inputs(rng, dtype, kind)
    call = lambda backend, q, m, w, l: jh.relevancy(q, m, kind=kind, weights=w, lengths=l,
                                                  block_size=block, backend=backend)

    def check(out, ref):
        np.testing.assert_allclose(np.asarray(out), np.asarray(ref), rtol=1e-4, atol=1e-4)
    return (q, memory, weights, lengths), call, check


def case_indexer(rng, dtype, kind):
    q, memory, weights, lengths, block, entries = _scoring_inputs(rng, dtype, kind)
    k = int(rng.integers(1, entries + 1))
    call = lambda backend, q, m, w, l: jh.indexer(q, m, k, kind=kind, weights=w, lengths=l,
                                                block_size=block, backend=backend)
    scores = lambda q, m, w: jh.relevancy(q, m, kind=kind, weights=w, backend="xla")

    def check(out, ref, args):
        # Reference scores of each (possibly vmapped) row, to verify near-tied choices.
        fn = scores
        for _ in range(args[0].ndim - 3):
            fn = jax.vmap(fn)
        assert_topk_equivalent(*out, *ref, fn(*args[:3]), rtol=1e-4)
    check.needs_args = True
    return (q, memory, weights, lengths), call, check


def case_sparse_attention(rng, dtype):
    b, hq, hkv, d, n = _kv_shapes(rng)
    block = int(rng.choice([1, 4, 16]))
    nb = -(-n // block)
    q = random_array(rng, (b, hq, d), dtype)
    k = random_array(rng, (b, n, hkv, d), dtype)
    v = random_array(rng, (b, n, hkv, d), dtype)
    blocks = jnp.asarray(rng.integers(-1, nb, (b, hkv, int(rng.integers(1, 12)))), jnp.int32)
    lengths = jnp.asarray(rng.integers(0, n + 1, b), jnp.int32)
    call = lambda backend, q, k, v, i, l: jh.sparse_attention(q, k, v, i, block_size=block, lengths=l,
                                                              backend=backend)

    def check(out, ref):
        tol = 10 * tolerance(dtype)
        np.testing.assert_allclose(np.asarray(out, np.float32), np.asarray(ref, np.float32), rtol=tol, atol=tol)
    return (q, k, v, blocks, lengths), call, check


CASES = {
    "topk": case_topk,
    "gather": case_gather,
    "summarize-minmax": partial(case_summarize, kind="minmax"),
    "summarize-mean": partial(case_summarize, kind="mean"),
    **{f"relevancy-{k}": partial(case_relevancy, kind=k) for k in ("dot", "quest", "dsa")},
    **{f"indexer-{k}": partial(case_indexer, kind=k) for k in ("dot", "quest", "dsa")},
    "sparse_attention": case_sparse_attention,
}


def _stack(arg_sets):
    return jax.tree.map(lambda *xs: None if xs[0] is None else jnp.stack(xs), *arg_sets,
                        is_leaf=lambda x: x is None)


def _run_mode(mode, call, rng, args):
    """Inputs for `mode` (extra leading axes of fresh values for vmap) and fn(backend)."""
    if mode in ("eager", "jit"):
        wrap = (lambda f: f) if mode == "eager" else jax.jit
        return (lambda backend: wrap(partial(call, backend))(*args)), args
    depth = 1 if mode == "vmap" else 2
    for _ in range(depth):
        args = _stack([args, _like(args, rng)])

    def fn(backend):
        f = partial(call, backend)
        in_axes = tuple(None if a is None else 0 for a in args)
        for _ in range(depth):
            f = jax.vmap(f, in_axes=in_axes)
        return jax.jit(f)(*args)
    return fn, args


def _like(args, rng):
    """Fresh random values with the shapes and dtypes of `args` (indices stay in range)."""
    def fresh(x):
        if x is None:
            return None
        if jnp.issubdtype(x.dtype, jnp.integer):
            return jnp.asarray(rng.permutation(np.asarray(x).reshape(-1)).reshape(x.shape), x.dtype)
        return random_array(rng, x.shape, x.dtype)
    out = jax.tree.map(fresh, args, is_leaf=lambda x: x is None)
    if any(isinstance(a, tuple) for a in args):  # quest (lo, hi): keep hi >= lo
        out = tuple((a[0], jnp.maximum(a[0], a[1])) if isinstance(a, tuple) else a for a in out)
    return out


@pytest.mark.parametrize("mode", ["eager", "jit", "vmap", "vmap2"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("op", list(CASES))
def test_backend_matches_reference(op, dtype, mode, backend, rng):
    if not jh.backends.has(op.replace("-", "_"), backend):
        pytest.skip(f"{backend} has no handler for {op}")  # e.g. summarize on cuda
    args, call, check = CASES[op](rng, dtype)
    fn, args = _run_mode(mode, call, rng, args)
    out, ref = fn(backend), fn("xla")
    if getattr(check, "needs_args", False):
        check(out, ref, args)
    else:
        check(out, ref)


@pytest.mark.parametrize("op", list(CASES))
def test_auto_uses_compiled_handler(op, rng):
    """backend='auto' lowers to the compiled target of the platform when one exists."""
    args, call, _ = CASES[op](rng, jnp.float32)
    text = jax.jit(partial(call, "auto")).lower(*args).as_text()
    target = f"jax_hetero_{op.split('-')[0]}"
    if any(jh.backends.has(op.replace("-", "_"), b) for b in COMPILED):  # handlers of this platform
        assert target in text, f"auto did not lower {op} to a compiled handler"
