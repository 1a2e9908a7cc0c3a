"""The FPGA timing model (jax_hetero/fpga/timing_model.py): units, monotonicity, a worked example."""
import doctest
import math

import pytest

from jax_hetero.fpga import timing_model as tm


def test_docstring_example():
    assert doctest.testmod(tm).failed == 0


def test_worked_example_dot_bfloat16():
    """One row per compute unit: 8192 bf16 summaries of 128 dims (4 words each), top-64.

    Per row: query load ceil(4*128*4/64) + 4 + 128 = 164 cycles; scoring 8192*4 = 32768
    cycles, but the 2,097,152 key bytes through one port at 425/32 GB/s take 47,371 cycles
    (memory-bound); selection overlaps; the final sort of 64 costs 64*7 + 128 = 576; write 64;
    latency 200. 48,375 cycles at 300 MHz = 161.25 us, + 10 us launch.
    """
    cycles = tm.indexer_cycles("dot", 8192, 128, 4, 64, "bfloat16")
    assert cycles["score"] == 32768
    assert cycles["stream"] == pytest.approx(2_097_152 / (425e9 / 32) * 300e6)
    assert cycles["total"] == pytest.approx(164 + cycles["stream"] + 576 + 64 + 200)
    seconds = tm.indexer_time("dot", 8192, 128, 4, 64, "bfloat16", rows=4)
    assert seconds == pytest.approx(cycles["total"] / 300e6 + 10e-6)
    assert seconds == pytest.approx(171.25e-6, rel=1e-3)


def test_units_are_seconds_and_plausible():
    t = tm.indexer_time("quest", 4096, 128, 8, 64, "bfloat16")
    assert 1e-6 < t < 1e-2
    assert tm.gather_time(0, 4096) == pytest.approx(10e-6 + 200 / 300e6)
    # A 4 KB page at one 512-bit port per cycle, capped at one pseudo-channel's bandwidth.
    big = tm.gather_time(100_000, 4096, include_launch=False)
    assert big == pytest.approx(100_000 * 4096 / (425e9 / 32) + 200 / 300e6)


@pytest.mark.parametrize("kind", ["dot", "quest", "dsa"])
def test_monotone_in_size(kind):
    base = dict(kind=kind, num_entries=4096, dim=64, heads=8, k=64, dtype="bfloat16")
    t0 = tm.indexer_time(**base)
    for name, bigger in (("num_entries", 65536), ("dim", 256), ("k", 2048), ("heads", 64)):
        assert tm.indexer_time(**{**base, name: bigger}) >= t0, name
    assert tm.indexer_time(**base, rows=64) > tm.indexer_time(**base, rows=4)
    assert tm.indexer_time(**base, order="worst") >= t0
    assert tm.indexer_time(**base, params=tm.with_params(clock_hz=250e6)) > t0


def test_float32_keys_take_twice_the_words():
    assert tm.entry_words(128, "float32") == 2 * tm.entry_words(128, "bfloat16") == 8
    assert tm.indexer_time("dot", 65536, 128, 1, 64, "float32") > tm.indexer_time("dot", 65536, 128, 1, 64, "bfloat16")


def test_dsa_is_compute_bound_with_many_heads():
    cycles = tm.indexer_cycles("dsa", 10000, 128, 64, 2048, "bfloat16")
    assert cycles["score"] == 10000 * (4 + 1) * 8
    assert cycles["score"] > cycles["stream"]


def test_transfers():
    small = tm.transfer_time(512, "gpu_to_fpga")
    assert 1e-6 <= small <= 3e-6  # the source paper's 1-3 us for a transfer under 1 KB
    mb = 1 << 20
    assert tm.transfer_time(mb, "gpu_to_fpga") == pytest.approx(2e-6 + mb / 4.0e9)
    assert tm.transfer_time(mb, "fpga_to_gpu") == pytest.approx(2e-6 + mb / 6.1e9)
    assert tm.transfer_time(mb, "fpga_to_gpu") < tm.transfer_time(mb, "gpu_to_fpga")
    assert tm.transfer_time(0, "host_to_fpga") == 0.0
    assert tm.transfer_time(2 * mb, "host_to_fpga") > tm.transfer_time(mb, "host_to_fpga")
    with pytest.raises(ValueError, match="direction"):
        tm.transfer_time(1, "sideways")


def test_energy_and_parameters_have_sources():
    assert tm.energy(2.0) == pytest.approx(2.0 * tm.DEFAULT.board_active_w)
    assert tm.energy(2.0, active=False) < tm.energy(2.0)
    for name, (value, unit, source) in tm.PARAMETERS.items():
        assert getattr(tm.DEFAULT, name) == value and source, name
    assert math.isclose(tm.DEFAULT.port_bytes_per_s, 425e9 / 32)


def test_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        tm.indexer_time("cosine", 10, 8, 1, 1)
    with pytest.raises(ValueError, match="k <="):
        tm.indexer_time("dot", 10, 8, 1, 11)
    with pytest.raises(ValueError, match="dtype"):
        tm.indexer_time("dot", 10, 8, 1, 1, dtype="int8")
