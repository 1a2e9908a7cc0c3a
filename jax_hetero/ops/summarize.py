"""summarize (Prepare Memory): per-block min/max or mean of the keys."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _dispatch, _validate

OP = "summarize"
KINDS = ("minmax", "mean")


def summarize_reference(k, lengths, block_size: int, kind: str):
    """k [b, n, hkv, d] -> blocks [b, nb, hkv, d]; only tokens < lengths count.

    A block without valid tokens summarises to zeros (it is scored -inf downstream).
    """
    b, n, hkv, d = k.shape
    nb = -(-n // block_size)
    pad = nb * block_size - n
    x = jnp.pad(k.astype(jnp.float32), ((0, 0), (0, pad), (0, 0), (0, 0)))
    x = x.reshape(b, nb, block_size, hkv, d)
    valid = (jnp.arange(nb * block_size).reshape(nb, block_size)[None] < lengths[:, None, None])
    valid = valid[..., None, None]
    count = valid.sum(axis=2)
    empty = count == 0
    if kind == "mean":
        mean = jnp.where(valid, x, 0).sum(axis=2) / jnp.maximum(count, 1)
        return mean.astype(k.dtype)
    lo = jnp.where(empty, 0, jnp.where(valid, x, jnp.inf).min(axis=2))
    hi = jnp.where(empty, 0, jnp.where(valid, x, -jnp.inf).max(axis=2))
    return lo.astype(k.dtype), hi.astype(k.dtype)


def _compiled(kind: str, block_size: int, shape, dtype):
    b, n, hkv, d = shape
    block = jax.ShapeDtypeStruct((b, -(-n // block_size), hkv, d), dtype)
    outs = (block, block) if kind == "minmax" else (block,)

    def call(backend):
        fn = _dispatch.ffi(f"{OP}_{kind}", backend, outs, block_size=block_size)
        return fn if kind == "minmax" else (lambda *a: fn(*a)[0])
    return call


def summarize(k, *, block_size: int, kind: str, lengths=None, backend: str = "auto"):
    """Block summaries of keys ``k [b, n, hkv, d]`` with ``nb = ceil(n / block_size)`` blocks.

    ``kind="minmax"`` returns ``(min, max)``, each ``[b, nb, hkv, d]`` (the Quest/LServe page
    bounds); ``kind="mean"`` returns the mean ``[b, nb, hkv, d]``.  Only tokens
    ``< lengths[b]`` count; a block with none of them summarises to zeros.
    """
    k = _validate.float_array(OP, "k", k, rank=4)
    kind = _validate.choice(OP, "kind", kind, KINDS)
    block_size = _validate.static_int(OP, "block_size", block_size, low=1)
    b, n = k.shape[:2]
    lengths = _validate.lengths_array(OP, lengths, (b,), n, "k.shape[0]")
    lengths = jnp.clip(lengths, 0, n)
    return _dispatch.run(OP, backend, lambda k, l: summarize_reference(k, l, block_size, kind),
                         _compiled(kind, block_size, k.shape, k.dtype), k, lengths, target=f"{OP}_{kind}")
