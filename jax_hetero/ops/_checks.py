"""Run-time checks of index arguments for the jnp reference path.

Compiled handlers check indices themselves and return an ffi::Error; the reference raises
through a host callback, so both surface as JaxRuntimeError naming the op.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _validate


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

    flat_bad = bad.reshape(-1)
    first = jnp.where(jnp.any(flat_bad), indices.reshape(-1)[jnp.argmax(flat_bad)], 0)
    jax.debug.callback(raise_if_bad, jnp.any(flat_bad), first)
