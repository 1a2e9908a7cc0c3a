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
    """table [m, F], indices [R] -> [R, F]; index -1 gives a zero row."""
    m = table.shape[0]
    rows = jnp.take(table, jnp.clip(indices, 0, m - 1), axis=0)
    return jnp.where((indices >= 0)[:, None], rows, jnp.zeros((), table.dtype))


def _compiled(rows: int, features: int, dtype):
    out = jax.ShapeDtypeStruct((rows, features), dtype)

    def call(backend):
        # expand_dims: a table shared across a vmap keeps leading size 1 instead of being
        # copied per batch element; the handler broadcasts it.
        return ffi_call(backends.target_name(OP, backend), out, vmap_method="expand_dims")
    return call


def _checked_reference(table, indices):
    _checks.check_index_range(OP, "indices", indices, table.shape[0], f"table has {table.shape[0]} rows")
    return gather_reference(table, indices)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _gather(table, indices, backend):
    return _dispatch.run(OP, backend, _checked_reference,
                         _compiled(indices.shape[0], table.shape[1], table.dtype), table, indices)


def _gather_fwd(table, indices, backend):
    return _gather(table, indices, backend), (indices, jnp.zeros((0,) + table.shape, table.dtype))


def _gather_bwd(backend, residuals, g):
    indices, shape_carrier = residuals
    m = shape_carrier.shape[1]
    safe = jnp.where(indices < 0, m, indices)
    grad = jnp.zeros(shape_carrier.shape[1:], g.dtype).at[safe].add(g, mode="drop")
    return grad, None


_gather.defvjp(_gather_fwd, _gather_bwd)


def gather(table, indices, *, backend: str = "auto"):
    """Rows of `table` selected by `indices`: ``table[indices]`` with -1 giving zeros.

    table ``[m, ...]`` (any float dtype), indices int32 ``[...]`` -> ``[..., *table.shape[1:]]``.
    An index outside ``[-1, m)`` is an error: at trace time when `indices` is concrete,
    otherwise a ``JaxRuntimeError`` naming the op when the computation runs.
    Differentiable with respect to `table`.
    """
    table = _validate.float_array(OP, "table", table, min_rank=1)
    indices = _validate.int_array(OP, "indices", indices)
    m = table.shape[0]
    if _validate.is_concrete(indices):
        _checks.check_index_range(OP, "indices", indices, m, f"table has {m} rows")
    features = math.prod(table.shape[1:])
    out = _gather(table.reshape(m, features), indices.reshape(-1), backend)
    return out.reshape(indices.shape + table.shape[1:])
