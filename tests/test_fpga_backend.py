"""backend="fpga" end to end: the FFI handlers, the bridge and the emulated device (the hls/
kernel sources run in-process) against backend="xla", inside jax.jit; delta transfers, stale
memory, the errors (capacity, k, dtype, no card), threads, and the XRT path (noop shim)."""
import os
import subprocess
import sys
import textwrap
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from jax_hetero import backends
from jax_hetero._compat import JaxRuntimeError

if backends.module("fpga") is None:
    pytest.skip("jax_hetero was built without the FPGA bridge", allow_module_level=True)

from jax_hetero import fpga  # noqa: E402

from conftest import assert_topk_equivalent, child_env  # noqa: E402


@pytest.fixture(autouse=True)
def emulated_device(monkeypatch):
    """Every test starts on a fresh emulated device with empty statistics."""
    monkeypatch.setenv("JAX_HETERO_FPGA_DEVICE", "emulated")
    monkeypatch.delenv("JAX_HETERO_FPGA_MEMORY_BYTES", raising=False)
    monkeypatch.delenv("JAX_HETERO_FPGA_VERIFY", raising=False)
    fpga.reset()
    fpga.reset_stats()
    yield
    fpga.reset()


def small_ints(rng, shape, dtype=np.float32, low=-3, high=4):
    """Integer-valued inputs: every score is exact in any summation order, so the kernel and
    the reference must agree bit for bit, ties included."""
    return jnp.asarray(rng.integers(low, high, shape).astype(np.float32)).astype(dtype)


def indexer_fn(kind, k, backend, block_size=None):
    def f(q, memory, weights, lengths):
        return jh.indexer(q, memory, k, kind=kind, weights=weights, lengths=lengths,
                          block_size=block_size, backend=backend)
    return jax.jit(f)


def indexer_inputs(rng, kind, dtype, b=2, hq=8, hkv=2, d=48, n=700, make=small_ints):
    q = make(rng, (b, hq, d), dtype)
    if kind == "dsa":
        return q, make(rng, (b, n, d), dtype), jnp.asarray(rng.integers(0, 3, (b, hq)).astype(np.float32))
    if kind == "quest":
        lo = make(rng, (b, n, hkv, d), dtype)
        return q, (lo, lo + jnp.abs(make(rng, (b, n, hkv, d), dtype))), None
    return q, make(rng, (b, n, hkv, d), dtype), None


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("kind", ["dot", "quest", "dsa"])
def test_indexer_matches_xla_exactly(rng, kind, dtype):
    q, memory, weights = indexer_inputs(rng, kind, dtype)
    block_size = None if kind == "dsa" else 4
    lengths = jnp.array([650, 37], jnp.int32) * (1 if kind == "dsa" else 4)
    out = indexer_fn(kind, 64, "fpga", block_size)(q, memory, weights, lengths)
    ref = indexer_fn(kind, 64, "xla", block_size)(q, memory, weights, lengths)
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(ref[0]))
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref[1]))


@pytest.mark.parametrize("kind", ["dot", "dsa"])
def test_indexer_random_normal_and_vmap(rng, kind):
    normal = lambda rng, shape, dtype: jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
    q, memory, weights = indexer_inputs(rng, kind, jnp.float32, b=3, make=normal)
    lengths = jnp.array([700, 500, 3], jnp.int32)
    k = 32
    block_size = None if kind == "dsa" else 1

    def one(q, memory, weights, lengths, backend):
        return jh.indexer(q, memory, k, kind=kind, weights=weights, lengths=lengths, block_size=block_size,
                          backend=backend)
    # vmap over a leading axis of 2: the handler sees it as extra batch.
    stack = lambda x: None if x is None else jnp.stack([x, x[::-1]])
    args = (stack(q), stack(memory), stack(weights), stack(lengths))
    axes = (0, 0, None if weights is None else 0, 0)
    out = jax.jit(jax.vmap(lambda *a: one(*a, "fpga"), in_axes=axes))(*args)
    ref = jax.jit(jax.vmap(lambda *a: one(*a, "xla"), in_axes=axes))(*args)
    scores = jax.vmap(lambda q, m, w: jh.relevancy(q, m, kind=kind, weights=w, backend="xla"), in_axes=axes[:3])(
        *args[:3])
    valid = np.arange(scores.shape[-1]) < np.asarray(args[3]).reshape(2, 3, *([1] * (scores.ndim - 2)))
    assert_topk_equivalent(out[0], out[1], ref[0], ref[1], np.where(valid, scores, -np.inf), rtol=1e-4)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16, jnp.float16])
