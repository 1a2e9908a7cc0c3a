"""jax_hetero: fast, composable, placeable memory processing for long-context inference in JAX.

The four steps around the model -- Prepare Memory, Compute Relevancy, Retrieval, Apply to
Inference -- as JAX primitives backed by XLA FFI custom calls on the CPU, the GPU (CUDA)
and an FPGA (XRT bridge), each with a pure-jnp reference (``backend="xla"``).
"""
from .backends import BackendUnavailableError, build_info, use_backend
from .ops import *  # noqa: F401,F403
from .ops import __all__ as _ops_all

__version__ = "0.1.0"
__all__ = ["build_info", "use_backend", "BackendUnavailableError", *_ops_all]
