"""dsa: DeepSeek Sparse Attention with its lightning indexer.

1. prepare    one indexer key per token, LayerNorm(W_k h_t) [b, capacity, index_dim], written
              for the new tokens only;
2. relevancy  the indexer's query heads q_h = W_q h and weights w_h = W_w h of the decode
              token; score_t = sum_h w_h ReLU(q_h . k_t) (``relevancy(kind="dsa")``) -> [b, capacity];
3. retrieve   the top-``budget`` tokens (``topk``; -1 pads when the context is shorter),
              shared by every KV head;
4. apply      token-sparse decode attention over them (``sparse_attention`` with block_size 1).

Parameters: ``index_heads`` (default 64), ``index_dim`` (default 128), ``budget`` (tokens,
default 2048 or the whole context if shorter), ``fused`` (steps 2-3 as one ``indexer`` call
in the retrieve step, as the FPGA runs it; relevancy then only projects the query),
``key_dtype`` (the stored indexer keys and the indexer queries; by default ``"bfloat16"``
where JAX's default backend is an accelerator -- DeepSeek keeps its indexer in low precision
(FP8); it halves the bytes streamed per step and takes the GPU's tensor-core path -- and
``"float32"`` on the CPU, where XLA rewrites every bfloat16 cache update as a copy of the
whole buffer; any of ``"bfloat16"``, ``"float16"``, ``"float32"`` can be given).  The
indexer is a small Flax module (:class:`LightningIndexer`), randomly initialised; DeepSeek
trains it to match the attention distribution.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .. import ops
from .attention import AttentionRecipe, AttentionShape


class LightningIndexer(nnx.Module):
    """Projections of the hidden state to indexer queries, weights and one key per token."""

    def __init__(self, hidden_dim: int, index_heads: int, index_dim: int, rngs: nnx.Rngs):
        self.index_heads, self.index_dim = index_heads, index_dim
        self.query = nnx.Linear(hidden_dim, index_heads * index_dim, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(hidden_dim, index_dim, use_bias=False, rngs=rngs)
        self.key_norm = nnx.LayerNorm(index_dim, rngs=rngs)
        self.weight = nnx.Linear(hidden_dim, index_heads, use_bias=False, rngs=rngs)

    def keys(self, hidden):
        return self.key_norm(self.key(hidden))

    def queries(self, hidden):
        """hidden [b, dm] -> (q [b, heads, index_dim], weights [b, heads])."""
        q = self.query(hidden).reshape(hidden.shape[0], self.index_heads, self.index_dim)
        scale = (self.index_heads * self.index_dim) ** -0.5
        return q, self.weight(hidden) * scale


KEY_DTYPES = ("bfloat16", "float16", "float32")


class DSARecipe(AttentionRecipe):
    name = "dsa"

    def __init__(self, shape: AttentionShape, *, index_heads: int = 64, index_dim: int = 128,
                 budget: int | None = None, fused: bool = False, key_dtype: str | None = None,
                 rngs: nnx.Rngs | None = None):
        super().__init__(shape, 1)
        if key_dtype is None:
            key_dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
        try:
            name = jnp.dtype(key_dtype).name
        except TypeError:
            name = None
        if name not in KEY_DTYPES:
            raise ValueError(f"dsa: key_dtype={key_dtype!r} is not one of {KEY_DTYPES}")
        self.key_dtype = jnp.dtype(name)
        self.fused = fused
        self.budget = budget if budget is not None else min(2048, self.capacity)
        self.check_budget(self.budget)
        self.indexer = LightningIndexer(shape.hidden_dim, index_heads, index_dim, rngs or nnx.Rngs(0))

    def shapes(self):
        s, ix = self.shape, self.indexer
        return {"prepare": f"indexer keys [b, {self.capacity}, {ix.index_dim}] from hidden [b, T, {s.hidden_dim}]",
                "relevancy": f"sum_h w_h ReLU(q_h . k_t), {ix.index_heads} heads x {ix.index_dim} -> [b, {self.capacity}]",
                "retrieve": f"top-{self.budget} tokens -> [b, {s.num_kv_heads}, {self.budget}]",
                "apply": f"token-sparse attention over {self.budget} tokens"}

    def init_extra(self, batch):
        return {"index_keys": jnp.zeros((batch, self.capacity, self.indexer.index_dim), self.key_dtype)}

    def update_extra(self, memory, update, position, touched, backend):
        keys = self.indexer.keys(update["hidden"]).astype(self.key_dtype)
        memory["index_keys"] = jax.lax.dynamic_update_slice_in_dim(memory["index_keys"], keys, position, 1)
        return memory

    def relevancy(self, memory, query, *, backend):
        q, weights = self.indexer.queries(query["hidden"])
        if self.fused:
            return {"q": q.astype(self.key_dtype), "weights": weights}
        return ops.relevancy(q.astype(self.key_dtype), memory["index_keys"], kind="dsa",
                             weights=weights, lengths=memory["length"], backend=backend)

    def retrieve(self, memory, scores, *, backend):
        if self.fused:
            tokens = ops.indexer(scores["q"], memory["index_keys"], self.budget, kind="dsa",
                                 weights=scores["weights"], lengths=memory["length"], backend=backend)[1]
        else:
            tokens = ops.topk(scores, self.budget, lengths=memory["length"], backend=backend)[1]
        return jnp.broadcast_to(tokens[:, None], (tokens.shape[0], self.shape.num_kv_heads, self.budget))

    def apply(self, memory, query, selection, *, backend):
        return self.block_attention(memory, query, selection, 1, backend)