def test_gather_matches_xla(rng, dtype):
    table = jnp.asarray(rng.standard_normal((300, 4, 7), dtype=np.float32)).astype(dtype)
    indices = jnp.asarray(rng.integers(-1, 300, (5, 11)), jnp.int32)
    f = lambda backend: jax.jit(lambda t, i: jh.gather(t, i, backend=backend))
    np.testing.assert_array_equal(np.asarray(f("fpga")(table, indices)), np.asarray(f("xla")(table, indices)))


def test_gather_changed_rows_are_resent(rng):
    table = np.asarray(rng.standard_normal((64, 16)), np.float32)
    indices = jnp.array([3, 9, -1, 9], jnp.int32)
    f = jax.jit(lambda t, i: jh.gather(t, i, backend="fpga"))
    f(jnp.asarray(table), indices)
    table[9] += 1.0  # a selected row changes in place (e.g. the last KV page fills up)
    out = f(jnp.asarray(table), indices)
    np.testing.assert_array_equal(np.asarray(out), np.where(np.array([3, 9, -1, 9])[:, None] >= 0,
                                                            table[[3, 9, 0, 9]], 0))
    last = fpga.stats()[-1]
    assert last["stale_detected"] and last["memory_rows_uploaded"] == 1


def test_delta_transfers_send_only_appended_rows(rng):
    b, h, d, n, k = 2, 8, 64, 4096, 16
    q, keys, weights = indexer_inputs(rng, "dsa", jnp.bfloat16, b=b, hq=h, d=d, n=n)
    f = indexer_fn("dsa", k, "fpga")
    ref = indexer_fn("dsa", k, "xla")
    for length in (3000, 3001, 3002, 3010):
        lengths = jnp.array([length, length - 1000], jnp.int32)
        out = f(q, keys, weights, lengths)
        np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref(q, keys, weights, lengths)[1]))
    calls = fpga.stats()
    row_bytes = d * 2
    assert calls[0]["new_memory"] and calls[0]["memory_rows_uploaded"] == 3000 + 2000
    assert [c["memory_rows_uploaded"] for c in calls[1:]] == [2, 2, 16]
    for call in calls[1:]:
        assert not call["new_memory"] and not call["stale_detected"]
        # query (float32) + weights + lengths + the appended rows: far below the memory itself
        small = b * h * d * 4 + b * h * 4 + b * 4 + call["memory_rows_uploaded"] * row_bytes
        assert call["bytes_to_device"] == small < calls[0]["bytes_to_device"] / 20
        assert call["bytes_from_device"] == b * k * 8
        assert call["modelled_total_s"] > 0 and call["timing"].startswith("modelled")


def test_stale_memory_is_detected_and_resent(rng):
    q, keys, weights = indexer_inputs(rng, "dsa", jnp.float32, n=512)
    weights = jnp.abs(weights)  # so that the rewritten row's large logits win
    lengths = jnp.array([400, 300], jnp.int32)
    f, ref = indexer_fn("dsa", 8, "fpga"), indexer_fn("dsa", 8, "xla")
    f(q, keys, weights, lengths)
    # Same buffer shape, a resident row rewritten (the last one is always checked); the new row
    # points along sum_h w_h q_h, so sum_h w_h ReLU(q_h . k) >= 50 * |sum_h w_h q_h|_1 wins.
    changed = keys.at[0, 399].set(50.0 * jnp.sign(weights[0] @ q[0]))
    out = f(q, changed, weights, lengths)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref(q, changed, weights, lengths)[1]))
    assert fpga.stats()[-1]["stale_detected"]
    assert 399 in np.asarray(out[1])[0]


def test_full_verification_catches_any_changed_row(rng, monkeypatch):
    monkeypatch.setenv("JAX_HETERO_FPGA_VERIFY", "full")
    fpga.reset()
    q, keys, weights = indexer_inputs(rng, "dsa", jnp.float32, n=512)
    lengths = jnp.array([400, 300], jnp.int32)
    f, ref = indexer_fn("dsa", 8, "fpga"), indexer_fn("dsa", 8, "xla")
    f(q, keys, weights, lengths)
    changed = keys.at[1, 123].set(60.0)  # a middle row that sampling may not look at
    out = f(q, changed, weights, lengths)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref(q, changed, weights, lengths)[1]))
    assert fpga.stats()[-1]["stale_detected"] and fpga.stats()[-1]["memory_rows_uploaded"] == 1


def test_memory_after_device_reset_is_resent(rng):
    """A reset frees the device memory: the old resident copy must not be reused."""
    q, summary, _ = indexer_inputs(rng, "dot", jnp.float32, n=256)
    f, ref = indexer_fn("dot", 16, "fpga"), indexer_fn("dot", 16, "xla")
    f(q, summary, None, None)
    fpga.reset()
    out = f(q, summary, None, None)
    np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref(q, summary, None, None)[1]))
    assert fpga.stats()[-1]["new_memory"] and fpga.stats()[-1]["memory_rows_uploaded"] == 2 * 256


