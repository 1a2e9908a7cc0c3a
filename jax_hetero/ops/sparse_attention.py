"""sparse_attention (Apply to Inference): decode attention over the selected blocks only."""
from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from .. import backends
from . import _checks, _dispatch, _validate

OP = "sparse_attention"
BWD = f"{OP}_bwd"  # the FFI target of the backward pass
_F32 = jnp.float32


def selected_token_mask(block_indices, lengths, block_size: int, n: int):
    """Token positions [b, hkv, kb, block_size] of the selected blocks and which count.

    A slot counts when its block index is in [0, ceil(n / block_size)), it is the first
    slot with that index (duplicates count once) and the token is < lengths[b] (and < n).
    """
    kb = block_indices.shape[-1]
    earlier = jnp.tril(jnp.ones((kb, kb), bool), -1)  # earlier[j, i]: i < j
    same = block_indices[..., :, None] == block_indices[..., None, :]
    duplicate = jnp.any(same & earlier, axis=-1)
    pos = block_indices[..., None] * block_size + jnp.arange(block_size, dtype=jnp.int32)
    limit = jnp.minimum(lengths, n)[:, None, None, None]
    in_range = (block_indices >= 0) & (block_indices < -(-n // block_size))  # pos may wrap in int32
    valid = (in_range & ~duplicate)[..., None] & (pos < limit)
    return jnp.clip(pos, 0, n - 1), valid


def sparse_attention_reference(q, k, v, block_indices, lengths, block_size: int, scale: float):
    """Dense softmax attention of each query head over its KV head's selected tokens."""
    b, hq, d = q.shape
    n, hkv = k.shape[1], k.shape[2]
    if block_indices.shape[-1] == 0:  # no slots: no token to attend to
        return jnp.zeros_like(q)
    pos, valid = selected_token_mask(block_indices, lengths, block_size, n)
    pos = pos.reshape(b, hkv, -1)
    valid = valid.reshape(b, hkv, 1, -1)
    heads = jnp.arange(hkv)[None, :, None]
    batch = jnp.arange(b)[:, None, None]
    k_sel = k[batch, pos, heads].astype(_F32)  # [b, hkv, t, d]
    v_sel = v[batch, pos, heads].astype(_F32)
    qg = q.astype(_F32).reshape(b, hkv, hq // hkv, d)
    logits = jnp.einsum("bgjd,bgtd->bgjt", qg, k_sel, precision="highest") * scale
    logits = jnp.where(valid, logits, -jnp.inf)
    peak = jnp.max(logits, axis=-1, keepdims=True)
    weights = jnp.where(valid, jnp.exp(logits - jnp.where(jnp.isfinite(peak), peak, 0)), 0)
    total = weights.sum(axis=-1, keepdims=True)
    out = jnp.einsum("bgjt,bgtd->bgjd", weights, v_sel, precision="highest") / jnp.where(total > 0, total, 1)
    return out.reshape(b, hq, d).astype(q.dtype)


def _checked_reference(q, k, v, block_indices, lengths, *, block_size, scale, num_blocks, check_indices):
    if check_indices:
        _checks.check_index_range(OP, "block_indices", block_indices, num_blocks,
                                  f"k has {num_blocks} blocks of {block_size} tokens")
    return sparse_attention_reference(q, k, v, block_indices, lengths, block_size, scale)


@partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7, 8))
def _sparse_attention(q, k, v, block_indices, lengths, block_size, scale, backend, check_indices):
    num_blocks = -(-k.shape[1] // block_size)
    reference = partial(_checked_reference, block_size=block_size, scale=scale, num_blocks=num_blocks,
                        check_indices=check_indices)
    out = jax.ShapeDtypeStruct(q.shape, q.dtype)
    compiled = lambda name: (lambda *a: _dispatch.ffi(backends.unchecked_target(OP, name, check_indices), name, (out,),
                                                        block_size=np.int64(block_size), scale=np.float32(scale),
                                                        check_indices=check_indices)(*a)[0])
    return _dispatch.run(OP, backend, reference, compiled, q, k, v, block_indices, lengths)


def _fwd(q, k, v, block_indices, lengths, block_size, scale, backend, check_indices):
    out = _sparse_attention(q, k, v, block_indices, lengths, block_size, scale, backend, check_indices)
    return out, (q, k, v, block_indices, lengths)


def _reference_vjp(q, k, v, block_indices, lengths, g, *, block_size, scale):
    _, vjp = jax.vjp(lambda q, k, v: sparse_attention_reference(q, k, v, block_indices, lengths,
                                                                block_size, scale), q, k, v)
    return vjp(g)


def _bwd(block_size, scale, backend, check_indices, residuals, g):
    q, k, v, _, _ = residuals
    reference = partial(_reference_vjp, block_size=block_size, scale=scale)
    # cpu and cuda run their sparse_attention_bwd handler (backend="auto": the one of the
    # platform, per platform); backends without a compiled backward (the forward's backend
    # was validated) use the reference VJP.
    resolved = backends.resolve(OP, backend)
    if resolved not in ("auto", "xla") and not backends.has(BWD, resolved):
        resolved = "xla"
    outs = (jax.ShapeDtypeStruct(q.shape, q.dtype),) + (jax.ShapeDtypeStruct(k.shape, k.dtype),) * 2
    compiled = lambda name: _dispatch.ffi(BWD, name, outs, block_size=np.int64(block_size),
                                          scale=np.float32(scale))
    grads = _dispatch.run(OP, resolved, reference, compiled, *residuals, g, target=BWD)
    return (*grads, None, None)


_sparse_attention.defvjp(_fwd, _bwd)


def sparse_attention(q, k, v, block_indices, *, block_size: int, lengths=None, scale=None,
                     backend: str = "auto", check_indices: bool = True):
    """Decode attention of one query per sequence over the selected KV blocks.

    q ``[b, hq, d]``, k/v ``[b, n, hkv, d]`` (``hq % hkv == 0``), block_indices int32
    ``[b, hkv, kb]`` (-1 = unused slot, duplicates count once).  The output ``[b, hq, d]``
    equals dense softmax attention of each query head over exactly the tokens of its KV
    head's selected blocks that are ``< lengths[b]``, with scale ``d**-0.5`` by default.
    A row with no valid token gives zeros.  Differentiable with respect to q, k and v.
    Token-sparse attention (DSA) is ``block_size=1`` with token indices.
    A block index outside ``[-1, ceil(n / block_size))`` is an error (at trace time when
    concrete, else a ``JaxRuntimeError`` at run time); ``check_indices=False`` skips that
    run-time check, which costs a device-to-host synchronisation per call on a GPU, and such
    blocks are then skipped like -1.  Use it where the indices come from `topk`/`indexer`.
    """
    q = _validate.float_array(OP, "q", q, rank=3)
    k = _validate.float_array(OP, "k", k, rank=4)
    v = _validate.float_array(OP, "v", v, rank=4)
    block_indices = _validate.int_array(OP, "block_indices", block_indices, rank=3)
    block_size = _validate.static_int(OP, "block_size", block_size, low=1)
    b, hq, d = q.shape
    n, hkv = k.shape[1], k.shape[2]
    _validate.shape_is(OP, "k", k, (b, n, hkv, d), "[b, n, hkv, d] with q's batch and head dim")
    _validate.shape_is(OP, "v", v, k.shape, "v must match k")
    if hq % hkv:
        raise ValueError(f"{OP}: query heads hq={hq} must be a multiple of the KV heads hkv={hkv} (k.shape[2])")
    if block_indices.shape[:2] != (b, hkv):
        raise ValueError(f"{OP}: block_indices must have shape [b, hkv, kb]=[{b}, {hkv}, kb], "
                         f"got {block_indices.shape}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"{OP}: q, k and v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    check_indices = _validate.static_bool(OP, "check_indices", check_indices)
    num_blocks = -(-n // block_size)
    if check_indices and _validate.is_concrete(block_indices):
        _checks.check_index_range(OP, "block_indices", block_indices, num_blocks,
                                  f"k has {num_blocks} blocks of {block_size} tokens")
    lengths = _validate.lengths_array(OP, lengths, (b,), n, "q.shape[0]")
    scale = float(d ** -0.5 if scale is None else scale)
    return _sparse_attention(q, k, v, block_indices, lengths, block_size, scale, backend, check_indices)
