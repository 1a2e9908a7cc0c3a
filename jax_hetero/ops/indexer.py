"""indexer: fused relevancy + top-k that never writes the score array to memory."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _dispatch, _validate
from .relevancy import prepare, relevancy_reference
from .topk import topk_reference

OP = "indexer"
CUDA_FUSED_MAX_K = 2048  # the CUDA indexer's final sort holds at most this many winners


def indexer_reference(kind, operands, valid, k: int):
    """topk(relevancy(..., lengths=None), k, lengths=valid), valid broadcast over heads."""
    scores = relevancy_reference(kind, operands, jnp.full_like(valid, np.iinfo(np.int32).max))
    return topk_reference(scores, _row_valid(valid, scores.shape), k)


def _row_valid(valid, scores_shape):
    return jnp.broadcast_to(valid.reshape(valid.shape + (1,) * (len(scores_shape) - 2)), scores_shape[:-1])


def relevancy_then_topk(kind: str, k: int, scores_shape, backend: str):
    """The unfused indexer on compiled handlers: relevancy, then topk (the scores go to
    memory).  The CUDA backend runs it for k beyond CUDA_FUSED_MAX_K."""
    scores = (jax.ShapeDtypeStruct(scores_shape, jnp.float32),)
    selected = (jax.ShapeDtypeStruct(scores_shape[:-1] + (k,), jnp.float32),
                jax.ShapeDtypeStruct(scores_shape[:-1] + (k,), jnp.int32))

    def run(*args):
        operands, valid = args[:-1], args[-1]
        everything = jnp.full_like(valid, np.iinfo(np.int32).max)
        s = _dispatch.ffi(f"relevancy_{kind}", backend, scores)(*operands, everything)[0]
        return _dispatch.ffi("topk", backend, selected, k=np.int64(k))(s, _row_valid(valid, scores_shape))
    return run


def indexer(q, memory, k: int, *, kind: str, weights=None, lengths=None, block_size=None,
            backend: str = "auto"):
    """The k most relevant memory entries: ``(values, indices)`` float32 / int32.

    Same result as ``topk(relevancy(q, memory, kind=kind, weights=weights), k,
    lengths=valid)`` where `valid` counts the blocks (tokens for dsa) that `lengths`
    admits: excluded entries never appear, and missing slots hold (-inf, -1).  The
    compiled backends fuse scoring and selection, so scores never reach memory (on CUDA for
    k <= 2048; beyond that it runs relevancy, then topk).
    Not differentiable (selection is discrete); use relevancy + topk for gradients.
    """
    kind, operands, entries, valid, shape = prepare(OP, q, memory, kind, weights, lengths, block_size)
    k = _validate.static_int(OP, "k", k, low=1, high=entries,
                             high_name=f"the {entries} scored entries (memory)")
    out = (jax.ShapeDtypeStruct(shape[:-1] + (k,), jnp.float32),
           jax.ShapeDtypeStruct(shape[:-1] + (k,), jnp.int32))
    compiled = lambda backend: (relevancy_then_topk(kind, k, shape, backend)
                                if backend == "cuda" and k > CUDA_FUSED_MAX_K
                                else _dispatch.ffi(f"{OP}_{kind}", backend, out, k=np.int64(k)))
    return _dispatch.run(OP, backend, lambda *a: indexer_reference(kind, a[:-1], a[-1], k), compiled,
                         *operands, valid, target=f"{OP}_{kind}")
