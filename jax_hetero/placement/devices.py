"""The devices a step can be placed on, how fast data moves between them, and their power.

Where a number is not measured it says so: ``source`` is "measured", "modelled" (the FPGA
timing model, jax_hetero/fpga/timing_model.py) or "assumed" (a documented constant).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time

import jax

from .. import backends
from ..fpga import timing_model

# Assumed figures, used only where nothing can be measured (docs/placement.md gives sources).
PCIE_HOST_GPU_BYTES_PER_S = 25e9   # PCIe Gen5 x16 host<->H100, effective (assumed)
PCIE_HOST_GPU_LATENCY_S = 10e-6    # one small cudaMemcpy, launch included (assumed)
CPU_ACTIVE_W_PER_CORE = 10.0       # server core under load, package share (assumed)
CPU_IDLE_W = 5.0                   # (assumed)
GPU_ACTIVE_W = 700.0               # H100 SXM board power limit (assumed when NVML is absent)
GPU_IDLE_W = 70.0                  # (assumed when NVML is absent)


@dataclasses.dataclass(frozen=True)
class Device:
    name: str            # "cpu", "gpu" or "fpga"
    backend: str         # the op backend that runs a step there
    active_w: float
    idle_w: float
    power_source: str    # "measured (NVML)", "modelled" or "assumed"
    jax_device: object = None  # where measured steps run (None for the modelled FPGA)


def cpu_device() -> Device:
    module = backends.module("cpu")
    cores = module.num_threads() if module is not None else (os.cpu_count() or 1)
    return Device("cpu", "cpu" if module is not None else "xla", CPU_ACTIVE_W_PER_CORE * cores,
                  CPU_IDLE_W, "assumed", jax.devices("cpu")[0])


def gpu_device() -> Device | None:
    try:
        gpu = jax.devices("gpu")[0]
    except RuntimeError:
        return None
    # 'auto' on the GPU runs the CUDA handler of each op that has one and the jnp reference
    # of the others (summarize has no CUDA handler, for one).
    backend = "auto"
    idle, active = nvml_power(gpu)
    if idle is None:
        return Device("gpu", backend, GPU_ACTIVE_W, GPU_IDLE_W, "assumed", gpu)
    return Device("gpu", backend, active, idle, "measured (NVML)", gpu)


def fpga_device() -> Device:
    p = timing_model.DEFAULT
    return Device("fpga", "fpga", p.board_active_w, p.board_idle_w, "modelled")


def available_devices(include_fpga: bool = True) -> list[Device]:
    found = [cpu_device(), gpu_device()] + ([fpga_device()] if include_fpga else [])
    return [d for d in found if d is not None]


def transfer_seconds(num_bytes: int, source: str, target: str) -> tuple[float, str]:
    """Time to move `num_bytes` from device `source` to `target`, and where it comes from."""
    if source == target or num_bytes == 0:
        return 0.0, "none"
    pair = {source, target}
    if pair == {"gpu", "fpga"}:
        return timing_model.transfer_time(num_bytes, f"{source}_to_{target}"), "modelled (P2P)"
    if pair == {"cpu", "fpga"}:
        direction = "host_to_fpga" if source == "cpu" else "fpga_to_host"
        return timing_model.transfer_time(num_bytes, direction), "modelled (XDMA)"
    return PCIE_HOST_GPU_LATENCY_S + num_bytes / PCIE_HOST_GPU_BYTES_PER_S, "assumed (PCIe)"


def nvml_index(device) -> int:
    """NVML's index of JAX GPU `device`: NVML numbers every GPU, CUDA only the visible ones."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if device.id < len(visible) and visible[device.id].strip().isdigit():
        return int(visible[device.id])
    return device.id


def power_reader(index: int):
    """A function returning the board power of GPU `index` in watts (NVML through pynvml, or
    through nvidia-smi where pynvml is not installed), or None if neither works."""
    try:
        import pynvml
        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        return lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1e3
    except Exception:  # not installed, or no permission / driver: try nvidia-smi
        pass
    command = ["nvidia-smi", "-i", str(index), "--query-gpu=power.draw", "--format=csv,noheader,nounits"]

    def read():
        return float(subprocess.run(command, capture_output=True, text=True, check=True,
                                    timeout=10).stdout.strip())
    try:
        read()
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
    return read


def nvml_power(device) -> tuple[float | None, float | None]:
    """(idle, busy) board power in watts of `device` from NVML, or (None, None).

    Idle is read at rest; busy is the mean draw while a large matmul loop runs on it.
    """
    read = power_reader(nvml_index(device))
    if read is None:
        return None, None
    try:
        idle = read()
        samples, done = [], threading.Event()

        def sample():
            while not done.is_set():
                samples.append(read())
                time.sleep(0.01)

        x = jax.device_put(jax.numpy.ones((8192, 8192), jax.numpy.bfloat16), device)
        step = jax.jit(lambda a: (a @ a) * 1e-4)
        step(x).block_until_ready()
        thread = threading.Thread(target=sample)
        thread.start()
        end = time.perf_counter() + 2.0
        while time.perf_counter() < end:
            x = step(x)
        x.block_until_ready()
        done.set()
        thread.join()
        return idle, sum(samples) / max(len(samples), 1)
    except Exception:  # the reader failed mid-way: fall back to the assumed figures
        return None, None
