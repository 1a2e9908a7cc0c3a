"""Shims for JAX APIs whose location or signature moved between supported versions."""
from __future__ import annotations

import jax
from jax._src.lib import xla_client as _xla_client

try:  # jax >= 0.6
    shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map  # type: ignore

platform_dependent = jax.lax.platform_dependent
ffi_call = jax.ffi.ffi_call

try:
    JaxRuntimeError = jax.errors.JaxRuntimeError
except AttributeError:  # pragma: no cover - older jax
    JaxRuntimeError = _xla_client.XlaRuntimeError

# A run-time error of a jitted call is JaxRuntimeError on its first (compiling) call, but jax
# 0.7.2 .. 0.10.x raise a plain ValueError with the same message once the C++ dispatch fast
# path is cached (jax-ml/jax#34083).  Catch both.
RUNTIME_ERRORS = (JaxRuntimeError, ValueError)

# The custom-call trait that lets XLA trace a GPU handler into a command buffer (a CUDA graph);
# jax.ffi.register_ffi_target passes `traits` on to XLA.
COMMAND_BUFFER_COMPATIBLE = _xla_client.CustomCallTargetTraits.COMMAND_BUFFER_COMPATIBLE

__all__ = ["shard_map", "platform_dependent", "ffi_call", "JaxRuntimeError", "RUNTIME_ERRORS",
           "COMMAND_BUFFER_COMPATIBLE"]
