"""Timing and energy model of the hls/ kernels on an Alveo U55C (MODELLED, not measured).

No FPGA card was available: every number this module returns is *modelled* from the kernel
structure in hls/src (cycles per word, per entry, per compaction) and from the public
parameters below. The parameters, their values and their sources are listed in
``PARAMETERS`` and in docs/fpga_model.md.

Units: seconds, bytes, hertz, watts, joules.

>>> round(indexer_time("dot", num_entries=8192, dim=128, heads=4, k=64, dtype="bfloat16") * 1e6, 1)
52.8
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

__all__ = ["FpgaParams", "DEFAULT", "PARAMETERS", "key_lanes", "entry_words", "indexer_cycles",
           "indexer_time", "gather_time", "transfer_time", "energy", "with_params"]

KINDS = ("dot", "quest", "dsa")
DIRECTIONS = ("gpu_to_fpga", "fpga_to_gpu", "host_to_fpga", "fpga_to_host")


@dataclass(frozen=True)
class FpgaParams:
    """Model parameters; see PARAMETERS for the source of each default."""
    clock_hz: float = 300e6
    hbm_peak_bytes_per_s: float = 460e9
    hbm_measured_bytes_per_s: float = 425e9
    pseudo_channels: int = 32
    port_bytes_per_cycle: int = 64
    indexer_units: int = 4
    dsa_head_lanes: int = 8
    fifo_depth: int = 4096
    pipeline_latency_cycles: int = 200
    kernel_launch_s: float = 10e-6
    pcie_gen3_x16_bytes_per_s: float = 15.75e9
    host_dma_bytes_per_s: float = 12e9
    host_dma_latency_s: float = 5e-6
    p2p_gpu_to_fpga_bytes_per_s: float = 4.0e9
    p2p_fpga_to_gpu_bytes_per_s: float = 6.1e9
    p2p_small_transfer_s: float = 2e-6
    board_active_w: float = 50.0
    board_idle_w: float = 25.0
    board_max_w: float = 150.0

    @property
    def channel_bytes_per_s(self) -> float:
        """Sustained bandwidth of one pseudo-channel (measured total / channels)."""
        return self.hbm_measured_bytes_per_s / self.pseudo_channels

    @property
    def port_bytes_per_s(self) -> float:
        """One 512-bit AXI port streaming from one pseudo-channel: the smaller of the two."""
        return min(self.port_bytes_per_cycle * self.clock_hz, self.channel_bytes_per_s)


DEFAULT = FpgaParams()

# name -> (value, unit, source). "assumption" marks values not taken from a measurement.
PARAMETERS = {
    "clock_hz": (DEFAULT.clock_hz, "Hz", "HLS kernels on Alveo typically close timing at 250-300 MHz "
                 "(shared/ANCHORS.md); the kernels target 300 MHz (hls/Makefile FREQ_MHZ)"),
    "hbm_peak_bytes_per_s": (DEFAULT.hbm_peak_bytes_per_s, "B/s", "AMD Alveo U55C data sheet (DS978): "
                             "16 GB HBM2, 460 GB/s"),
    "hbm_measured_bytes_per_s": (DEFAULT.hbm_measured_bytes_per_s, "B/s", "~425 GB/s measured on the "
                                 "U280 with the same HBM interface (Shuhai, Wang et al., FCCM 2020)"),
    "pseudo_channels": (DEFAULT.pseudo_channels, "", "U55C data sheet: 32 HBM pseudo-channels"),
    "port_bytes_per_cycle": (DEFAULT.port_bytes_per_cycle, "B", "512-bit m_axi ports (hls/src)"),
    "indexer_units": (DEFAULT.indexer_units, "", "compute units in hls/connectivity.cfg"),
    "dsa_head_lanes": (DEFAULT.dsa_head_lanes, "", "kHeadLanes in hls/src/indexer_score.h"),
    "fifo_depth": (DEFAULT.fifo_depth, "entries", "scorer -> selector FIFO depth (hls/src/indexer.cpp)"),
    "pipeline_latency_cycles": (DEFAULT.pipeline_latency_cycles, "cycles", "assumption: HBM read latency "
                                "plus pipeline fill per row (order of 100-200 cycles)"),
    "kernel_launch_s": (DEFAULT.kernel_launch_s, "s", "assumption: one XRT run start + wait round trip, "
                        "order of 10 us; not measured here"),
    "pcie_gen3_x16_bytes_per_s": (DEFAULT.pcie_gen3_x16_bytes_per_s, "B/s", "PCIe Gen3 x16: 8 GT/s x 16 "
                                  "lanes x 128/130 encoding"),
    "host_dma_bytes_per_s": (DEFAULT.host_dma_bytes_per_s, "B/s", "assumption: ~75 % of PCIe Gen3 x16 "
                             "for XDMA host transfers"),
    "host_dma_latency_s": (DEFAULT.host_dma_latency_s, "s", "assumption: fixed cost of one host DMA "
                           "(buffer sync) call"),
    "p2p_gpu_to_fpga_bytes_per_s": (DEFAULT.p2p_gpu_to_fpga_bytes_per_s, "B/s", "He et al., arXiv "
                                    "2603.29002: ~4.0 GB/s GPU->FPGA peer-to-peer, measured"),
    "p2p_fpga_to_gpu_bytes_per_s": (DEFAULT.p2p_fpga_to_gpu_bytes_per_s, "B/s", "He et al., arXiv "
                                    "2603.29002: ~6.1 GB/s FPGA->GPU peer-to-peer, measured"),
    "p2p_small_transfer_s": (DEFAULT.p2p_small_transfer_s, "s", "He et al., arXiv 2603.29002: ~1-3 us for "
                             "a transfer under 1 KB; midpoint"),
    "board_active_w": (DEFAULT.board_active_w, "W", "assumption: board power while the kernels stream "
                       "HBM, between idle and the 150 W maximum"),
    "board_idle_w": (DEFAULT.board_idle_w, "W", "assumption: idle Alveo U280/U55C-class board with a "
                     "shell loaded (order of 20-30 W as reported by xbutil)"),
    "board_max_w": (DEFAULT.board_max_w, "W", "AMD Alveo U55C data sheet: 150 W maximum total power"),
}


def with_params(**changes) -> FpgaParams:
    """DEFAULT with some parameters replaced, e.g. ``with_params(clock_hz=250e6)``."""
    return replace(DEFAULT, **changes)


def key_lanes(dtype: str) -> int:
    """Elements per 512-bit word: float32 16, bfloat16 / int16 32 (hetero_key_format).

    The kernels have no float16 format (the bridge rejects float16 memory).
    """
    lanes = {"float32": 16, "bfloat16": 32, "int16": 32}
    if dtype not in lanes:
        raise ValueError(f"timing_model: dtype={dtype!r} is not one of {sorted(lanes)}")
    return lanes[dtype]


def entry_words(dim: int, dtype: str) -> int:
    """512-bit words per key or summary vector."""
    return -(-dim // key_lanes(dtype))


def _check(kind, num_entries, dim, heads, k):
    if kind not in KINDS:
        raise ValueError(f"timing_model: kind={kind!r} is not one of {KINDS}")
    if not (1 <= dim <= 256 and 1 <= heads <= 64 and 1 <= k <= min(2048, num_entries)):
        raise ValueError(f"timing_model: need 1 <= dim <= 256, 1 <= heads <= 64, 1 <= k <= "
                         f"min(2048, num_entries); got dim={dim}, heads={heads}, k={k}, "
                         f"num_entries={num_entries}")


def _passing_entries(num_entries: int, k: int, order: str) -> float:
    """Entries that pass the threshold filter: the first k, then the expected number of new
    running top-k members, k/i for entry i, in random order; every entry when scores rise."""
    if order == "worst" or num_entries <= k:
        return float(num_entries)
    if order != "random":
        raise ValueError(f"timing_model: order={order!r} is not 'random' or 'worst'")
    return k * (1.0 + math.log(num_entries / k))


def indexer_cycles(kind: str, num_entries: int, dim: int, heads: int, k: int, dtype: str = "bfloat16",
                   order: str = "random", params: FpgaParams = DEFAULT) -> dict:
    """Cycles of one row on one compute unit, by phase (see docs/fpga_model.md)."""
    _check(kind, num_entries, dim, heads, k)
    words = entry_words(dim, dtype)
    query_load = math.ceil(heads * dim * 4 / params.port_bytes_per_cycle) + heads + (0 if kind == "dsa" else dim)
    if kind == "dsa":
        head_steps = math.ceil(heads / params.dsa_head_lanes)
        score = num_entries * (words + 1) * head_steps
    else:
        score = num_entries * words
    # Memory-bound floor: the key words of this row through one port at channel bandwidth.
    stream = num_entries * words * params.port_bytes_per_cycle / params.port_bytes_per_s * params.clock_hz
    sort_k = k * (math.ceil(math.log2(k)) + 1) + 2 * k  # merge sort + copy back, merge with best + copy
    compactions = math.ceil(_passing_entries(num_entries, k, order) / k)
    selection = num_entries + compactions * sort_k  # filter: one entry per cycle, stalls while sorting
    # The scorer runs ahead into the FIFO while the selector sorts, so the two overlap; the
    # last compaction happens after the stream ends.
    body = max(score, stream, selection - sort_k) + sort_k
    return {"query_load": query_load, "score": score, "stream": stream, "selection": selection,
            "write": k, "latency": params.pipeline_latency_cycles, "total": query_load + body + k +
            params.pipeline_latency_cycles}


def indexer_time(kind: str, num_entries: int, dim: int, heads: int, k: int, dtype: str = "bfloat16",
                 rows: int = 1, order: str = "random", params: FpgaParams = DEFAULT,
                 include_launch: bool = True) -> float:
    """Modelled seconds for one hetero_indexer call over `rows` rows.

    Rows are spread over the compute units; with fewer rows than units, each row's entries
    are split into ranges over the units (the host merges the partial top-k lists, not
    counted). `order`: "random" (unordered scores) or "worst" (scores rising, every entry
    passes the filter).
    """
    if rows < 1 or num_entries < 1:
        raise ValueError(f"timing_model: rows={rows} and num_entries={num_entries} must be >= 1")
    _check(kind, num_entries, dim, heads, k)
    units = params.indexer_units
    if rows >= units:
        per_unit_rows, entries = math.ceil(rows / units), num_entries
    else:
        split = units // rows
        per_unit_rows, entries = 1, max(k, math.ceil(num_entries / split))
    cycles = per_unit_rows * indexer_cycles(kind, entries, dim, heads, k, dtype, order, params)["total"]
    return cycles / params.clock_hz + (params.kernel_launch_s if include_launch else 0.0)


def gather_time(num_indices: int, row_bytes: int, params: FpgaParams = DEFAULT,
                include_launch: bool = True) -> float:
    """Modelled seconds for one hetero_gather call: one word per cycle in, one out, bounded by
    a port's channel bandwidth (the table is read through the HBM switch)."""
    if num_indices < 0 or row_bytes < 1:
        raise ValueError(f"timing_model: num_indices={num_indices} must be >= 0 and row_bytes={row_bytes} >= 1")
    words = num_indices * -(-row_bytes // params.port_bytes_per_cycle)
    seconds = max(words / params.clock_hz, words * params.port_bytes_per_cycle / params.port_bytes_per_s)
    seconds += params.pipeline_latency_cycles / params.clock_hz
    return seconds + (params.kernel_launch_s if include_launch else 0.0)


def transfer_time(num_bytes: int, direction: str, params: FpgaParams = DEFAULT) -> float:
    """Modelled seconds to move `num_bytes` over PCIe: a fixed cost plus bytes / bandwidth.

    Directions: "gpu_to_fpga" / "fpga_to_gpu" (peer-to-peer, the source paper's measured
    path), "host_to_fpga" / "fpga_to_host" (XDMA through host memory).
    """
    if num_bytes < 0:
        raise ValueError(f"timing_model: num_bytes={num_bytes} must be >= 0")
    if direction == "gpu_to_fpga":
        fixed, rate = params.p2p_small_transfer_s, params.p2p_gpu_to_fpga_bytes_per_s
    elif direction == "fpga_to_gpu":
        fixed, rate = params.p2p_small_transfer_s, params.p2p_fpga_to_gpu_bytes_per_s
    elif direction in ("host_to_fpga", "fpga_to_host"):
        fixed, rate = params.host_dma_latency_s, params.host_dma_bytes_per_s
    else:
        raise ValueError(f"timing_model: direction={direction!r} is not one of {DIRECTIONS}")
    return 0.0 if num_bytes == 0 else fixed + num_bytes / rate


def energy(seconds: float, active: bool = True, params: FpgaParams = DEFAULT) -> float:
    """Modelled joules of the board over `seconds` (active streaming or idle power)."""
    if seconds < 0:
        raise ValueError(f"timing_model: seconds={seconds} must be >= 0")
    return seconds * (params.board_active_w if active else params.board_idle_w)
