"""C simulation of the HLS kernels (hls/) against the jnp reference.

The testbenches are built with g++ and the project's compat headers (no Vitis). Each case is
packed into the kernel's HBM layout (hls/include/hetero_kernels.h) with numpy, run through the
testbench's file mode -- which also checks the kernel bit for bit against the testbench's host
reference -- and compared with ``jax_hetero.ops`` on ``backend="xla"``.
"""
import importlib.util
import shutil
import subprocess
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from conftest import assert_topk_equivalent

HLS = Path(__file__).resolve().parents[1] / "hls"
CXXFLAGS = ["-std=c++17", "-O2", "-Wno-unknown-pragmas", "-ffp-contract=off", f"-I{HLS / 'include'}",
            f"-I{HLS / 'src'}"]
KIND = {"dot": 0, "quest": 1, "dsa": 2}
KEYS = {"f32": 0, "bf16": 1, "int16": 2}
OK, BAD_ARGUMENT, INDEX_OUT_OF_RANGE = 0, 1, 2

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ is not installed")


def build_testbenches(out: Path, ap_types: Path) -> dict:
    built = {"dir": out}
    for name, source in (("tb_indexer", "indexer.cpp"), ("tb_gather", "gather.cpp")):
        exe = out / name
        subprocess.run(["g++", *CXXFLAGS, f"-I{ap_types}", str(HLS / "tb" / f"{name}.cpp"),
                        str(HLS / "src" / source), "-o", str(exe)], check=True, capture_output=True)
        built[name] = exe
    return built


@pytest.fixture(scope="module")
def testbench(tmp_path_factory):
    return build_testbenches(tmp_path_factory.mktemp("csim"), HLS / "compat")


def xilinx_ap_types():
    """The Xilinx ap_int.h / hls_stream.h (Apache-2.0) shipped in the hls4ml wheel, if installed."""
    spec = importlib.util.find_spec("hls4ml")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "templates" / "vivado" / "ap_types"
        if (path / "ap_int.h").exists():
            return path
    return None


def run_file_mode(testbench, name, payload: bytes):
    case_in, case_out = testbench["dir"] / f"{name}.in", testbench["dir"] / f"{name}.out"
    case_in.write_bytes(payload)
    done = subprocess.run([str(testbench[name]), str(case_in), str(case_out)], capture_output=True, text=True)
    assert done.returncode == 0, f"{name}: kernel differs from the testbench's host reference: {done.stdout}"
    return case_out.read_bytes()


