"""Run-time checks of index arguments for the jnp reference path.

Compiled handlers check indices themselves and return an ffi::Error; the reference raises
through a host callback, so both surface as JaxRuntimeError naming the op.  Host callbacks
need JAX's CPU platform: in a process started with JAX_PLATFORMS=cuda (no CPU client) the
reference cannot check at run time and says so once with a warning.
"""
from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate


@functools.lru_cache(maxsize=None)
def _host_callbacks_work() -> bool:
    try:
        jax.devices("cpu")
        return True
    except RuntimeError:
        warnings.warn("jax_hetero: JAX's CPU platform is disabled (JAX_PLATFORMS), so the jnp "
                      "reference (backend='xla') cannot check indices at run time; out-of-range "
                      "indices are clamped there. Enable 'cpu' in JAX_PLATFORMS to keep the check.")
        return False


def check_index_range(op: str, name: str, indices, upper: int, what: str):
    """Error unless every entry of `indices` is -1 or in [0, upper)."""
    if _validate.is_concrete(indices):
        # numpy, not jnp: under jit a jnp result on a closed-over constant is a tracer.
        values = np.asarray(indices)
        bad = (values < -1) | (values >= upper)
        if bad.any():
            first = values[bad].reshape(-1)[0]
            raise IndexError(f"{op}: {name} contains {int(first)}, outside [0, {upper}) "
                             f"({what}); use -1 for an unused slot")
        return
    bad = (indices < -1) | (indices >= upper)

    def raise_if_bad(any_bad, first):
        if any_bad:
            raise IndexError(f"{op}: {name} contains {int(first)}, outside [0, {upper}) "
                             f"({what}); use -1 for an unused slot")

    if not _host_callbacks_work():
        return
    flat_bad = bad.reshape(-1)
    first = jnp.where(jnp.any(flat_bad), indices.reshape(-1)[jnp.argmax(flat_bad)], 0)
    jax.debug.callback(raise_if_bad, jnp.any(flat_bad), first)
