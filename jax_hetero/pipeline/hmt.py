"""hmt: compressed memory in the style of the Hierarchical Memory Transformer.

Text is processed in segments; each finished segment leaves one memory embedding.

1. prepare    summary of a finished segment: mean of its embeddings through a linear
              projection, written into a bank of ``slots`` memory embeddings (a ring: once
              full, the oldest memory is replaced, as HMT keeps the most recent N);
2. relevancy  attention logits of the current segment's summary (query projection) over the
              bank (key projection), ``relevancy(kind="dot")`` -> [b, slots];
3. retrieve   the top-``k`` memories (``topk`` + ``gather``) -> [b, k, e] (while fewer than
              k are stored, the missing ones are zero vectors and their indices -1), or
              with ``soft`` the softmax-weighted mix of all of them -> [b, 1, e];
4. apply      prepend the retrieved memories to the current segment -> [b, k + s, e].

Update: ``{"segment": [b, s, e]}`` (the segment just processed);
query: ``{"segment": [b, s, e]}`` (the segment about to be processed).
Parameters: ``embed_dim``, ``slots`` (default 64), ``k`` (default 4), ``soft`` (default False).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .. import ops
from .core import Recipe


class HMTRecipe(Recipe):
    name = "hmt"

    def __init__(self, *, embed_dim: int, slots: int = 64, k: int = 4, soft: bool = False,
                 rngs: nnx.Rngs | None = None):
        for setting, value in (("embed_dim", embed_dim), ("slots", slots), ("k", k)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"hmt: {setting}={value!r} must be a positive int")
        if k > slots:
            raise ValueError(f"hmt: k={k} exceeds slots={slots} (the memory bank size); use k <= {slots}")
        rngs = rngs or nnx.Rngs(0)
        self.embed_dim, self.slots, self.k, self.soft = embed_dim, slots, k, soft
        self.summarize = nnx.Linear(embed_dim, embed_dim, rngs=rngs)
        self.query = nnx.Linear(embed_dim, embed_dim, use_bias=False, rngs=rngs)
        self.key = nnx.Linear(embed_dim, embed_dim, use_bias=False, rngs=rngs)

    def shapes(self):
        e = self.embed_dim
        picked = "[b, 1, e] softmax mix" if self.soft else f"top-{self.k} -> [b, {self.k}, {e}]"
        return {"prepare": f"segment [b, s, {e}] -> summary, written to bank [b, {self.slots}, {e}]",
                "relevancy": f"summary query . bank keys -> [b, {self.slots}]",
                "retrieve": f"memories {picked}",
                "apply": "prepend memories to the segment -> [b, k + s, e]"}

    def init_memory(self, batch: int = 1):
        return {"bank": jnp.zeros((batch, self.slots, self.embed_dim), jnp.float32),
                "count": jnp.zeros((batch,), jnp.int32)}

    def _check_segment(self, segment):
        if segment.ndim != 3 or segment.shape[-1] != self.embed_dim:
            raise ValueError(f"hmt: segment must be [b, s, embed_dim={self.embed_dim}], got {segment.shape}")

    def prepare(self, memory, update, *, backend):
        segment = update["segment"]
        self._check_segment(segment)
        summary = self.summarize(segment.mean(axis=1)).astype(jnp.float32)  # [b, e]
        slot = memory["count"] % self.slots
        bank = memory["bank"].at[jnp.arange(segment.shape[0]), slot].set(summary)
        return {"bank": bank, "count": memory["count"] + 1}

    def stored(self, memory):
        return jnp.minimum(memory["count"], self.slots)

    def relevancy(self, memory, query, *, backend):
        segment = query["segment"]
        self._check_segment(segment)
        q = self.query(self.summarize(segment.mean(axis=1)))[:, None, :] * self.embed_dim ** -0.5
        keys = self.key(memory["bank"])[:, :, None, :]
        return ops.relevancy(q.astype(jnp.float32), keys.astype(jnp.float32), kind="dot",
                             lengths=self.stored(memory), block_size=1, backend=backend)[:, 0]

    def retrieve(self, memory, scores, *, backend):
        if self.soft:
            weights = jax.nn.softmax(scores, axis=-1)
            weights = jnp.where(self.stored(memory)[:, None] > 0, weights, 0.0)
            return {"memories": jnp.einsum("bm,bme->be", weights, memory["bank"])[:, None]}
        indices = ops.topk(scores, self.k, lengths=self.stored(memory), backend=backend)[1]
        gather = lambda bank, idx: ops.gather(bank, idx, backend=backend, check_indices=False)  # from topk
        memories = jax.vmap(gather)(memory["bank"], indices)
        return {"memories": memories, "indices": indices}

    def apply(self, memory, query, selection, *, backend):
        return jnp.concatenate([selection["memories"].astype(query["segment"].dtype), query["segment"]], axis=1)