def test_layers_with_equal_shapes_keep_separate_memories(rng):
    q, a, _ = indexer_inputs(rng, "dot", jnp.float32, n=256)
    _, b, _ = indexer_inputs(rng, "dot", jnp.float32, n=256)
    f = indexer_fn("dot", 16, "fpga")
    for _ in range(3):  # two "layers" alternating, as in a decoder step
        f(q, a, None, None)
        f(q, b, None, None)
    uploads = [c["memory_rows_uploaded"] for c in fpga.stats()]
    assert uploads == [512, 512, 0, 0, 0, 0]
    assert backends.module("fpga").mirror_entries() == 2


def test_capacity_exceeded_is_a_clear_error(rng, monkeypatch):
    monkeypatch.setenv("JAX_HETERO_FPGA_MEMORY_BYTES", str(1 << 20))
    fpga.reset()
    q, keys, weights = indexer_inputs(rng, "dsa", jnp.float32, n=8192, d=64)  # 2 x 8192 x 256 B = 4 MiB
    with pytest.raises(JaxRuntimeError, match=r"indexer: the memory tensor needs .* device memory.*Fix"):
        jax.block_until_ready(indexer_fn("dsa", 8, "fpga")(q, keys, weights, None))


def test_k_larger_than_the_kernel_supports(rng):
    q, keys, weights = indexer_inputs(rng, "dsa", jnp.float32, n=5000, d=16, b=1)
    with pytest.raises(JaxRuntimeError, match="exceeds the FPGA kernel's maximum k=2048"):
        jax.block_until_ready(indexer_fn("dsa", 4096, "fpga")(q, keys, weights, None))


def test_unsupported_dtype_for_the_kernel(rng):
    q, summary, _ = indexer_inputs(rng, "dot", jnp.float16, n=64)
    with pytest.raises(JaxRuntimeError, match=r"got float16.*bfloat16"):
        indexer_fn("dot", 4, "fpga")(q, summary, None, None)[0].block_until_ready()


def test_concurrent_python_threads(rng):
    cases = [indexer_inputs(rng, "dsa", jnp.float32, n=900) for _ in range(4)]
    f, ref = indexer_fn("dsa", 32, "fpga"), indexer_fn("dsa", 32, "xla")
    results, errors = {}, []

    def worker(t):
        try:
            q, keys, weights = cases[t]
            for step in range(6):
                lengths = jnp.array([600 + 50 * step, 300 + step], jnp.int32)
                got = f(q, keys, weights, lengths)
                want = ref(q, keys, weights, lengths)
                results[(t, step)] = np.array_equal(np.asarray(got[1]), np.asarray(want[1]))
        except Exception as err:  # surfaced below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert len(results) == 24 and all(results.values())


def test_build_info_and_devices():
    info = jh.build_info()["backends"]["fpga"]
    assert info["available"] and {"indexer_dot", "indexer_quest", "indexer_dsa", "gather"} <= set(info["ops"])
    assert "emulated" in info["fpga_devices"]
    assert fpga.devices()[-1]["spec"] == "emulated"
    assert fpga.current()["kind"] == "emulated"


# --- the XRT path, each in a fresh process (XRT picks its shim once per process) ---------

XRT_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, jax_hetero as jh
    from jax_hetero import fpga
    try:
        print("DEVICE", fpga.current())
        jax.jit(lambda t, i: jh.gather(t, i, backend="fpga"))(jnp.ones((8, 16)), jnp.arange(4)).block_until_ready()
        print("RAN")
    except Exception as err:
        print("ERROR", err)