@pytest.mark.parametrize("name", ["tb_indexer", "tb_gather"])
def test_self_test(testbench, name):
    done = subprocess.run([str(testbench[name])], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
    assert done.stdout.startswith("PASS")


@pytest.mark.skipif(xilinx_ap_types() is None, reason="hls4ml (Xilinx ap_types headers) is not installed")
def test_self_test_with_xilinx_headers(tmp_path):
    """The kernels use only the part of ap_int.h that hls/compat provides, with the same results."""
    built = build_testbenches(tmp_path, xilinx_ap_types())
    for name in ("tb_indexer", "tb_gather"):
        done = subprocess.run([str(built[name])], capture_output=True, text=True)
        assert done.returncode == 0 and done.stdout.startswith("PASS"), done.stdout


def pack_entries(entries: np.ndarray, row_stride: int, lanes: int) -> bytes:
    """[rows, n, dim] of 4- or 2-byte elements -> [rows][row_stride][entry_words] 64-byte words."""
    rows, n, dim = entries.shape
    words = -(-dim // lanes)
    packed = np.zeros((rows, row_stride, words * lanes), entries.dtype)
    packed[:, :n, :dim] = entries
    return packed.tobytes()


def key_elements(x, key_format):
    """Elements as stored in HBM (f32 / bf16 bits / int16) and the lanes per word."""
    if key_format == "f32":
        return np.asarray(x, np.float32), 16
    if key_format == "bf16":
        return np.asarray(x).view(np.uint16), 32
    return np.asarray(x, np.int16), 32


def make_case(rng, kind, key_format):
    """Op-level inputs, the valid counts per batch row, and the kernel's view of them."""
    dtype = jnp.bfloat16 if key_format == "bf16" else jnp.float32
    scale = np.float32(1 / 256) if key_format == "int16" else None

    def memory_like(shape):
        if key_format == "int16":  # int16 keys; the op sees them dequantised
            ints = rng.integers(-3000, 3001, shape).astype(np.int16)
            return jnp.asarray(ints.astype(np.float32) * scale), ints
        x = jnp.asarray(rng.standard_normal(shape, dtype=np.float32)).astype(dtype)
        return x, x

    b = 2
    if kind == "dsa":
        heads, dim, n = int(rng.choice([4, 16])), int(rng.choice([32, 64])), int(rng.integers(2100, 4000))
        k = int(rng.choice([64, 2048]))
        q = jnp.asarray(rng.standard_normal((b, heads, dim), dtype=np.float32)).astype(dtype)
        keys, stored = memory_like((b, n, dim))
        weights = jnp.asarray(rng.standard_normal((b, heads), dtype=np.float32))
        lengths = np.array([n, rng.integers(k // 2, n)], np.int32)
        op = dict(q=q, memory=keys, weights=weights, lengths=jnp.asarray(lengths))
        valid = np.clip(lengths, 0, n)
        kernel = dict(entries=np.asarray(stored), entries_hi=None,
                      query=np.asarray(q, np.float32).reshape(b, heads, dim), weights=np.asarray(weights),
                      lengths=valid, heads=heads, dim=dim, n=n, rows=b)
        return op, k, scale, kernel
    hkv, group, dim, nb, block = 2, int(rng.choice([1, 4])), int(rng.choice([24, 128])), int(rng.integers(300, 900)), 16
    k = int(rng.choice([1, 100]))
    q = jnp.asarray(rng.standard_normal((b, hkv * group, dim), dtype=np.float32)).astype(dtype)
    lo, lo_stored = memory_like((b, nb, hkv, dim))
    hi, hi_stored = memory_like((b, nb, hkv, dim))
    lengths = np.array([nb * block, rng.integers(1, k * block + 2)], np.int32)
    valid = np.clip(-(-lengths // block), 0, nb)
    to_rows = lambda m: np.swapaxes(np.asarray(m), 1, 2).reshape(b * hkv, nb, dim)
    op = dict(q=q, memory=(lo, hi) if kind == "quest" else lo, lengths=jnp.asarray(lengths), block_size=block)
    kernel = dict(entries=to_rows(lo_stored), entries_hi=to_rows(hi_stored) if kind == "quest" else None,
                  query=np.asarray(q, np.float32).reshape(b * hkv, group, dim), weights=None,
                  lengths=np.repeat(valid, hkv), heads=group, dim=dim, n=nb, rows=b * hkv)
    return op, k, scale, kernel


def indexer_payload(kind, key_format, scale, k, c):
    row_stride = c["n"] + 3  # spare capacity, as the resident memory has
    elements, lanes = key_elements(c["entries"], key_format)
    header = np.array([KIND[kind], KEYS[key_format], 0, c["n"], row_stride, c["dim"], c["heads"], k, c["rows"]],
                      np.int32)
    header[2] = np.float32(scale if scale is not None else 1.0).view(np.int32)
    parts = [header.tobytes(), pack_entries(elements, row_stride, lanes)]
    if kind == "quest":
        parts.append(pack_entries(key_elements(c["entries_hi"], key_format)[0], row_stride, lanes))
    parts.append(np.ascontiguousarray(c["query"], np.float32).tobytes())
    if kind == "dsa":
        parts.append(np.ascontiguousarray(c["weights"], np.float32).tobytes())
    parts.append(np.asarray(c["lengths"], np.int32).tobytes())
    return b"".join(parts)


@pytest.mark.parametrize("key_format", ["f32", "bf16", "int16"])
@pytest.mark.parametrize("kind", ["dot", "quest", "dsa"])
def test_indexer_matches_jnp_reference(testbench, rng, kind, key_format):
    op, k, scale, c = make_case(rng, kind, key_format)
    out = run_file_mode(testbench, "tb_indexer", indexer_payload(kind, key_format, scale, k, c))
    rows = c["rows"]
    status = np.frombuffer(out[:12], np.int32)
    assert status[0] == OK, status
    values = np.frombuffer(out[12:12 + 4 * rows * k], np.float32).reshape(rows, k)
    indices = np.frombuffer(out[12 + 4 * rows * k:], np.int32).reshape(rows, k)

    ref_values, ref_indices = jh.indexer(op["q"], op["memory"], k, kind=kind, weights=op.get("weights"),
                                         lengths=op["lengths"], block_size=op.get("block_size"), backend="xla")
    scores = jh.relevancy(op["q"], op["memory"], kind=kind, weights=op.get("weights"), backend="xla")
    ref_values = np.asarray(ref_values, np.float32).reshape(rows, k)
    ref_indices = np.asarray(ref_indices).reshape(rows, k)
    scores = np.asarray(scores, np.float32).reshape(rows, -1)

    finite = np.isfinite(ref_values)
    tol = 1e-5 * max(1.0, float(np.abs(ref_values[finite]).max(initial=0.0))) * np.sqrt(c["dim"] * c["heads"])
    assert_topk_equivalent(values, indices, ref_values, ref_indices, scores, rtol=tol)
    # Where a value is not tied (within tol) with its neighbours, the index is the same.
    # Right of the last slot sits the best score that did not make it (a near-tie there may
    # swap the last index).
    runner_up = np.full((rows, 1), np.nan, np.float32)
    for r in range(rows):
        rest = np.sort(scores[r, :c["lengths"][r]])[::-1][k:]
        runner_up[r] = rest[0] if rest.size else np.nan
    padded = np.concatenate([np.full((rows, 1), np.nan, np.float32), np.where(finite, ref_values, np.nan),
                             runner_up], axis=1)
    with np.errstate(invalid="ignore"):
        tied = (np.abs(padded[:, 1:-1] - padded[:, :-2]) <= tol) | (np.abs(padded[:, 1:-1] - padded[:, 2:]) <= tol)
    lonely = finite & ~tied
    assert lonely.sum() >= min(k, 10) // 2, "the case has too many near-ties to check indices"
    np.testing.assert_array_equal(indices[lonely], ref_indices[lonely])
    np.testing.assert_array_equal(indices[~finite], ref_indices[~finite])


def gather_payload(table_bytes: np.ndarray, indices: np.ndarray):
    m, row_bytes = table_bytes.shape
    row_words = -(-row_bytes // 64)
    padded = np.zeros((m, row_words * 64), np.uint8)
    padded[:, :row_bytes] = table_bytes
    header = np.array([m, row_words, indices.size], np.int32)
    return header.tobytes() + padded.tobytes() + indices.astype(np.int32).tobytes(), row_words


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gather_matches_jnp_reference(testbench, rng, dtype):
    m, features = int(rng.integers(1, 200)), int(rng.choice([15, 64, 2048]))
    table = jnp.asarray(rng.standard_normal((m, features), dtype=np.float32)).astype(dtype)
    indices = rng.integers(-1, m, 300).astype(np.int32)
    host = np.asarray(table)
    payload, row_words = gather_payload(host.view(np.uint8).reshape(m, -1), indices)
    out = run_file_mode(testbench, "tb_gather", payload)
    assert np.frombuffer(out[:12], np.int32)[0] == OK
    rows = np.frombuffer(out[12:], np.uint8).reshape(indices.size, row_words * 64)
    got = rows[:, :host.itemsize * features].copy().view(host.dtype)
    want = np.asarray(jh.gather(table, jnp.asarray(indices), backend="xla"))
    np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))


def test_gather_reports_the_first_bad_index(testbench, rng):
    table = rng.standard_normal((10, 16), dtype=np.float32)
    indices = np.array([0, -1, 9, 10, 3, -5], np.int32)
    payload, _ = gather_payload(table.view(np.uint8), indices)
    status = np.frombuffer(run_file_mode(testbench, "tb_gather", payload)[:12], np.int32)
    assert list(status) == [INDEX_OUT_OF_RANGE, 3, 10]
