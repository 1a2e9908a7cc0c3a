"""Bad input gets an error naming the op and the argument -- at trace time where possible,
as JaxRuntimeError at run time otherwise -- on every backend."""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from jax_hetero._compat import RUNTIME_ERRORS
from conftest import COMPILED, has_cpu_platform

BACKENDS = ["xla", *COMPILED]
x = jnp.ones((2, 10))
q = jnp.ones((2, 4, 8))
kv = jnp.ones((2, 32, 2, 8))
summary = jnp.ones((2, 4, 2, 8))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call, error, pattern", [
    (lambda b: jh.topk(x, 11, backend=b), ValueError, r"topk: k=11 exceeds n=10"),
    (lambda b: jh.topk(x, 0, backend=b), ValueError, r"topk: k=0 must be >= 1"),
    (lambda b: jh.topk(x.astype(jnp.int32), 2, backend=b), TypeError, r"topk: scores must be float32"),
    (lambda b: jh.topk(jnp.float32(1.0), 1, backend=b), ValueError, r"topk: scores must have rank >= 1"),
    (lambda b: jh.topk(x, 2, lengths=jnp.ones(3, jnp.int32), backend=b), ValueError, r"topk: lengths must have shape \(2,\)"),
    (lambda b: jh.topk(x, 2, lengths=jnp.ones(2), backend=b), TypeError, r"topk: lengths must be an int32"),
    (lambda b: jh.topk(x, 2.5, backend=b), TypeError, r"topk: k must be a static Python int"),
    (lambda b: jh.gather(jnp.ones((4, 2)), jnp.array([4]), backend=b), IndexError, r"gather: indices contains 4, outside \[0, 4\)"),
    (lambda b: jh.gather(jnp.ones((4, 2)), jnp.array([-2]), backend=b), IndexError, r"gather: indices contains -2"),
    (lambda b: jh.gather(jnp.ones((4, 2)), jnp.array([1.0]), backend=b), TypeError, r"gather: indices must be an int32"),
    (lambda b: jh.summarize(kv, block_size=0, kind="mean", backend=b), ValueError, r"summarize: block_size=0 must be >= 1"),
    (lambda b: jh.summarize(kv, block_size=4, kind="median", backend=b), ValueError, r"summarize: kind='median' is not one of"),
    (lambda b: jh.summarize(kv[0], block_size=4, kind="mean", backend=b), ValueError, r"summarize: k must have rank 4"),
    (lambda b: jh.relevancy(jnp.ones((2, 3, 8)), summary, kind="dot", backend=b), ValueError, r"relevancy: query heads hq=3 must be a multiple of the KV heads hkv=2"),
    (lambda b: jh.relevancy(q, summary, kind="cosine", backend=b), ValueError, r"relevancy: kind='cosine' is not one of"),
    (lambda b: jh.relevancy(q, summary, kind="quest", backend=b), TypeError, r"relevancy: kind='quest' needs memory=\(min, max\)"),
    (lambda b: jh.relevancy(q, summary, kind="dot", lengths=jnp.ones(2, jnp.int32), backend=b), ValueError, r"relevancy: kind='dot' with lengths needs block_size"),
    (lambda b: jh.relevancy(q, jnp.ones((2, 9, 8)), kind="dsa", backend=b), ValueError, r"relevancy: kind='dsa' needs weights"),
    (lambda b: jh.relevancy(q, summary.astype(jnp.bfloat16), kind="dot", backend=b), TypeError, r"relevancy: q is float32 but memory is bfloat16"),
    (lambda b: jh.relevancy(jnp.ones((2, 4, 7)), summary, kind="dot", backend=b), ValueError, r"relevancy: memory feature dim 8 differs"),
    (lambda b: jh.indexer(q, summary, 5, kind="dot", backend=b), ValueError, r"indexer: k=5 exceeds the 4 scored entries"),
    (lambda b: jh.indexer(q, summary, 2, kind="dot", block_size=-1, lengths=jnp.ones(2, jnp.int32), backend=b), ValueError, r"indexer: block_size=-1 must be >= 1"),
    (lambda b: jh.sparse_attention(q, kv, kv, jnp.zeros((2, 2, 3), jnp.int32), block_size=0, backend=b), ValueError, r"sparse_attention: block_size=0"),
    (lambda b: jh.sparse_attention(jnp.ones((2, 3, 8)), kv, kv, jnp.zeros((2, 2, 3), jnp.int32), block_size=8, backend=b), ValueError, r"sparse_attention: query heads hq=3"),
    (lambda b: jh.sparse_attention(q, kv, kv, jnp.zeros((2, 3, 3), jnp.int32), block_size=8, backend=b), ValueError, r"sparse_attention: block_indices must have shape \[b, hkv, kb\]"),
    (lambda b: jh.sparse_attention(q, kv, kv[:, :5], jnp.zeros((2, 2, 3), jnp.int32), block_size=8, backend=b), ValueError, r"sparse_attention: v must have shape"),
    (lambda b: jh.sparse_attention(q, kv, kv, jnp.full((2, 2, 3), 4, jnp.int32), block_size=8, backend=b), IndexError, r"sparse_attention: block_indices contains 4, outside \[0, 4\)"),
    (lambda b: jh.sparse_attention(q.astype(jnp.float16), kv, kv, jnp.zeros((2, 2, 3), jnp.int32), block_size=8, backend=b), TypeError, r"sparse_attention: q, k and v must share a dtype"),
    (lambda b: jh.topk(x, 2, backend="tpu"), ValueError, r"topk: backend='tpu' is not one of"),
])
def test_trace_time_errors(backend, call, error, pattern):
    with pytest.raises(error, match=pattern):
        call(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_index_out_of_range_at_run_time(backend):
    if backend == "xla" and not has_cpu_platform():
        pytest.skip("the reference checks indices in a host callback, which needs JAX's CPU platform")
    table = jnp.arange(8.0).reshape(4, 2)
    f = jax.jit(lambda t, i: jh.gather(t, i, backend=backend))
    with pytest.raises(RUNTIME_ERRORS, match="gather: indices contains 4"):  # first call
        jax.block_until_ready(f(table, jnp.array([1, 4])))
    np.testing.assert_array_equal(f(table, jnp.array([3, -1])), [[6, 7], [0, 0]])
    with pytest.raises(RUNTIME_ERRORS, match="gather: indices contains 5"):  # cached call
        jax.block_until_ready(f(table, jnp.array([5, 0])))


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_attention_block_out_of_range_at_run_time(backend):
    if backend == "xla" and not has_cpu_platform():
        pytest.skip("the reference checks indices in a host callback, which needs JAX's CPU platform")
    f = jax.jit(lambda i: jh.sparse_attention(q, kv, kv, i, block_size=8, backend=backend))
    jax.block_until_ready(f(jnp.full((2, 2, 3), 3, jnp.int32)))
    with pytest.raises(RUNTIME_ERRORS, match="sparse_attention: block_indices contains 4"):
        jax.block_until_ready(f(jnp.full((2, 2, 3), 4, jnp.int32)))


@pytest.mark.parametrize("backend", BACKENDS + (["fpga"] if jh.backends.has("gather", "fpga") else []))
def test_gather_unchecked_reads_bad_indices_as_missing(backend):
    table = jnp.arange(8.0).reshape(4, 2)
    f = jax.jit(lambda t, i: jh.gather(t, i, backend=backend, check_indices=False))
    np.testing.assert_array_equal(f(table, jnp.array([4, 1, -7, 3, 2**30])), [[0, 0], [2, 3], [0, 0], [6, 7], [0, 0]])
    # nothing flows back to the rows that were not read
    grad = jax.grad(lambda t: f(t, jnp.array([1, 4, -3])).sum())(table)
    np.testing.assert_array_equal(grad, [[0, 0], [1, 1], [0, 0], [0, 0]])


@pytest.mark.parametrize("backend", BACKENDS)
def test_sparse_attention_unchecked_skips_bad_blocks(backend):
    rng = np.random.default_rng(0)
    qr, kr, vr = (jnp.asarray(rng.standard_normal(s), jnp.float32) for s in ((2, 4, 8), (2, 32, 2, 8), (2, 32, 2, 8)))
    bad = jnp.array([[[0, 4, 2], [-5, 1, 99]], [[3, 3, 2**30], [2, -1, 4]]], jnp.int32)
    good = jnp.where((bad >= 0) & (bad < 4), bad, -1)
    run = lambda i, check: jax.jit(lambda i: jh.sparse_attention(qr, kr, kr * vr, i, block_size=8, backend=backend,
                                                                 check_indices=check))(i)
    np.testing.assert_allclose(run(bad, False), run(good, True), rtol=1e-6, atol=1e-6)
    loss = lambda i: lambda q: jh.sparse_attention(q, kr, vr, i, block_size=8, backend=backend,
                                                   check_indices=False).sum()
    np.testing.assert_allclose(jax.grad(loss(bad))(qr), jax.grad(loss(good))(qr), rtol=1e-5, atol=1e-6)


def test_check_indices_must_be_a_bool():
    with pytest.raises(TypeError, match="gather: check_indices must be a static Python bool"):
        jh.gather(jnp.ones((4, 2)), jnp.array([1]), check_indices=jnp.bool_(True) + 0)


def test_missing_backend_says_how_to_build():
    missing = [b for b in ("cuda", "fpga") if jh.backends.module(b) is None]
    if not missing:
        pytest.skip("every backend is built here")
    with pytest.raises(jh.BackendUnavailableError, match=r"not compiled with .* support.*To build it"):
        jh.topk(x, 2, backend=missing[0])


def test_cuda_backend_without_a_gpu_says_so():
    if jh.backends.module("cuda") is None or jax.default_backend() != "cpu":
        pytest.skip("needs the CUDA module built on a machine without a GPU")
    with pytest.raises(jh.BackendUnavailableError, match=r"topk: backend='cuda' .* no CUDA device"):
        jh.topk(x, 2, backend="cuda")


def test_build_info_reports_backends():
    info = jh.build_info()
    assert info["backends"]["cpu"]["available"]
    # the XLA FFI API of the headers it was built with (0.3 from jaxlib 0.10, 0.4 from 0.11)
    assert re.fullmatch(r"\d+\.\d+", info["backends"]["cpu"]["ffi_api_version"])
    assert set(info["backends"]) == {"cpu", "cuda", "fpga"}
    for entry in info["backends"].values():
        assert entry["available"] or "how_to_build" in entry


def test_graph_safe_cuda_ops():
    # The CUDA handlers XLA may trace into command buffers (CUDA graphs): gather and
    # sparse_attention only as the targets that their check_indices=False calls use, since
    # the run-time index check synchronises with the host inside the call.
    cuda = jh.backends.module("cuda")
    if cuda is None:
        pytest.skip("jax_hetero was built without the CUDA backend")
    assert set(cuda.graph_safe()) == {"topk", "indexer_dsa", "indexer_dot", "indexer_quest", "relevancy_dsa",
                                      "relevancy_dot", "relevancy_quest", "sparse_attention_bwd",
                                      "gather_unchecked", "sparse_attention_unchecked"}
    assert set(cuda.ffi_types()) == {"jax_hetero.cuda.call_site_scratch"}


def test_unchecked_calls_lower_to_the_graph_safe_cuda_targets():
    # Lowered for CUDA (no GPU needed): check_indices=False calls the <op>_unchecked target,
    # the default check the synchronising one.
    if jh.backends.module("cuda") is None:
        pytest.skip("jax_hetero was built without the CUDA backend")
    table, rows = jnp.zeros((64, 16)), jnp.zeros((8,), jnp.int32)
    q, k, blocks = jnp.zeros((1, 4, 64)), jnp.zeros((1, 256, 2, 64)), jnp.zeros((1, 2, 4), jnp.int32)
    calls = {"gather": lambda check: jh.gather(table, rows, check_indices=check),
             "sparse_attention": lambda check: jh.sparse_attention(q, k, k, blocks, block_size=16, check_indices=check)}
    for op, call in calls.items():
        for check, target in ((False, f"jax_hetero_{op}_unchecked_cuda"), (True, f"jax_hetero_{op}_cuda")):
            text = jax.jit(lambda: call(check)).trace().lower(lowering_platforms=("cuda",)).as_text()
            assert f"@{target}(" in text, (op, check)


def test_use_backend_context():
    with jh.use_backend("xla"):
        text = jax.jit(lambda s: jh.topk(s, 2)).lower(x).as_text()
    assert "jax_hetero_topk" not in text
    with pytest.raises(ValueError, match="use_backend: backend='gpu'"):
        with jh.use_backend("gpu"):
            pass
