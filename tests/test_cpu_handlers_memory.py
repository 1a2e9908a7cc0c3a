"""The CPU FFI handlers of the memory ops (gather, summarize, relevancy, indexer) against the
jnp reference (backend="xla"): random shapes and lengths, edge cases, jit / vmap / vmap of
vmap, and bad input reaching the handler itself."""
import os
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import jax_hetero as jh
from jax_hetero import backends
from jax_hetero._compat import RUNTIME_ERRORS, JaxRuntimeError
from jax_hetero.ops.indexer import relevancy_then_topk
from jax_hetero.ops.relevancy import prepare
from conftest import child_env, random_array

pytestmark = [pytest.mark.skipif(backends.module("cpu") is None, reason="no CPU backend"), pytest.mark.usefixtures("cpu_default_device")]

DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]
KINDS = ["dot", "quest", "dsa"]
seeds = st.integers(0, 2**32 - 1)
dtypes = st.sampled_from(DTYPES)
# Every example compiles fresh shapes on a small shared machine: keep the counts modest.
few = settings(max_examples=8, deadline=None)


def f32(x):
    return np.asarray(x, np.float32)


def assert_same(out, ref):
    for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_array_equal(f32(a), f32(b))


# --- gather -----------------------------------------------------------------------------

@given(seed=seeds, dtype=dtypes, m=st.integers(1, 40), feature_shape=st.sampled_from([(), (1,), (3, 5), (64,)]),
       index_shape=st.sampled_from([(0,), (1,), (7,), (3, 4)]))
@few
def test_gather_matches_reference(seed, dtype, m, feature_shape, index_shape):
    rng = np.random.default_rng(seed)
    table = random_array(rng, (m,) + feature_shape, dtype)
    indices = jnp.asarray(rng.integers(-1, m, index_shape), jnp.int32)  # duplicates and -1 likely
    assert_same(jh.gather(table, indices, backend="cpu"), jh.gather(table, indices, backend="xla"))


def test_gather_duplicates_and_unused_slots():
    table = jnp.arange(12.0).reshape(4, 3)
    out = jax.jit(lambda t, i: jh.gather(t, i, backend="cpu"))(table, jnp.array([2, 2, -1, 0, -1, 2]))
    np.testing.assert_array_equal(out, [[6, 7, 8], [6, 7, 8], [0, 0, 0], [0, 1, 2], [0, 0, 0], [6, 7, 8]])


MAPPINGS = {"shared-table": (None, 0), "both": (0, 0), "shared-indices": (0, None)}


@pytest.mark.parametrize("outer", list(MAPPINGS))
@pytest.mark.parametrize("inner", list(MAPPINGS))
def test_gather_nested_vmap_broadcasts(outer, inner):
    """Every mix of mapped and shared table / indices over two vmap levels."""
    rng = np.random.default_rng(0)
    outer_axes, inner_axes = MAPPINGS[outer], MAPPINGS[inner]
    lead = lambda i: tuple(size for size, axes in ((3, outer_axes), (2, inner_axes)) if axes[i] == 0)
    table = random_array(rng, lead(0) + (9, 4))
    indices = jnp.asarray(rng.integers(-1, 9, lead(1) + (5,)), jnp.int32)

    def run(backend):
        f = lambda t, i: jh.gather(t, i, backend=backend)
        return jax.jit(jax.vmap(jax.vmap(f, in_axes=inner_axes), in_axes=outer_axes))(table, indices)
    out = run("cpu")
    assert out.shape == (3, 2, 5, 4)
    assert_same(out, run("xla"))


def test_gather_unbatched_table_under_vmap():
    rng = np.random.default_rng(1)
    table = random_array(rng, (10, 6), jnp.bfloat16)
    indices = jnp.asarray(rng.integers(-1, 10, (4, 3, 7)), jnp.int32)
    f = lambda backend: jax.jit(jax.vmap(jax.vmap(lambda i: jh.gather(table, i, backend=backend))))
    assert_same(f("cpu")(indices), f("xla")(indices))


