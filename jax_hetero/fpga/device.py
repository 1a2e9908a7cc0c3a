"""The FPGA device as Python sees it: discovery, selection and per-call statistics.

The C++ bridge (``_jax_hetero_fpga``) opens one device per process on first use, chosen by
``JAX_HETERO_FPGA_DEVICE`` (``emulated``, ``xrt:<index>`` or ``auto``: a card when XRT sees
one, else the emulated device) and ``JAX_HETERO_XCLBIN``.  Every bridge call is recorded
(shapes, bytes and DMA transfers each way, memory rows sent); :func:`stats` adds the
*modelled* device time from :mod:`jax_hetero.fpga.timing_model`.  No FPGA card was used to
build this package: every time it reports is modelled, and on the emulated device the
results themselves are emulated (the hls/ kernel sources run on the host CPU).
"""
from __future__ import annotations

import math
import os

from . import timing_model

__all__ = ["devices", "current", "select", "reset", "stats", "reset_stats", "inspect_xclbin"]


def _module():
    from ..backends import module, require
    require("fpga device", "fpga", target="gather")
    return module("fpga")


def _pyxrt():
    try:
        import pyxrt  # XRT's own Python binding, shipped with Xilinx's XRT packages
    except ImportError:
        return None
    return pyxrt


def devices() -> list[dict]:
    """The devices ``backend="fpga"`` can use: XRT cards (via pyxrt when importable, else the
    bridge's XRT enumeration), then the emulated device, which is always there."""
    found = []
    pyxrt = _pyxrt()
    if pyxrt is not None:
        for index in range(pyxrt.enumerate_devices()):
            dev = pyxrt.device(index)
            found.append({"spec": f"xrt:{index}", "kind": "xrt", "name": dev.get_info(pyxrt.xrt_info_device.name),
                          "bdf": dev.get_info(pyxrt.xrt_info_device.bdf), "found_by": "pyxrt"})
    else:
        mod = _module()
        for index in range(mod.xrt_device_count()):
            found.append({"spec": f"xrt:{index}", "kind": "xrt", "name": None, "found_by": "XRT (C++ bridge)"})
    found.append({"spec": "emulated", "kind": "emulated",
                  "name": "emulated Alveo U55C (hls/ kernels run in-process on the host)", "found_by": "jax_hetero"})
    return found


def current() -> dict:
    """The device the bridge uses now (opening it if needed); raises RuntimeError naming the
    cause and the fix when it cannot be opened."""
    return _module().device_info()


def select(spec: str, xclbin: str | None = None) -> dict:
    """Switch the bridge to device `spec` ("emulated", "xrt:<index>", "auto").

    Closes the current device (its resident memory is dropped and re-sent on the next call)
    and opens the new one.  Changes ``JAX_HETERO_FPGA_DEVICE`` / ``JAX_HETERO_XCLBIN`` of this
    process.
    """
    os.environ["JAX_HETERO_FPGA_DEVICE"] = spec
    if xclbin is not None:
        os.environ["JAX_HETERO_XCLBIN"] = xclbin
    reset()
    return current()


def reset() -> None:
    """Close the device and free its memory; the next call reopens it from the environment."""
    _module().reset()


def reset_stats() -> None:
    _module().reset_stats()


def _kernel_time(rec: dict) -> float:
    if rec["op"] == "gather":
        return timing_model.gather_time(rec["rows"], rec["row_bytes"])
    # The kernel reads only the valid entries of each row: model the mean valid length.
    entries = max(rec["k"], math.ceil(rec["scanned_entries"] / rec["rows"]))
    dtype = "bfloat16" if rec["dtype"] == "bfloat16" else "float32"
    return timing_model.indexer_time(rec["kind"], entries, rec["dim"], rec["heads"], rec["k"], dtype=dtype,
                                     rows=rec["rows"])


def _transfer_time(num_bytes: int, transfers: int, direction: str) -> float:
    # Each DMA pays the fixed cost once: transfers x (fixed + mean size / bandwidth).
    if transfers == 0:
        return 0.0
    return transfers * timing_model.transfer_time(num_bytes / transfers, direction)


def stats(path: str = "host") -> list[dict]:
    """One dict per bridge call since the last :func:`reset_stats`, oldest first.

    Measured by the bridge: ``bytes_to_device`` / ``bytes_from_device`` and the number of DMA
    transfers each way, ``memory_rows_uploaded`` (memory rows sent this call; only appended or
    changed rows after the first), ``new_memory``, ``stale_detected``, ``host_seconds``.
    Modelled (timing_model, labelled by ``timing``): ``modelled_kernel_s``,
    ``modelled_transfer_s`` and ``modelled_total_s``.  `path` chooses the transfer model:
    "host" (XDMA through host memory, what the bridge does) or "p2p" (the source paper's
    GPU-FPGA peer-to-peer path, which the bridge does not implement).
    """
    if path not in ("host", "p2p"):
        raise ValueError(f"stats: path={path!r} is not 'host' or 'p2p'")
    to_dev, from_dev = ("host_to_fpga", "fpga_to_host") if path == "host" else ("gpu_to_fpga", "fpga_to_gpu")
    out = []
    for rec in _module().stats():
        kernel = _kernel_time(rec)
        transfer = (_transfer_time(rec["bytes_to_device"], rec["transfers_to_device"], to_dev)
                    + _transfer_time(rec["bytes_from_device"], rec["transfers_from_device"], from_dev))
        rec.update(modelled_kernel_s=kernel, modelled_transfer_s=transfer, modelled_total_s=kernel + transfer,
                   timing=("modelled (timing_model.py); results emulated on the host, no FPGA card"
                           if rec["device"] == "emulated" else "modelled (timing_model.py), XRT device"))
        out.append(rec)
    return out


def inspect_xclbin(path: str) -> dict | None:
    """Kernels and target platform of an xclbin, read with pyxrt; None without pyxrt."""
    pyxrt = _pyxrt()
    if pyxrt is None:
        return None
    xclbin = pyxrt.xclbin(path)
    return {"kernels": [k.get_name() for k in xclbin.get_kernels()], "xsa": xclbin.get_xsa_name(),
            "uuid": str(xclbin.get_uuid())}
