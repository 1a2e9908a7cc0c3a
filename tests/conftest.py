"""Shared fixtures: which backends to test here, random inputs, comparisons."""
import os

# Eight host devices for the shard_map tests; must be set before JAX initialises.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import jax_hetero as jh  # noqa: E402
from jax_hetero import backends  # noqa: E402

from hypothesis import settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, derandomize=False)
settings.load_profile("ci")


# On a GPU, XLA runs float32 matmuls of the jnp reference in TF32 by default; the
# references are the specification, so they run at full precision here.
if jax.default_backend() != "cpu":
    jax.config.update("jax_default_matmul_precision", "highest")


def has_cpu_platform() -> bool:
    try:
        jax.devices("cpu")
        return True
    except RuntimeError:
        return False


needs_cpu_platform = pytest.mark.skipif(not has_cpu_platform(),
                                        reason="needs JAX's CPU platform (JAX_PLATFORMS excludes it)")


def skip_module_without_cuda():
    """Skip the calling test module unless JAX sees a GPU and the CUDA backend is built."""
    try:
        jax.devices("gpu")
    except RuntimeError:
        pytest.skip("no CUDA device visible to JAX", allow_module_level=True)
    if backends.module("cuda") is None:
        pytest.skip("jax_hetero was built without the CUDA backend", allow_module_level=True)


def run_stepped_in_command_buffers(one, stacked, calls):
    """Runs one(inputs of step i) at every step i of a jitted loop over `stacked` (a pytree of
    arrays with a leading step axis), twice, and returns both runs' outputs stacked by step.
    The first run must trace the loop body's `calls` CUDA handler calls into XLA's command
    buffers (CUDA graphs): the CUDA module counts handler calls made while their stream was
    being captured.  The second run replays the recorded graphs."""
    steps = len(jax.tree.leaves(stacked)[0])
    at = lambda tree, step: jax.tree.map(lambda a: a[step], tree)

    def run(stacked):
        def body(step, outs):
            return jax.tree.map(lambda o, r: o.at[step].set(r), outs, one(at(stacked, step)))
        init = jax.tree.map(lambda r: jnp.zeros((steps, *r.shape), r.dtype), jax.eval_shape(one, at(stacked, 0)))
        return jax.lax.fori_loop(0, steps, body, init)

    compiled = jax.jit(run).lower(stacked).compile()
    cuda = backends.module("cuda")
    before = cuda.graph_traced_calls()
    first = jax.block_until_ready(compiled(stacked))
    traced = cuda.graph_traced_calls() - before
    assert traced >= calls, f"XLA traced {traced} of the {calls} handler calls into command buffers"
    return first, compiled(stacked)


@pytest.fixture(scope="module")
def cpu_default_device():
    """Run a module's tests on the CPU device: the CPU backend's handlers run only in
    computations placed there, and on a GPU machine the default device is the GPU."""
    if not has_cpu_platform():
        pytest.skip("needs JAX's CPU platform (JAX_PLATFORMS excludes it)")
    with jax.default_device(jax.devices("cpu")[0]):
        yield


if backends.module("cpu") is None:
    raise RuntimeError("jax_hetero was imported from a tree without its compiled CPU backend "
                       f"({jh.__file__}); install it with `pip install .` (or .ci/dev_build.sh)")


def compiled_backends():
    """Compiled backends that run on the default platform of this process."""
    platform = jax.default_backend()
    names = {"cpu": ["cpu"], "gpu": ["cuda"], "cuda": ["cuda"]}.get(platform, [])
    return [b for b in names if backends.module(b) is not None]


COMPILED = compiled_backends()

# For tests that start a child Python: it must import this very jax_hetero (the installed
# package in CI, the working copy in development), never a source tree it happens to sit in.
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(jh.__file__)))


def child_env(**extra):
    """Environment of a child Python run with cwd outside the repository."""
    return {**os.environ, "PYTHONPATH": PACKAGE_PARENT, **extra}


