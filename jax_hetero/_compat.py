"""Shims for JAX APIs whose location or signature moved between supported versions."""
from __future__ import annotations

import jax

try:  # jax >= 0.6
    shard_map = jax.shard_map
except AttributeError:  # pragma: no cover - older jax
    from jax.experimental.shard_map import shard_map  # type: ignore

platform_dependent = jax.lax.platform_dependent
ffi_call = jax.ffi.ffi_call

try:
    JaxRuntimeError = jax.errors.JaxRuntimeError
except AttributeError:  # pragma: no cover - older jax
    from jax._src.lib import xla_client as _xc
    JaxRuntimeError = _xc.XlaRuntimeError

__all__ = ["shard_map", "platform_dependent", "ffi_call", "JaxRuntimeError"]
