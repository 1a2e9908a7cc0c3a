"""FPGA side of jax_hetero: device discovery, the emulated device and the timing model."""
from .device import current, devices, inspect_xclbin, reset, reset_stats, select, stats  # noqa: F401
