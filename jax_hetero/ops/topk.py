"""topk: the k largest entries of each row, exactly as jax.lax.top_k orders them."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _dispatch, _validate

OP = "topk"


def _lowest(dtype):
    """The value below every other in the total order (a negative NaN with all bits set)."""
    bits = {2: np.uint16(0xFFFF), 4: np.uint32(0xFFFFFFFF)}[jnp.dtype(dtype).itemsize]
    return jax.lax.bitcast_convert_type(jnp.asarray(bits), dtype)


def topk_reference(scores, lengths, k: int):
    """The specification: lax.top_k over the first `lengths` entries of each row.

    Excluded entries are replaced by the lowest value in the total order; since they sit
    after every valid entry, ties resolve to the valid one.  Slots past the valid count
    then come out as (-inf, -1).
    """
    n = scores.shape[-1]
    valid = jnp.arange(n, dtype=jnp.int32) < lengths[..., None]
    values, indices = jax.lax.top_k(jnp.where(valid, scores, _lowest(scores.dtype)), k)
    missing = indices >= lengths[..., None]
    values = jnp.where(missing, jnp.array(-jnp.inf, scores.dtype), values)
    return values, jnp.where(missing, -1, indices).astype(jnp.int32)


def _compiled(k: int, shape, dtype):
    out = (jax.ShapeDtypeStruct(shape[:-1] + (k,), dtype), jax.ShapeDtypeStruct(shape[:-1] + (k,), jnp.int32))
    return lambda backend: _dispatch.ffi(OP, backend, out, k=np.int64(k))


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _topk(scores, lengths, k, backend):
    return _dispatch.run(OP, backend, partial(topk_reference, k=k),
                         _compiled(k, scores.shape, scores.dtype), scores, lengths)


def _topk_fwd(scores, lengths, k, backend):
    values, indices = _topk(scores, lengths, k, backend)
    return (values, indices), (indices, jnp.zeros((0,) + scores.shape, scores.dtype))


def _topk_bwd(k, backend, residuals, cotangents):
    indices, shape_carrier = residuals
    g_values, _ = cotangents
    n = shape_carrier.shape[-1]
    return scatter_rows(g_values, indices, n), None


def scatter_rows(updates, indices, n: int):
    """Adds updates[..., j] into position indices[..., j] of a zero row of length n; -1 drops."""
    rows = updates.reshape(-1, updates.shape[-1])
    idx = jnp.where(indices < 0, n, indices).reshape(rows.shape)
    out = jax.vmap(lambda u, i: jnp.zeros((n,), u.dtype).at[i].add(u, mode="drop"))(rows, idx)
    return out.reshape(updates.shape[:-1] + (n,))


_topk.defvjp(_topk_fwd, _topk_bwd)


def topk(scores, k: int, *, lengths=None, backend: str = "auto"):
    """The k largest entries of each row of `scores`, sorted descending.

    Returns (values [..., k], indices [..., k] int32) identical to ``jax.lax.top_k``:
    NaN ranks above +inf, -0.0 below +0.0, ties go to the lower index.  With ``lengths``
    (int32, shape ``scores.shape[:-1]``) positions >= length are excluded; a row with fewer
    than k valid entries fills the remaining slots with (-inf, -1).  Differentiable with
    respect to ``scores`` (through the values).

    >>> import jax.numpy as jnp, jax_hetero as jh
    >>> jh.topk(jnp.array([0.1, 3.0, -1.0, 3.0]), k=2)[1]
    Array([1, 3], dtype=int32)
    """
    scores = _validate.float_array(OP, "scores", scores, min_rank=1)
    n = scores.shape[-1]
    k = _validate.static_int(OP, "k", k, low=1, high=n, high_name=f"n={n} (scores.shape[-1])")
    lengths = _validate.lengths_array(OP, lengths, scores.shape[:-1], n)
    return _topk(scores, lengths, k, backend)