""")


def _run_xrt(tmp_path, **env):
    if not backends.module("fpga").details()["xrt_compiled"]:
        pytest.skip("the FPGA bridge was built without XRT")
    lib = next((p for p in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/opt/xilinx/xrt/lib")
                if os.path.exists(f"{p}/libxrt_core.so.2")), None)
    if lib is None:
        pytest.skip("libxrt_core.so.2 not found")
    (tmp_path / "lib").symlink_to(lib)
    full = {k: v for k, v in child_env().items() if k not in ("XCL_EMULATION_MODE",)}
    full.update(XILINX_XRT=str(tmp_path), JAX_HETERO_FPGA_DEVICE="xrt:0", **env)
    out = subprocess.run([sys.executable, "-c", XRT_SCRIPT], capture_output=True, text=True, env=full,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_xrt_noop_device_opens_and_refuses_kernels_without_xclbin(tmp_path):
    out = _run_xrt(tmp_path, XCL_EMULATION_MODE="noop")
    assert "'kind': 'xrt'" in out
    assert "has no xclbin loaded" in out and "JAX_HETERO_XCLBIN" in out


def test_no_card_error_names_cause_and_fix(tmp_path, monkeypatch):
    if not backends.module("fpga").details()["xrt_compiled"]:
        monkeypatch.setenv("JAX_HETERO_FPGA_DEVICE", "xrt:0")
        fpga.reset()
        with pytest.raises(RuntimeError, match="built without XRT.*libxrt-dev.*JAX_HETERO_FPGA_DEVICE=emulated"):
            fpga.current()
        return
    out = _run_xrt(tmp_path)
    assert "ERROR" in out and "Could not open device with index '0'" in out
    assert "JAX_HETERO_FPGA_DEVICE=emulated" in out


def test_gather_index_out_of_range_at_run_time(rng):
    table = jnp.asarray(rng.standard_normal((30, 8)), jnp.float32)
    f = jax.jit(lambda t, i: jh.gather(t, i, backend="fpga"))
    with pytest.raises(JaxRuntimeError, match=r"gather: indices\[2\]=30 is outside \[-1, 30\)"):
        f(table, jnp.array([0, 5, 30], jnp.int32)).block_until_ready()


@pytest.mark.gpu
def test_cuda_platform_stages_through_host(rng):
    """On the CUDA platform the handler copies on XLA's stream; results stay on the GPU."""
    if jax.default_backend() != "gpu" or not backends.module("fpga").details()["cuda_copies_compiled"]:
        pytest.skip("needs a CUDA GPU and the bridge built with the CUDA toolkit")
    q, keys, weights = indexer_inputs(rng, "dsa", jnp.bfloat16, n=1000)
    f, ref = indexer_fn("dsa", 32, "fpga"), indexer_fn("dsa", 32, "xla")
    for length in (500, 510):
        lengths = jnp.array([length, length - 100], jnp.int32)
        out = f(q, keys, weights, lengths)
        assert out[1].devices() == q.devices()
        np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(ref(q, keys, weights, lengths)[1]))
    assert fpga.stats()[-1]["memory_rows_uploaded"] == 20
    table = jnp.asarray(rng.standard_normal((300, 4, 7)), jnp.float16)
    indices = jnp.asarray(rng.integers(-1, 300, (5, 11)), jnp.int32)
    np.testing.assert_array_equal(np.asarray(jax.jit(lambda t, i: jh.gather(t, i, backend="fpga"))(table, indices)),
                                  np.asarray(jh.gather(table, indices, backend="xla")))


def test_pyxrt_is_used_for_discovery_when_importable(monkeypatch):
    """With XRT's Python binding importable, devices() and inspect_xclbin() go through it."""
    import types
    info = types.SimpleNamespace(name="name", bdf="bdf")
    kernel = types.SimpleNamespace(get_name=lambda: "hetero_indexer")
    stub = types.SimpleNamespace(
        enumerate_devices=lambda: 1, xrt_info_device=info,
        device=lambda index: types.SimpleNamespace(get_info=lambda what: {"name": "xilinx_u55c_gen3x16", "bdf": "0000:3b:00.1"}[what]),
        xclbin=lambda path: types.SimpleNamespace(get_kernels=lambda: [kernel], get_xsa_name=lambda: "u55c",
                                                  get_uuid=lambda: "1234"))
    monkeypatch.setitem(sys.modules, "pyxrt", stub)
    found = fpga.devices()
    assert found[0] == {"spec": "xrt:0", "kind": "xrt", "name": "xilinx_u55c_gen3x16", "bdf": "0000:3b:00.1",
                        "found_by": "pyxrt"}
    assert found[-1]["kind"] == "emulated"
    assert fpga.inspect_xclbin("hetero.xclbin") == {"kernels": ["hetero_indexer"], "xsa": "u55c", "uuid": "1234"}


@pytest.mark.parametrize("table_axis", [0, None])
def test_gather_under_vmap(rng, table_axis):
    tables = jnp.asarray(rng.standard_normal((3, 40, 5)), jnp.float32)
    indices = jnp.asarray(rng.integers(-1, 40, (3, 2, 6)), jnp.int32)
    table_arg = tables if table_axis == 0 else tables[0]
    f = lambda backend: jax.jit(jax.vmap(lambda t, i: jh.gather(t, i, backend=backend), in_axes=(table_axis, 0)))
    np.testing.assert_array_equal(np.asarray(f("fpga")(table_arg, indices)), np.asarray(f("xla")(table_arg, indices)))
