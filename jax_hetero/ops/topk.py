"""topk: the k largest entries of each row, exactly as jax.lax.top_k orders them."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from . import _dispatch, _validate

OP = "topk"


def order_keys(scores):
    """int32 keys whose order is the IEEE total order of `scores` (widened to float32):
    -NaN < -inf < ... < -0.0 < +0.0 < ... < +inf < +NaN, as jax.lax.top_k orders on the CPU.

    Selecting on these keys instead of the floats makes the reference independent of how a
    platform's top_k treats NaN (XLA:GPU ranks a negative NaN above every number).
    """
    bits = jax.lax.bitcast_convert_type(scores.astype(jnp.float32), jnp.int32)
    return jnp.where(bits < 0, bits ^ jnp.int32(0x7FFFFFFF), bits)


def topk_reference(scores, lengths, k: int):
    """The specification: lax.top_k over the first `lengths` entries of each row.

    Excluded entries get the lowest key; since they sit after every valid entry, a tie with
    a valid entry resolves to the valid one.  Slots past the valid count come out as
    (-inf, -1).
    """
    n = scores.shape[-1]
    valid = jnp.arange(n, dtype=jnp.int32) < lengths[..., None]
    keys = jnp.where(valid, order_keys(scores), jnp.iinfo(jnp.int32).min)
    _, indices = jax.lax.top_k(keys, k)
    values = jnp.take_along_axis(scores, indices, axis=-1)
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

    Returns (values [..., k], indices [..., k] int32) identical to ``jax.lax.top_k`` (on the
    CPU): the IEEE total order, so NaN ranks above +inf (a negative NaN below -inf), -0.0
    below +0.0, and ties go to the lower index.  Every backend uses this order on every
    platform (XLA:GPU's own top_k ranks a negative NaN above all numbers).  With ``lengths``
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
