"""FPGA side of jax_hetero: device discovery, the emulated device and the timing model."""