@pytest.fixture(params=COMPILED or [pytest.param("none", marks=pytest.mark.skip("no compiled backend"))])
def backend(request):
    return request.param


@pytest.fixture
def rng(request):
    """A fresh generator per test; the seed is printed on failure for reproduction."""
    seed = np.random.SeedSequence().entropy % (2**32)
    request.node.user_properties.append(("seed", seed))
    print(f"seed={seed}")
    return np.random.default_rng(seed)


def random_array(rng, shape, dtype=np.float32):
    return jax.numpy.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)


def tolerance(dtype):
    return {np.dtype(np.float32): 1e-5, np.dtype(jax.numpy.bfloat16): 2e-2,
            np.dtype(np.float16): 2e-3}[np.dtype(dtype)]


# Values whose order top-k must get exactly right (NaN of both signs, +-inf, +-0).
SPECIALS = np.array([np.nan, -np.nan, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0, 1e-30], np.float32)


def topk_edge_rows(n):
    """Rows of length n that stress the top-k order: ties, sorted runs, signed zeros, specials."""
    return {
        "all_equal": np.ones(n, np.float32),
        "ascending": np.arange(n, dtype=np.float32),
        "descending": -np.arange(n, dtype=np.float32),
        "signed_zeros": np.where(np.arange(n) % 2, 0.0, -0.0).astype(np.float32),
        "nan_and_inf": np.tile(SPECIALS, n // len(SPECIALS) + 1)[:n],
        "all_neg_inf": np.full(n, -np.inf, np.float32),
    }


def assert_topk_equivalent(values, indices, ref_values, ref_indices, scores_of, rtol):
    """Selection results agree up to near-ties: same values (within rtol), and every
    returned index really has the returned score."""
    values, indices = np.asarray(values, np.float32), np.asarray(indices)
    ref_values, ref_indices = np.asarray(ref_values, np.float32), np.asarray(ref_indices)
    np.testing.assert_allclose(values, ref_values, rtol=rtol, atol=rtol)
    assert ((indices == -1) == (ref_indices == -1)).all(), "missing slots differ"
    picked = np.take_along_axis(np.asarray(scores_of, np.float32), np.maximum(indices, 0), axis=-1)
    np.testing.assert_allclose(np.where(indices >= 0, picked, -np.inf), values, rtol=rtol, atol=rtol)
    for row_i, row_r in zip(indices.reshape(-1, indices.shape[-1]), ref_indices.reshape(-1, indices.shape[-1])):
        assert len(set(row_i[row_i >= 0])) == (row_i >= 0).sum(), "duplicate index in a row"


def order_keys(scores):
    """The total order of the contract as unsigned keys: -NaN < -inf < ... < -0 < +0 < ... < NaN."""
    bits = np.asarray(scores, np.float32).view(np.uint32)  # 16-bit floats widen exactly
    return np.where(bits >> 31, ~bits, bits | np.uint32(0x80000000))


def numpy_topk(scores, k, lengths):
    """The contract, computed independently of jax.lax.top_k (which on GPU does not order
    -0.0 below +0.0 or -NaN below -inf for small k)."""
    x = np.asarray(scores)
    flat = x.reshape(-1, x.shape[-1])
    lens = np.asarray(lengths).reshape(-1)
    values = np.full((flat.shape[0], k), -np.inf, x.dtype)
    indices = np.full((flat.shape[0], k), -1, np.int32)
    for r, (row, length) in enumerate(zip(flat, lens)):
        valid = int(np.clip(length, 0, row.shape[0]))
        keys = order_keys(row[:valid])
        order = np.lexsort((np.arange(valid), -keys.astype(np.int64)))[:k]
        values[r, :len(order)] = row[order]
        indices[r, :len(order)] = order
    return values.reshape(x.shape[:-1] + (k,)), indices.reshape(x.shape[:-1] + (k,))