@pytest.mark.parametrize("bad", [5, -2, 2**31 - 1, -(2**31)])
def test_gather_bad_index_at_run_time(bad):
    table = jnp.arange(10.0).reshape(5, 2)
    f = jax.jit(lambda t, i: jh.gather(t, i, backend="cpu"))
    with pytest.raises(JaxRuntimeError, match=rf"gather: indices contains {bad} .*m=5"):
        jax.block_until_ready(f(table, jnp.array([0, -1, bad, 1], jnp.int32)))


def test_gather_bad_index_under_vmap():
    table = jnp.ones((3, 4, 2))
    f = jax.jit(jax.vmap(lambda t, i: jh.gather(t, i, backend="cpu")))
    with pytest.raises(JaxRuntimeError, match="gather"):
        jax.block_until_ready(f(table, jnp.array([[0, 1], [3, 4], [2, 0]], jnp.int32)))


# --- summarize --------------------------------------------------------------------------

@given(seed=seeds, dtype=dtypes, b=st.integers(1, 3), n=st.integers(1, 70), hkv=st.integers(1, 3),
       d=st.sampled_from([1, 5, 16]), block=st.sampled_from([1, 3, 16, 128]), kind=st.sampled_from(["minmax", "mean"]))
@few
def test_summarize_matches_reference(seed, dtype, b, n, hkv, d, block, kind):
    rng = np.random.default_rng(seed)
    keys = random_array(rng, (b, n, hkv, d), dtype)
    lengths = jnp.asarray(rng.integers(0, n + 1, b), jnp.int32).at[0].set(int(rng.choice([0, n])))
    out = jh.summarize(keys, block_size=block, kind=kind, lengths=lengths, backend="cpu")
    ref = jh.summarize(keys, block_size=block, kind=kind, lengths=lengths, backend="xla")
    if kind == "minmax":
        assert_same(out, ref)  # min and max are exact
    else:  # mean: float32 sums in another order, then one rounding to the dtype
        tol = {jnp.float32: 1e-5, jnp.bfloat16: 1e-2, jnp.float16: 1e-3}[dtype]
        assert out.dtype == ref.dtype
        np.testing.assert_allclose(f32(out), f32(ref), rtol=tol, atol=tol)


def test_summarize_empty_and_partial_blocks():
    keys = jnp.arange(2 * 10 * 1 * 2, dtype=jnp.float32).reshape(2, 10, 1, 2) + 1
    lo, hi = jh.summarize(keys, block_size=4, kind="minmax", lengths=jnp.array([0, 6]), backend="cpu")
    mean = jh.summarize(keys, block_size=4, kind="mean", lengths=jnp.array([0, 6]), backend="cpu")
    assert not np.any(f32(lo[0])) and not np.any(f32(hi[0])) and not np.any(f32(mean[0]))
    np.testing.assert_array_equal(lo[1, :, 0], [[21, 22], [29, 30], [0, 0]])
    np.testing.assert_array_equal(hi[1, :, 0], [[27, 28], [31, 32], [0, 0]])
    np.testing.assert_array_equal(mean[1, :, 0], [[24, 25], [30, 31], [0, 0]])


def test_summarize_minmax_propagates_nan():
    keys = np.arange(2 * 12 * 2 * 3, dtype=np.float32).reshape(2, 12, 2, 3)
    keys[0, 0, 0, 0] = keys[0, 5, 1, 2] = keys[1, 11, 0, 1] = np.nan  # first, middle, last token
    keys = jnp.asarray(keys, jnp.bfloat16)
    for lengths in ([12, 12], [3, 11]):
        lengths = jnp.array(lengths, jnp.int32)
        assert_same(jh.summarize(keys, block_size=4, kind="minmax", lengths=lengths, backend="cpu"),
                    jh.summarize(keys, block_size=4, kind="minmax", lengths=lengths, backend="xla"))


