"""relevancy (Compute Relevancy): score every memory entry for the current query."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from . import _dispatch, _validate

OP = "relevancy"
KINDS = ("dot", "quest", "dsa")
_F32 = jnp.float32


def scores_dot(q, summary):
    """q [b, hq, d], summary [b, nb, hkv, d] -> [b, hkv, nb]: group-summed q . summary."""
    b, hq, d = q.shape
    hkv = summary.shape[2]
    qg = q.astype(_F32).reshape(b, hkv, hq // hkv, d)
    return jnp.einsum("bgjd,bngd->bgn", qg, summary.astype(_F32), precision="highest")


def scores_quest(q, lo, hi):
    """The Quest/LServe upper bound sum_d max(q_d*min_d, q_d*max_d), group-summed."""
    b, hq, d = q.shape
    hkv = lo.shape[2]
    qg = q.astype(_F32).reshape(b, hkv, hq // hkv, 1, d)
    lo_t = jnp.swapaxes(lo.astype(_F32), 1, 2)[:, :, None]  # [b, hkv, 1, nb, d]
    hi_t = jnp.swapaxes(hi.astype(_F32), 1, 2)[:, :, None]
    return jnp.maximum(qg * lo_t, qg * hi_t).sum(axis=(2, 4))


def scores_dsa(q, keys, weights):
    """DSA lightning indexer: sum_h w_h * ReLU(q_h . k_t); q [b, h, di], keys [b, n, di]."""
    logits = jnp.einsum("bhd,bnd->bhn", q.astype(_F32), keys.astype(_F32), precision="highest")
    return jnp.einsum("bh,bhn->bn", weights.astype(_F32), jax.nn.relu(logits), precision="highest")


def mask_invalid(scores, valid):
    """Entries at positions >= valid[b] score -inf (scores [b, ..., n])."""
    pos = jnp.arange(scores.shape[-1], dtype=jnp.int32)
    keep = pos < valid.reshape(valid.shape + (1,) * (scores.ndim - 1))
    return jnp.where(keep, scores, -jnp.inf)


def prepare(op: str, q, memory, kind, weights, lengths, block_size):
    """Validate the arguments shared by relevancy and indexer.

    Returns (kind, operands, entries, valid, score_shape): the kernel operands without the
    valid counts, the number of scored entries per row, the valid count per batch row
    (blocks for block kinds, tokens for dsa) and the shape of the score array.
    """
    kind = _validate.choice(op, "kind", kind, KINDS)
    q = _validate.float_array(op, "q", q, rank=3)
    b = q.shape[0]
    if kind == "dsa":
        keys = _validate.float_array(op, "memory", memory, rank=3)
        if weights is None:
            raise ValueError(f"{op}: kind='dsa' needs weights of shape [b, h]={q.shape[:2]}")
        weights = _validate.float_array(op, "weights", weights, rank=2).astype(_F32)
        _validate.shape_is(op, "weights", weights, q.shape[:2], "one weight per indexer head")
        _same_batch_and_dim(op, q, keys, "memory", keys.shape[-1])
        _same_dtype(op, q, keys, "memory")
        n = keys.shape[1]
        valid = _valid_count(op, lengths, b, n, n)
        return kind, (q, keys, weights), n, valid, (b, n)
    if weights is not None:
        raise ValueError(f"{op}: weights are only used by kind='dsa', got kind={kind!r}")
    if kind == "quest":
        if not (isinstance(memory, (tuple, list)) and len(memory) == 2):
            raise TypeError(f"{op}: kind='quest' needs memory=(min, max) from "
                            f"summarize(..., kind='minmax'), got {type(memory).__name__}")
        parts = tuple(_validate.float_array(op, f"memory[{i}]", m, rank=4) for i, m in enumerate(memory))
        _validate.shape_is(op, "memory[1]", parts[1], parts[0].shape, "max must match min")
    else:
        parts = (_validate.float_array(op, "memory", memory, rank=4),)
    summary = parts[0]
    _same_batch_and_dim(op, q, summary, "memory", summary.shape[-1])
    for i, part in enumerate(parts):
        _same_dtype(op, q, part, "memory")
    hq, hkv, nb = q.shape[1], summary.shape[2], summary.shape[1]
    if hq % hkv:
        raise ValueError(f"{op}: query heads hq={hq} must be a multiple of the KV heads "
                         f"hkv={hkv} (memory.shape[2])")
    if lengths is not None and block_size is None:
        raise ValueError(f"{op}: kind={kind!r} with lengths needs block_size (tokens per block) "
                         f"to turn token lengths into block counts")
    if block_size is not None:
        block_size = _validate.static_int(op, "block_size", block_size, low=1)
    valid = _valid_count(op, lengths, b, nb, None if block_size is None else nb * block_size,
                         block_size)
    return kind, (q,) + parts, nb, valid, (b, hkv, nb)


def _valid_count(op, lengths, b, entries, tokens, block_size=None):
    if lengths is None:
        return jnp.full((b,), entries, jnp.int32)
    lengths = _validate.lengths_array(op, lengths, (b,), tokens, "q.shape[0]")
    if block_size is not None:  # blocks that start before the length
        lengths = (jnp.maximum(lengths, 0) + block_size - 1) // block_size
    return jnp.clip(lengths, 0, entries).astype(jnp.int32)


def _same_batch_and_dim(op, q, mem, name, dim):
    if mem.shape[0] != q.shape[0]:
        raise ValueError(f"{op}: {name} batch {mem.shape[0]} differs from q batch {q.shape[0]}")
    if dim != q.shape[-1]:
        raise ValueError(f"{op}: {name} feature dim {dim} differs from q's {q.shape[-1]}")


def _same_dtype(op, q, mem, name):
    if mem.dtype != q.dtype:
        raise TypeError(f"{op}: q is {q.dtype} but {name} is {mem.dtype}; cast one to match "
                        f"(e.g. q.astype({name}.dtype))")


_SCORERS = {"dot": scores_dot, "quest": scores_quest, "dsa": scores_dsa}


def relevancy_reference(kind, operands, valid):
    return mask_invalid(_SCORERS[kind](*operands), valid)


def relevancy(q, memory, *, kind: str, weights=None, lengths=None, block_size=None,
              backend: str = "auto"):
    """Score every memory entry for the query (float32 scores).

    - ``kind="dot"``: memory = block summary ``[b, nb, hkv, d]``; score = q . summary.
    - ``kind="quest"``: memory = ``(min, max)`` from :func:`summarize`; score =
      sum_d max(q_d min_d, q_d max_d), the Quest/LServe upper bound.
    - Both take q ``[b, hq, d]`` and sum over the query heads of each KV head's group:
      scores ``[b, hkv, nb]``.
    - ``kind="dsa"``: q ``[b, h, di]`` indexer heads, memory = indexer keys ``[b, n, di]``,
      weights ``[b, h]``; score_t = sum_h w_h ReLU(q_h . k_t); scores ``[b, n]``.

    ``lengths`` (tokens, ``[b]``) scores -inf every block that starts at or after the length
    (every token at or after it for dsa); block kinds then need ``block_size``.
    """
    kind, operands, _, valid, shape = prepare(OP, q, memory, kind, weights, lengths, block_size)
    out = jax.ShapeDtypeStruct(shape, _F32)
    compiled = lambda backend: (lambda *a: _dispatch.ffi(f"{OP}_{kind}", backend, (out,))(*a)[0])
    return _dispatch.run(OP, backend, lambda *a: relevancy_reference(kind, a[:-1], a[-1]), compiled,
                         *operands, valid, target=f"{OP}_{kind}")
