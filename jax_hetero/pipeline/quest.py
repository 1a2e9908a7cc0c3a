"""quest: Quest / LServe page selection by a min-max upper bound.

1. prepare    per page of `page_size` keys, the element-wise min and max
              (``summarize(kind="minmax")`` over the pages new tokens touch; a single
              decoded token updates its page's bounds in place);
2. relevancy  upper bound of q.k over each page, sum_d max(q_d min_d, q_d max_d), summed
              over the query heads of each KV head (``relevancy(kind="quest")``) -> [b, hkv, pages];
3. retrieve   the top ``budget // page_size`` pages per KV head (``topk``; -1 pads when the
              context has fewer pages);
4. apply      block-sparse decode attention over the chosen pages (``sparse_attention``).

Parameters: ``page_size`` (tokens per page, default 16), ``budget`` (tokens attended, a
multiple of page_size, default 2048 or the whole context if shorter), ``fused``: steps 2-3 as
one ``indexer`` call in the retrieve step (scores never reach memory; the form an FPGA runs),
relevancy then only passes the query on.
"""
from __future__ import annotations

from .. import ops
from .attention import AttentionRecipe, AttentionShape, block_of, read_block, write_blocks

import jax.numpy as jnp


class QuestRecipe(AttentionRecipe):
    name = "quest"
    summarizes_blocks = True

    def __init__(self, shape: AttentionShape, *, page_size: int = 16, budget: int | None = None,
                 fused: bool = False):
        super().__init__(shape, page_size)
        self.fused = fused
        self.budget = budget if budget is not None else min(2048, self.capacity)
        self.check_budget(self.budget)
        self.pages = self.budget // page_size

    def shapes(self):
        s, nb = self.shape, self.num_blocks
        return {"prepare": f"page min/max [b, {nb}, {s.num_kv_heads}, {s.head_dim}] x2 (page_size={self.block_size})",
                "relevancy": f"upper bound q [b, {s.num_heads}, {s.head_dim}] vs pages -> [b, {s.num_kv_heads}, {nb}]",
                "retrieve": ("fused indexer: score + " if self.fused else "") + f"top-{self.pages} pages -> [b, {s.num_kv_heads}, {self.pages}] (budget {self.budget} tokens)",
                "apply": f"block-sparse attention over {self.pages} pages of {self.block_size}"}

    def init_extra(self, batch):
        s = self.shape
        pages = jnp.zeros((batch, self.num_blocks, s.num_kv_heads, s.head_dim), jnp.float32)
        return {"page_min": pages, "page_max": pages}

    def update_extra(self, memory, update, position, touched, backend):
        first, (lo, hi) = self.refresh_blocks(memory, touched, "minmax", backend)
        memory["page_min"] = write_blocks(memory["page_min"], first, lo)
        memory["page_max"] = write_blocks(memory["page_max"], first, hi)
        return memory

    def append_token(self, memory, update, position, backend):
        block, before = block_of(position, self.block_size)
        key = update["k"][:, 0].astype(jnp.float32)  # [b, hkv, d]
        lo = jnp.where(before == 0, key, jnp.minimum(read_block(memory["page_min"], block), key))
        hi = jnp.where(before == 0, key, jnp.maximum(read_block(memory["page_max"], block), key))
        memory["page_min"] = write_blocks(memory["page_min"], block, lo[:, None])
        memory["page_max"] = write_blocks(memory["page_max"], block, hi[:, None])
        return memory

    def relevancy(self, memory, query, *, backend):
        if self.fused:
            return {"q": query["q"]}
        return ops.relevancy(query["q"], (memory["page_min"], memory["page_max"]), kind="quest",
                             lengths=memory["length"], block_size=self.block_size, backend=backend)

    def retrieve(self, memory, scores, *, backend):
        if self.fused:
            return ops.indexer(scores["q"], (memory["page_min"], memory["page_max"]), self.pages,
                               kind="quest", lengths=memory["length"], block_size=self.block_size,
                               backend=backend)[1]
        valid = jnp.broadcast_to(self.valid_blocks(memory)[:, None], scores.shape[:-1])
        return ops.topk(scores, self.pages, lengths=valid, backend=backend)[1]

    def apply(self, memory, query, selection, *, backend):
        return self.block_attention(memory, query, selection, self.block_size, backend)
