"""gather: rows of a table by index (pages of a KV cache, documents, memories)."""
from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from . import _checks, _dispatch, _validate
from .._compat import ffi_call
from .. import backends

OP = "gather"


def gather_reference(table, indices):
    """table [m, F], indices [R] -> [R, F]; index -1 (or any outside [0, m)) gives a zero row."""
    m = table.shape[0]
    rows = jnp.take(table, jnp.clip(indices, 0, m - 1), axis=0)
    return jnp.where(((indices >= 0) & (indices < m))[:, None], rows, jnp.zeros((), table.dtype))


def _compiled(rows: int, features: int, dtype, check_indices: bool):
    out = jax.ShapeDtypeStruct((rows, features), dtype)

    def call(backend):
        # expand_dims: a table shared across a vmap keeps leading size 1 instead of being
        # copied per batch element; the handler broadcasts it.
        f = ffi_call(backends.target_name(backends.unchecked_target(OP, backend, check_indices), backend), out,
                     vmap_method="expand_dims")
        return lambda *args: f(*args, check_indices=check_indices)
    return call


def _checked_reference(table, indices, check_indices: bool):
    if check_indices:
        _checks.check_index_range(OP, "indices", indices, table.shape[0], f"table has {table.shape[0]} rows")
    return gather_reference(table, indices)


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _gather(table, indices, backend, check_indices):
    return _dispatch.run(OP, backend, partial(_checked_reference, check_indices=check_indices),
                         _compiled(indices.shape[0], table.shape[1], table.dtype, check_indices), table, indices)


def _gather_fwd(table, indices, backend, check_indices):
    return _gather(table, indices, backend, check_indices), (indices, jnp.zeros((0,) + table.shape, table.dtype))


def _gather_bwd(backend, check_indices, residuals, g):
    indices, shape_carrier = residuals
    m = shape_carrier.shape[1]
    safe = jnp.where((indices < 0) | (indices >= m), m, indices)  # rows that read nothing get nothing
    grad = jnp.zeros(shape_carrier.shape[1:], g.dtype).at[safe].add(g, mode="drop")
    return grad, None


_gather.defvjp(_gather_fwd, _gather_bwd)


def gather(table, indices, *, backend: str = "auto", check_indices: bool = True):
    """Rows of `table` selected by `indices`: ``table[indices]`` with -1 giving zeros.

    table ``[m, ...]`` (any float dtype), indices int32 ``[...]`` -> ``[..., *table.shape[1:]]``.
    An index outside ``[-1, m)`` is an error: at trace time when `indices` is concrete,
    otherwise a ``JaxRuntimeError`` naming the op when the computation runs.
    ``check_indices=False`` skips that run-time check (on a GPU it costs a device-to-host
    synchronisation per call): an index outside ``[-1, m)`` then gives a zero row, as -1 does.
    Use it where the indices are valid by construction (from `topk` or `indexer`).
    Differentiable with respect to `table`.
    """
    table = _validate.float_array(OP, "table", table, min_rank=1)
    indices = _validate.int_array(OP, "indices", indices)
    check_indices = _validate.static_bool(OP, "check_indices", check_indices)
    m = table.shape[0]
    if check_indices and _validate.is_concrete(indices):
        _checks.check_index_range(OP, "indices", indices, m, f"table has {m} rows")
    features = math.prod(table.shape[1:])
    out = _gather(table.reshape(m, features), indices.reshape(-1), backend, check_indices)
    return out.reshape(indices.shape + table.shape[1:])
