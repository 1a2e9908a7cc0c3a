"""Trace-time argument checks shared by the ops.  Every message names op and argument."""
from __future__ import annotations

import operator

import jax.numpy as jnp
import numpy as np

FLOAT_DTYPES = (jnp.float32, jnp.bfloat16, jnp.float16)


def float_array(op: str, name: str, x, min_rank: int | None = None, rank: int | None = None):
    x = jnp.asarray(x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be float32, bfloat16 or float16, got {x.dtype}; "
                        f"cast it with {name}.astype(jnp.float32)")
    return _check_rank(op, name, x, min_rank, rank)


def int_array(op: str, name: str, x, rank: int | None = None, min_rank: int | None = None):
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.integer):
        raise TypeError(f"{op}: {name} must be an int32 array, got {x.dtype}")
    return _check_rank(op, name, x, min_rank, rank).astype(jnp.int32)


def _check_rank(op, name, x, min_rank, rank):
    if rank is not None and x.ndim != rank:
        raise ValueError(f"{op}: {name} must have rank {rank}, got shape {x.shape}")
    if min_rank is not None and x.ndim < min_rank:
        raise ValueError(f"{op}: {name} must have rank >= {min_rank}, got shape {x.shape}")
    return x


def static_int(op: str, name: str, value, low: int | None = None, high: int | None = None,
               high_name: str | None = None) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{op}: {name} must be a static Python int, got {type(value).__name__}; "
                        f"mark it static (e.g. jax.jit(..., static_argnames='{name}'))") from None
    if low is not None and value < low:
        raise ValueError(f"{op}: {name}={value} must be >= {low}")
    if high is not None and value > high:
        raise ValueError(f"{op}: {name}={value} exceeds {high_name or high}")
    return value


def static_bool(op: str, name: str, value) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{op}: {name} must be a static Python bool, got {type(value).__name__}; "
                        f"pass True or False (mark it static under jax.jit)")
    return bool(value)


def shape_is(op: str, name: str, x, expected: tuple, hint: str = ""):
    if tuple(x.shape) != tuple(expected):
        raise ValueError(f"{op}: {name} must have shape {tuple(expected)}, got {tuple(x.shape)}"
                         + (f" ({hint})" if hint else ""))


def lengths_array(op: str, lengths, batch_shape: tuple, full: int, what: str = "scores.shape[:-1]"):
    """int32 lengths of shape `batch_shape`, defaulting to `full` everywhere."""
    if lengths is None:
        return jnp.full(batch_shape, full, jnp.int32)
    lengths = int_array(op, "lengths", lengths)
    shape_is(op, "lengths", lengths, batch_shape, f"one entry per row, {what}")
    return lengths


def choice(op: str, name: str, value, choices):
    if value not in choices:
        raise ValueError(f"{op}: {name}={value!r} is not one of {tuple(choices)}")
    return value


def is_concrete(x) -> bool:
    try:
        np.asarray(x)
        return True
    except Exception:  # a tracer
        return False
