"""What every attention recipe shares: the KV-cache memory layout, appending tokens, and
keeping per-block key summaries current.

Memory of an attention recipe (a dict, preallocated for `capacity` tokens):
  k, v      [b, capacity, hkv, d]   the KV cache (written by `prepare`)
  length    [b] int32               tokens written so far
  ...       recipe-specific entries (block summaries, indexer keys)

Update (newly appended tokens, T of them, static):
  k, v      [b, T, hkv, d]          keys (after RoPE) and values of the new tokens
  hidden    [b, T, dm]              their hidden states (the DSA indexer reads these)
  position  int32 scalar            where the first new token goes

Query (one decode token per sequence):
  q         [b, hq, d]              the attention query (after RoPE)
  hidden    [b, dm]                 its hidden state
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from .. import ops
from .core import Recipe


@dataclasses.dataclass(frozen=True)
class AttentionShape:
    """The attention dimensions a recipe is built for (must match the model's layer)."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    hidden_dim: int
    max_len: int

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"AttentionShape: {field.name}={value!r} must be a positive int")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"AttentionShape: num_heads={self.num_heads} must be a multiple of "
                             f"num_kv_heads={self.num_kv_heads} (grouped-query attention)")


def dense_decode_attention(q, k, v, lengths, scale=None):
    """Softmax attention of one query per sequence over the first `lengths` cached tokens.

    q [b, hq, d], k/v [b, n, hkv, d], lengths [b] -> [b, hq, d].  The dense baseline that
    every sparse recipe approximates.
    """
    b, hq, d = q.shape
    n, hkv = k.shape[1], k.shape[2]
    scale = d ** -0.5 if scale is None else scale
    qg = q.astype(jnp.float32).reshape(b, hkv, hq // hkv, d)
    # Token axis kept second, as in the cache: no transposed copy of the cache per step.
    logits = jnp.einsum("bgjd,bngd->bngj", qg, k.astype(jnp.float32)) * scale
    valid = (jnp.arange(n) < lengths[:, None])[:, :, None, None]
    weights = jnp.where(valid, jax.nn.softmax(jnp.where(valid, logits, -jnp.inf), axis=1), 0.0)
    out = jnp.einsum("bngj,bngd->bgjd", weights, v.astype(jnp.float32))
    return out.reshape(b, hq, d).astype(q.dtype)


class AttentionRecipe(Recipe):
    """Base of the decode-attention recipes (dense, seer, quest, dsa).

    Owns the KV cache; `capacity` is `max_len` rounded up to whole blocks so block
    summaries never straddle the end of the cache.
    """

    # Whether prefill hands update_extra the keys of the blocks it touched (block summaries).
    summarizes_blocks = False

    def __init__(self, shape: AttentionShape, block_size: int):
        if not isinstance(shape, AttentionShape):
            raise TypeError(f"{self.name}: shape must be an AttentionShape, got {type(shape).__name__}")
        if not isinstance(block_size, int) or block_size < 1:
            raise ValueError(f"{self.name}: block_size={block_size!r} must be a positive int")
        self.shape = shape
        self.block_size = block_size
        self.num_blocks = -(-shape.max_len // block_size)
        self.capacity = self.num_blocks * block_size

    def check_budget(self, budget):
        """A token budget must be a positive multiple of the block size and fit the context."""
        if not isinstance(budget, int) or budget < 1:
            raise ValueError(f"{self.name}: budget={budget!r} must be a positive int (tokens)")
        if budget > self.capacity:
            raise ValueError(f"{self.name}: budget={budget} tokens exceeds the context "
                             f"(max_len={self.shape.max_len}, {self.capacity} tokens in whole "
                             f"blocks of {self.block_size}); use a budget <= {self.capacity}")
        if budget % self.block_size:
            raise ValueError(f"{self.name}: budget={budget} tokens is not a multiple of "
                             f"block_size={self.block_size}; valid budgets are multiples of "
                             f"{self.block_size} up to {self.capacity}")

    def check_matches(self, shape: AttentionShape):
        """Clear error when the model layer's dimensions differ from the recipe's."""
        for field in dataclasses.fields(shape):
            mine, theirs = getattr(self.shape, field.name), getattr(shape, field.name)
            if mine != theirs:
                raise ValueError(f"{self.name} recipe: {field.name}={mine} but the model layer has "
                                 f"{field.name}={theirs}; build the recipe with the model's "
                                 f"AttentionShape")

    def init_memory(self, batch: int = 1):
        s = self.shape
        cache = (batch, self.capacity, s.num_kv_heads, s.head_dim)
        return {"k": jnp.zeros(cache, jnp.float32), "v": jnp.zeros(cache, jnp.float32),
                "length": jnp.zeros((batch,), jnp.int32), **self.init_extra(batch)}

    def init_extra(self, batch: int) -> dict:
        return {}

    def prepare(self, memory, update, *, backend: str):
        """Append the new tokens to the KV cache, then refresh the recipe's own memory.

        A single decoded token updates its block's summary incrementally (no re-read of the
        cache: reading the cache around its in-place update makes XLA copy the whole cache
        every step); several tokens (prefill) re-summarise the blocks they touch with the
        ``summarize`` op.
        """
        position = jnp.asarray(update["position"], jnp.int32)
        new = update["k"].shape[1]
        touched = (self.touched_blocks(memory["k"], update["k"], position)
                   if new > 1 and self.summarizes_blocks else None)
        memory = dict(memory)
        memory["k"] = jax.lax.dynamic_update_slice_in_dim(memory["k"], update["k"].astype(jnp.float32), position, 1)
        memory["v"] = jax.lax.dynamic_update_slice_in_dim(memory["v"], update["v"].astype(jnp.float32), position, 1)
        memory["length"] = jnp.full_like(memory["length"], position + new)
        if new == 1:
            return self.append_token(memory, update, position, backend)
        return self.update_extra(memory, update, position, touched, backend)

    def update_extra(self, memory, update, position, touched, backend: str) -> dict:
        """Refresh the recipe's memory for several new tokens (`touched`: see touched_blocks)."""
        return memory

    def append_token(self, memory, update, position, backend: str) -> dict:
        """Refresh the recipe's memory for one new token at `position`."""
        return self.update_extra(memory, update, position, None, backend)

    def touched_blocks(self, cache, new_keys, position):
        """(first block, keys of the blocks that tokens [position, position + T) touch).

        Read from the cache before the new tokens are written, with the new keys merged in.
        """
        bs, new = self.block_size, new_keys.shape[1]
        count = min(self.num_blocks, (new + bs - 2) // bs + 1)
        first = jnp.minimum(position // bs, self.num_blocks - count)
        keys = jax.lax.dynamic_slice_in_dim(cache, first * bs, count * bs, 1)
        keys = jax.lax.dynamic_update_slice_in_dim(keys, new_keys.astype(keys.dtype), position - first * bs, 1)
        return first, keys

    def refresh_blocks(self, memory, touched, kind: str, backend: str):
        """Summaries of the blocks a prefill touched (only those are re-summarised).
        Returns (first block, summaries)."""
        first, keys = touched
        filled = jnp.clip(memory["length"] - first * self.block_size, 0, keys.shape[1])
        return first, ops.summarize(keys, block_size=self.block_size, kind=kind, lengths=filled, backend=backend)

    def valid_blocks(self, memory):
        return (memory["length"] + self.block_size - 1) // self.block_size

    def block_attention(self, memory, query, block_indices, block_size, backend):
        """Apply step of the sparse recipes: attention over the selected blocks only.  The
        indices come from the recipe's own selection, so the run-time index check (a device
        sync per call on a GPU) is skipped."""
        return ops.sparse_attention(query["q"], memory["k"], memory["v"], block_indices,
                                    block_size=block_size, lengths=memory["length"], backend=backend,
                                    check_indices=False)


def block_of(position, block_size: int):
    """(block index, tokens already in that block) of the token at `position`."""
    return position // block_size, position % block_size


def read_block(table, block):
    """Row `block` of `table` [b, nb, ...] -> [b, ...]."""
    return jax.lax.dynamic_index_in_dim(table, block, 1, keepdims=False)


def write_blocks(table, first, blocks):
    """`table` [b, nb, ...] with rows first .. first + len(blocks) replaced by `blocks`."""
    return jax.lax.dynamic_update_slice_in_dim(table, blocks.astype(table.dtype), first, 1)


class DenseRecipe(AttentionRecipe):
    """Dense decode attention: the baseline every sparse recipe is compared against.

    prepare appends to the KV cache; relevancy and retrieve do nothing; apply attends to
    every cached token.
    """

    name = "dense"

    def __init__(self, shape: AttentionShape, block_size: int = 64):
        super().__init__(shape, block_size)

    def shapes(self):
        s = self.shape
        return {"prepare": f"append k/v [b, T, {s.num_kv_heads}, {s.head_dim}] to the KV cache",
                "relevancy": "(none)", "retrieve": "(none: every token is used)",
                "apply": f"dense attention q [b, {s.num_heads}, {s.head_dim}] over the cache"}

    def relevancy(self, memory, query, *, backend):
        return None

    def retrieve(self, memory, scores, *, backend):
        return None

    def apply(self, memory, query, selection, *, backend):
        return dense_decode_attention(query["q"], memory["k"], memory["v"], memory["length"])
