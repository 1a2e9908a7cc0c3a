"""seer: SeerAttention-R style gated block sparsity.

1. prepare    mean-pooled keys of each block (``summarize(kind="mean")``) through the gate's
              key projection -> gate keys [b, blocks, hkv, gate_dim]; only blocks that new
              tokens touch are recomputed (a single decoded token updates its block's gate
              key as a running mean: the projection is linear);
2. relevancy  the gate's query projection of q, dotted with the gate keys and summed over the
              query heads of each KV head (``relevancy(kind="dot")``) -> block logits
              [b, hkv, blocks];
3. retrieve   either the top ``budget // block_size`` blocks (``topk``), or every block whose
              gate probability softmax(logits / sqrt(gate_dim)) exceeds ``threshold``,
              returned as a fixed-size list of ``max_blocks`` indices padded with -1;
4. apply      block-sparse decode attention over the chosen blocks (``sparse_attention``).

Parameters: ``block_size`` (default 64), ``budget`` (tokens, multiple of block_size) or
``threshold`` (probability in (0, 1)) with ``max_blocks`` (default: all blocks),
``gate_dim`` (default head_dim), ``fused`` (top-k mode only: steps 2-3 as one ``indexer``
call in the retrieve step, relevancy then only projects the query) and ``gate_init``: "identity" (an untrained gate ranks blocks
by q . mean key, the natural prior; train it by distillation for real use) or "random".
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from .. import ops
from .attention import AttentionRecipe, AttentionShape, block_of, read_block, write_blocks

GATE_INITS = ("identity", "random")


def _identity_init(key, shape, dtype=jnp.float32):
    return jnp.eye(shape[0], shape[1], dtype=dtype)


class SeerGate(nnx.Module):
    """The gate: separate linear projections of the query and of the pooled block keys."""

    def __init__(self, head_dim: int, gate_dim: int, init: str, rngs: nnx.Rngs):
        if init not in GATE_INITS:
            raise ValueError(f"seer: gate_init={init!r} is not one of {GATE_INITS}")
        kernel_init = _identity_init if init == "identity" else nnx.initializers.lecun_normal()
        self.query = nnx.Linear(head_dim, gate_dim, use_bias=False, kernel_init=kernel_init, rngs=rngs)
        self.key = nnx.Linear(head_dim, gate_dim, use_bias=False, kernel_init=kernel_init, rngs=rngs)


class SeerRecipe(AttentionRecipe):
    name = "seer"
    summarizes_blocks = True

    def __init__(self, shape: AttentionShape, *, block_size: int = 64, budget: int | None = None,
                 threshold: float | None = None, max_blocks: int | None = None,
                 gate_dim: int | None = None, gate_init: str = "identity", fused: bool = False,
                 rngs: nnx.Rngs | None = None):
        super().__init__(shape, block_size)
        if fused and threshold is not None:
            raise ValueError("seer: fused=True needs budget (top-k); a threshold needs the scores")
        self.fused = fused
        if budget is not None and threshold is not None:
            raise ValueError("seer: give either budget (top-k blocks) or threshold, not both")
        if threshold is None:
            self.budget = budget if budget is not None else min(2048, self.capacity)
            self.check_budget(self.budget)
            self.max_blocks = self.budget // block_size
        else:
            if not 0.0 < float(threshold) < 1.0:
                raise ValueError(f"seer: threshold={threshold!r} must be a gate probability in (0, 1)")
            self.budget = None
            self.max_blocks = self.num_blocks if max_blocks is None else max_blocks
            if not isinstance(self.max_blocks, int) or not 1 <= self.max_blocks <= self.num_blocks:
                raise ValueError(f"seer: max_blocks={max_blocks!r} must be an int in [1, {self.num_blocks}] "
                                 f"(the context has {self.num_blocks} blocks of {block_size})")
        self.threshold = None if threshold is None else float(threshold)
        self.gate_dim = gate_dim or shape.head_dim
        self.gate = SeerGate(shape.head_dim, self.gate_dim, gate_init, rngs or nnx.Rngs(0))

    def shapes(self):
        s, nb = self.shape, self.num_blocks
        pick = (f"top-{self.max_blocks} blocks (budget {self.budget} tokens)" if self.threshold is None
                else f"blocks with gate probability > {self.threshold}, {self.max_blocks} slots padded with -1")
        return {"prepare": f"mean block keys -> gate keys [b, {nb}, {s.num_kv_heads}, {self.gate_dim}] (block_size={self.block_size})",
                "relevancy": f"gate(q) [b, {s.num_heads}, {self.gate_dim}] . gate keys -> [b, {s.num_kv_heads}, {nb}]",
                "retrieve": pick + f" -> [b, {s.num_kv_heads}, {self.max_blocks}]",
                "apply": f"block-sparse attention over <= {self.max_blocks} blocks of {self.block_size}"}

    def init_extra(self, batch):
        s = self.shape
        return {"gate_keys": jnp.zeros((batch, self.num_blocks, s.num_kv_heads, self.gate_dim), jnp.float32)}

    def update_extra(self, memory, update, position, touched, backend):
        first, mean_keys = self.refresh_blocks(memory, touched, "mean", backend)
        memory["gate_keys"] = write_blocks(memory["gate_keys"], first, self.gate.key(mean_keys))
        return memory

    def append_token(self, memory, update, position, backend):
        # The gate's key projection is linear, so the gate key of a block mean updates as a
        # running mean of the projected keys.
        block, before = block_of(position, self.block_size)
        projected = self.gate.key(update["k"][:, 0]).astype(jnp.float32)  # [b, hkv, gate_dim]
        old = read_block(memory["gate_keys"], block)
        mean = (old * before + projected) / (before + 1)
        memory["gate_keys"] = write_blocks(memory["gate_keys"], block, mean[:, None])
        return memory

    def relevancy(self, memory, query, *, backend):
        if self.fused:
            return {"q": self.gate.query(query["q"])}
        return ops.relevancy(self.gate.query(query["q"]), memory["gate_keys"], kind="dot",
                             lengths=memory["length"], block_size=self.block_size, backend=backend)

    def retrieve(self, memory, scores, *, backend):
        if self.fused:
            return ops.indexer(scores["q"], memory["gate_keys"], self.max_blocks, kind="dot",
                               lengths=memory["length"], block_size=self.block_size, backend=backend)[1]
        valid = jnp.broadcast_to(self.valid_blocks(memory)[:, None], scores.shape[:-1])
        if self.threshold is not None:
            probability = jax.nn.softmax(scores * self.gate_dim ** -0.5, axis=-1)
            scores = jnp.where(probability > self.threshold, scores, -jnp.inf)
        values, indices = ops.topk(scores, self.max_blocks, lengths=valid, backend=backend)
        return jnp.where(values > -jnp.inf, indices, -1)

    def apply(self, memory, query, selection, *, backend):
        return self.block_attention(memory, query, selection, self.block_size, backend)
