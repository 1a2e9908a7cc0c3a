"""indexer: fused relevancy + top-k that never writes the score array to memory."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from . import _dispatch, _validate
from .relevancy import prepare, relevancy_reference
from .topk import topk_reference

OP = "indexer"


def indexer_reference(kind, operands, valid, k: int):
    """topk(relevancy(..., lengths=None), k, lengths=valid), valid broadcast over heads."""
    scores = relevancy_reference(kind, operands, jnp.full_like(valid, np.iinfo(np.int32).max))
    row_valid = jnp.broadcast_to(valid.reshape(valid.shape + (1,) * (scores.ndim - 2)), scores.shape[:-1])
    return topk_reference(scores, row_valid, k)


def indexer(q, memory, k: int, *, kind: str, weights=None, lengths=None, block_size=None,
            backend: str = "auto"):
    """The k most relevant memory entries: ``(values, indices)`` float32 / int32.

    Same result as ``topk(relevancy(q, memory, kind=kind, weights=weights), k,
    lengths=valid)`` where `valid` counts the blocks (tokens for dsa) that `lengths`
    admits: excluded entries never appear, and missing slots hold (-inf, -1).  The
    compiled backends fuse scoring and selection, so scores never reach memory.
    Not differentiable (selection is discrete); use relevancy + topk for gradients.
    """
    kind, operands, entries, valid, shape = prepare(OP, q, memory, kind, weights, lengths, block_size)
    k = _validate.static_int(OP, "k", k, low=1, high=entries,
                             high_name=f"the {entries} scored entries (memory)")
    out = (jax.ShapeDtypeStruct(shape[:-1] + (k,), jnp.float32),
           jax.ShapeDtypeStruct(shape[:-1] + (k,), jnp.int32))
    compiled = lambda backend: _dispatch.ffi(f"{OP}_{kind}", backend, out, k=np.int64(k))
    return _dispatch.run(OP, backend, lambda *a: indexer_reference(kind, a[:-1], a[-1], k), compiled,
                         *operands, valid, target=f"{OP}_{kind}")