def test_summarize_nested_vmap():
    rng = np.random.default_rng(2)
    keys = random_array(rng, (2, 3, 2, 33, 2, 8), jnp.bfloat16)
    lengths = jnp.asarray(rng.integers(0, 34, (2, 3, 2)), jnp.int32)

    def run(backend):
        f = lambda k, l: jh.summarize(k, block_size=8, kind="minmax", lengths=l, backend=backend)
        return jax.jit(jax.vmap(jax.vmap(f)))(keys, lengths)
    assert_same(run("cpu"), run("xla"))


# --- relevancy and indexer --------------------------------------------------------------

def scoring_inputs(rng, dtype, kind, b, hkv, group, d, n, block, values=None):
    """(q, memory, weights, lengths) with n tokens; `values` draws integer-valued entries
    (exact float arithmetic, so scores tie exactly) instead of normal ones."""
    def draw(shape, dt=dtype):
        if values is not None:
            return jnp.asarray(rng.integers(-values, values + 1, shape), dt)
        return random_array(rng, shape, dt)
    nb = -(-n // block)
    lengths = jnp.asarray(rng.integers(0, n + 1, b), jnp.int32)
    if kind == "dsa":
        heads = hkv * group
        return draw((b, heads, d)), draw((b, n, d)), draw((b, heads), jnp.float32), lengths
    q = draw((b, hkv * group, d))
    lo = draw((b, nb, hkv, d))
    # Unordered bounds on purpose: the kernel must compute max(q*min, q*max) literally.
    memory = (lo, draw((b, nb, hkv, d))) if kind == "quest" else lo
    return q, memory, None, lengths


def call(fn, kind, backend, block, *extra):
    return lambda q, m, w, l: fn(q, m, *extra, kind=kind, weights=w, lengths=l, block_size=None if kind == "dsa" else block,
                                 backend=backend)


def near_tie_safe(indices, ref_indices, ref_values, rtol):
    """Indices must match except where reference scores are within rounding of each other."""
    ref_values = f32(ref_values)
    for row_i, row_r, row_v in zip(indices.reshape(-1, indices.shape[-1]),
                                   ref_indices.reshape(-1, indices.shape[-1]),
                                   ref_values.reshape(-1, indices.shape[-1])):
        scale = np.max(np.abs(row_v[np.isfinite(row_v)]), initial=1.0)
        with np.errstate(invalid="ignore"):  # -inf - -inf in the missing slots
            gaps = np.abs(np.diff(row_v))
        tied = np.zeros(len(row_v), bool)
        close = np.nan_to_num(gaps, nan=0.0) <= rtol * scale
        tied[:-1] |= close
        tied[1:] |= close
        if len(row_v):
            tied[-1] = True  # the k-th slot may swap with the first entry left out
        assert np.array_equal(row_i[~tied], row_r[~tied])


@given(seed=seeds, dtype=dtypes, kind=st.sampled_from(KINDS), b=st.integers(1, 3), hkv=st.integers(1, 3),
       group=st.sampled_from([1, 2, 4]), d=st.sampled_from([1, 7, 8, 32, 33]), n=st.integers(1, 600),
       block=st.sampled_from([1, 4, 16]))
@few
def test_relevancy_matches_reference(seed, dtype, kind, b, hkv, group, d, n, block):
    rng = np.random.default_rng(seed)
    args = scoring_inputs(rng, dtype, kind, b, hkv, group, d, n, block)
    out = call(jh.relevancy, kind, "cpu", block)(*args)
    ref = call(jh.relevancy, kind, "xla", block)(*args)
    assert out.dtype == jnp.float32 and out.shape == ref.shape
    out, ref = f32(out), f32(ref)
    np.testing.assert_array_equal(np.isneginf(out), np.isneginf(ref))
    finite = np.isfinite(ref)
    scale = np.max(np.abs(ref[finite]), initial=1.0)
    np.testing.assert_allclose(out[finite], ref[finite], rtol=1e-5, atol=1e-5 * scale)


@given(seed=seeds, dtype=dtypes, kind=st.sampled_from(KINDS), b=st.integers(1, 3), hkv=st.integers(1, 2),
       group=st.sampled_from([1, 4]), d=st.sampled_from([3, 16, 32]), n=st.integers(1, 2000),
       block=st.sampled_from([1, 16]), k_frac=st.floats(0.0, 1.0))
@few
def test_indexer_matches_reference_and_cpu_topk_of_relevancy(seed, dtype, kind, b, hkv, group, d, n, block, k_frac):
    rng = np.random.default_rng(seed)
    args = scoring_inputs(rng, dtype, kind, b, hkv, group, d, n, block)
    entries = n if kind == "dsa" else -(-n // block)
    k = max(1, int(round(k_frac * entries)))
    values, indices = call(jh.indexer, kind, "cpu", block, k)(*args)
    assert values.dtype == jnp.float32 and indices.dtype == jnp.int32
    # Fused scoring equals the two-step CPU path bit for bit.
    scores = call(jh.relevancy, kind, "cpu", None)(*args[:3], None)
    valid = args[3] if kind == "dsa" else (args[3] + block - 1) // block
    valid = jnp.broadcast_to(valid.reshape((b,) + (1,) * (scores.ndim - 2)), scores.shape[:-1])
    assert_same((values, indices), jh.topk(scores, k, lengths=valid, backend="cpu"))
    # Against the reference: same scores within rounding, same indices except near ties.
    ref_values, ref_indices = call(jh.indexer, kind, "xla", block, k)(*args)
    values, indices, ref_indices = f32(values), np.asarray(indices), np.asarray(ref_indices)
    np.testing.assert_array_equal(indices == -1, ref_indices == -1)
    finite = np.isfinite(f32(ref_values))
    scale = np.max(np.abs(f32(ref_values)[finite]), initial=1.0)
    np.testing.assert_allclose(values[finite], f32(ref_values)[finite], rtol=1e-5, atol=1e-5 * scale)
    near_tie_safe(indices, ref_indices, ref_values, 1e-5)
    for row in indices.reshape(-1, k):  # distinct, and only admitted entries
        chosen = row[row >= 0]
        assert len(set(chosen.tolist())) == len(chosen)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: jnp.dtype(d).name)
@pytest.mark.parametrize("kind", KINDS)
def test_indexer_ties_go_to_lower_index(kind, dtype):
    """Integer-valued inputs make every score exact, with many ties: bit-equal to the reference."""
    rng = np.random.default_rng(3)
    args = scoring_inputs(rng, dtype, kind, 2, 2, 2, 8, 900, 4, values=1)
    for k in (1, 17, 225 if kind != "dsa" else 900):
        assert_same(call(jh.indexer, kind, "cpu", 4, k)(*args), call(jh.indexer, kind, "xla", 4, k)(*args))
    assert_same(call(jh.relevancy, kind, "cpu", 4)(*args), call(jh.relevancy, kind, "xla", 4)(*args))


@pytest.mark.parametrize("kind", KINDS)
def test_indexer_inf_and_nan_scores(kind):
    """Entries scoring +-inf or NaN rank as in lax.top_k (NaN first); whole -inf / NaN rows."""
    rng = np.random.default_rng(4)
    b, d, n, block = 3, 8, 64, 4
    q, memory, w, lengths = scoring_inputs(rng, jnp.float32, kind, b, 1, 2, d, n, block, values=2)
    q = jnp.abs(q) + 1  # positive queries: a special key value gives a special score of its sign
    if w is not None:
        w = jnp.abs(w) + 1
    special = np.array([np.inf, -np.inf, np.nan], np.float32)

    def poison(x):
        x = np.array(x)
        entries = x.shape[1]
        for row in range(b):
            pos = rng.choice(entries, 6, replace=False)
            x[row, pos] = special[np.arange(6) % 3].reshape((6,) + (1,) * (x.ndim - 2))
        x[1] = -np.inf  # a whole row of -inf scores (or 0 for dsa, where ReLU clips)
        x[2, : entries // 2] = np.nan
        return jnp.asarray(x)
    memory = (poison(memory[0]),) * 2 if kind == "quest" else poison(memory)
    lengths = jnp.array([n, n, n // 3], jnp.int32)
    args = (q, memory, w, lengths)
    entries = n if kind == "dsa" else n // block
    for k in (1, 5, entries):
        assert_same(call(jh.indexer, kind, "cpu", block, k)(*args), call(jh.indexer, kind, "xla", block, k)(*args))


@pytest.mark.parametrize("kind", KINDS)
def test_unfused_indexer_path_matches_the_fused_one(kind):
    """relevancy_then_topk -- how the CUDA indexer runs k > 2048 -- on the CPU handlers."""
    rng = np.random.default_rng(8)
    q, memory, w, lengths = scoring_inputs(rng, jnp.float32, kind, 2, 2, 2, 16, 300, 4)
    block = None if kind == "dsa" else 4
    _, operands, entries, valid, shape = prepare("indexer", q, memory, kind, w, lengths, block)
    k = entries // 2
    got = jax.jit(relevancy_then_topk(kind, k, shape, "cpu"))(*operands, valid)
    assert_same(got, call(jh.indexer, kind, "cpu", 4, k)(q, memory, w, lengths))


@pytest.mark.parametrize("kind", KINDS)
def test_indexer_empty_lengths_and_full_k(kind):
    rng = np.random.default_rng(5)
    q, memory, w, _ = scoring_inputs(rng, jnp.bfloat16, kind, 2, 2, 2, 16, 40, 8)
    entries = 40 if kind == "dsa" else 5
    lengths = jnp.array([0, 40], jnp.int32)
    values, indices = call(jh.indexer, kind, "cpu", 8, entries)(q, memory, w, lengths)
    assert np.all(np.asarray(indices[0]) == -1) and np.all(np.isneginf(f32(values[0])))
    assert np.array_equal(np.sort(np.asarray(indices[1]), axis=-1), np.broadcast_to(np.arange(entries), indices[1].shape))


@pytest.mark.parametrize("kind", KINDS)
def test_single_long_row_splits_into_chunks(kind):
    """One batch row long enough to be scored in several parallel chunks and merged."""
    rng = np.random.default_rng(6)
    n, block = (20000, 1) if kind == "dsa" else (40000, 4)
    args = scoring_inputs(rng, jnp.float32, kind, 1, 1, 2, 16, n, block)
    args = args[:3] + (jnp.array([n - 5], jnp.int32),)
    scores = call(jh.relevancy, kind, "cpu", block)(*args)
    ref = call(jh.relevancy, kind, "xla", block)(*args)
    np.testing.assert_allclose(f32(scores), f32(ref), rtol=1e-5, atol=1e-4)
    for k in (1, 300, 2048):
        out = call(jh.indexer, kind, "cpu", block, k)(*args)
        lengths = -(-(n - 5) // block)
        assert_same(out, jh.topk(scores, k, lengths=jnp.full(scores.shape[:-1], lengths, jnp.int32), backend="cpu"))


def test_denormal_scores_do_not_depend_on_the_thread():
    """XLA runs handlers with denormals flushed; the pool threads adopt the caller's mode, so
    a long row split over threads scores like the reference and fused == two-step."""
    rng = np.random.default_rng(9)
    q = random_array(rng, (1, 4, 16)) * 1e-20
    keys = random_array(rng, (1, 20000, 16)) * 1e-20
    w = jnp.ones((1, 4), jnp.float32)
    scores = jh.relevancy(q, keys, kind="dsa", weights=w, backend="cpu")
    assert_same(scores, jh.relevancy(q, keys, kind="dsa", weights=w, backend="xla"))
    assert_same(jh.indexer(q, keys, 100, kind="dsa", weights=w, backend="cpu"), jh.topk(scores, 100, backend="cpu"))


@pytest.mark.parametrize("mode", ["jit", "vmap", "vmap2"])
@pytest.mark.parametrize("kind", KINDS)
def test_scoring_under_transforms(kind, mode):
    rng = np.random.default_rng(7)
    depth = {"jit": 0, "vmap": 1, "vmap2": 2}[mode]
    sets = [scoring_inputs(rng, jnp.float16, kind, 2, 2, 2, 8, 100, 4, values=2) for _ in range(2 ** depth)]
    args = sets[0]
    for _ in range(depth):  # stack pairs of argument sets into a new leading axis
        half = len(sets) // 2
        sets = [jax.tree.map(lambda a, c: jnp.stack([a, c]), sets[2 * i], sets[2 * i + 1]) for i in range(half)]
        args = sets[0]

    def run(fn, backend, *extra):
        f = call(fn, kind, backend, 4, *extra)
        if kind != "dsa":
            f = (lambda g: lambda q, m, w, l: g(q, m, None, l))(f)
        for _ in range(depth):
            f = jax.vmap(f, in_axes=(0, 0, None if kind != "dsa" else 0, 0))
        return jax.jit(f)(*args)
    assert_same(run(jh.relevancy, "cpu"), run(jh.relevancy, "xla"))
    assert_same(run(jh.indexer, "cpu", 9), run(jh.indexer, "xla", 9))


def isa_case(backend):
    """Scores of every kind on fixed inputs, flattened; on "cpu" also checks that the fused
    and two-step paths are bit-identical with the kernel variant of this process."""
    rng = np.random.default_rng(8)
    q = random_array(rng, (2, 6, 40), jnp.bfloat16)
    keys = random_array(rng, (2, 777, 40), jnp.bfloat16)
    w = random_array(rng, (2, 6))
    summary = random_array(rng, (2, 300, 2, 40), jnp.bfloat16)
    lengths = jnp.array([700, 777], jnp.int32)
    s = jh.relevancy(q, keys, kind="dsa", weights=w, lengths=lengths, backend=backend)
    v, i = jh.indexer(q, keys, 50, kind="dsa", weights=w, lengths=lengths, backend=backend)
    t = jh.relevancy(q[:, :4], (summary, summary + 1), kind="quest", backend=backend)
    d = jh.relevancy(q[:, :4], summary, kind="dot", backend=backend)
    if backend == "cpu":
        two_step = jh.topk(jh.relevancy(q, keys, kind="dsa", weights=w, backend="cpu"), 50, lengths=lengths,
                           backend="cpu")
        assert_same(two_step, (v, i))
    return np.concatenate([f32(x).ravel() for x in (s, v, t, d)])


@pytest.mark.parametrize("isa", ["base", "avx2"])
def test_other_isa_variants_agree(isa):
    """The scoring kernels are compiled per ISA and picked once per process; this process
    uses the best one, a child capped by JAX_HETERO_CPU_ISA runs another."""
    child = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        import numpy as np
        from test_cpu_handlers_memory import isa_case
        np.save(sys.argv[1], isa_case("cpu"))
    """)
    with tempfile.TemporaryDirectory() as out:
        subprocess.run([sys.executable, "-c", child, f"{out}/cpu.npy"], check=True,
                       env=child_env(JAX_HETERO_CPU_ISA=isa), cwd=out)
        got = np.load(f"{out}/cpu.npy")
    ref = isa_case("xla")
    finite = np.isfinite(ref)
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(ref))
    np.testing.assert_allclose(got[finite], ref[finite], rtol=1e-5, atol=1e-4)


# --- bad input reaching the handler (Python normally rejects it first) --------------------

def raw(target, outs, *args, **attrs):
    backends.module("cpu")
    return jax.ffi.ffi_call(backends.target_name(target, "cpu"), outs, vmap_method="broadcast_all")(*args, **attrs)


F32 = jnp.float32


@pytest.mark.parametrize("target, outs, args, attrs, pattern", [
    ("relevancy_dot", jax.ShapeDtypeStruct((2, 2, 4), F32),
     (jnp.ones((2, 4, 8)), jnp.ones((2, 4, 2, 8), jnp.bfloat16), jnp.ones(2, jnp.int32)), {},
     "relevancy: q is float32 but memory is bfloat16"),
    ("relevancy_dot", jax.ShapeDtypeStruct((2, 2, 4), F32),
     (jnp.ones((2, 3, 8)), jnp.ones((2, 4, 2, 8)), jnp.ones(2, jnp.int32)), {}, "relevancy: query heads hq=3"),
    ("relevancy_quest", jax.ShapeDtypeStruct((2, 2, 4), F32),
     (jnp.ones((2, 4, 8)), jnp.ones((2, 4, 2, 8)), jnp.ones((2, 5, 2, 8)), jnp.ones(2, jnp.int32)), {},
     "relevancy: memory\\[1\\]"),
    ("relevancy_dsa", jax.ShapeDtypeStruct((2, 9), F32),
     (jnp.ones((2, 4, 8)), jnp.ones((2, 9, 8)), jnp.ones((2, 3)), jnp.ones(2, jnp.int32)), {}, "relevancy: weights"),
    ("relevancy_dsa", jax.ShapeDtypeStruct((2, 9), F32),
     (jnp.ones((2, 4, 8)), jnp.ones((2, 9, 8)), jnp.ones((2, 4)), jnp.ones(3, jnp.int32)), {}, "relevancy: valid counts"),
    ("relevancy_dsa", jax.ShapeDtypeStruct((2, 9), F32),
     (jnp.ones((2, 4, 8), jnp.int32), jnp.ones((2, 9, 8), jnp.int32), jnp.ones((2, 4)), jnp.ones(2, jnp.int32)), {},
     "relevancy: q must be float32, bfloat16 or float16, got int32"),
    ("indexer_dsa", (jax.ShapeDtypeStruct((2, 10), F32), jax.ShapeDtypeStruct((2, 10), jnp.int32)),
     (jnp.ones((2, 4, 8)), jnp.ones((2, 9, 8)), jnp.ones((2, 4)), jnp.ones(2, jnp.int32)), {"k": np.int64(10)},
     "indexer: k=10"),
    ("indexer_dot", (jax.ShapeDtypeStruct((2, 2, 2), F32), jax.ShapeDtypeStruct((2, 2, 2), jnp.int32)),
     (jnp.ones((2, 4, 8)), jnp.ones((2, 4, 2, 7)), jnp.ones(2, jnp.int32)), {"k": np.int64(2)},
     "indexer: memory feature dim 7"),
    ("summarize_mean", jax.ShapeDtypeStruct((2, 2, 2, 8), F32),
     (jnp.ones((2, 9, 2, 8)), jnp.ones(2, jnp.int32)), {"block_size": 4}, "summarize: each output"),
    ("summarize_minmax", (jax.ShapeDtypeStruct((2, 3, 2, 8), F32),) * 2,
     (jnp.ones((2, 9, 2, 8)), jnp.ones(2, jnp.int32)), {"block_size": 0}, "summarize: block_size=0"),
    ("gather", jax.ShapeDtypeStruct((3, 4), F32), (jnp.ones((5, 4)), jnp.zeros(2, jnp.int32)),
     {"check_indices": True}, "gather: output rows"),
    ("gather", jax.ShapeDtypeStruct((2, 4), jnp.float16), (jnp.ones((5, 4)), jnp.zeros(2, jnp.int32)),
     {"check_indices": True}, "gather: output is float16"),
])
def test_handler_rejects_bad_operands(target, outs, args, attrs, pattern):
    # A repeated (cached) dispatch may raise ValueError instead (jax-ml/jax#34083).
    with pytest.raises(RUNTIME_ERRORS, match=pattern):
        jax.block_until_ready(raw(target, outs, *args, **attrs))
