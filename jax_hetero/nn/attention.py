"""SparseAttention: a grouped-query attention layer whose decode attention is a recipe."""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ..pipeline import ATTENTION_RECIPES, AttentionRecipe, AttentionShape, MemoryPipeline, make_recipe


def rope(x, positions, theta: float):
    """Rotary position embedding (rotate-half form).  x [..., T, heads, d], positions [T]."""
    d = x.shape[-1]
    freqs = theta ** (-jnp.arange(0, d, 2, dtype=jnp.float32) / d)
    angles = positions.astype(jnp.float32)[:, None] * freqs  # [T, d/2]
    cos, sin = jnp.cos(angles)[:, None, :], jnp.sin(angles)[:, None, :]
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1).astype(x.dtype)


def causal_attention(q, k, v):
    """Prefill attention: q [b, T, hq, d], k/v [b, T, hkv, d], each token sees itself and earlier."""
    b, t, hq, d = q.shape
    hkv = k.shape[2]
    qg = q.reshape(b, t, hkv, hq // hkv, d)
    logits = jnp.einsum("bsgjd,btgd->bgjst", qg, k) * d ** -0.5
    causal = jnp.tril(jnp.ones((t, t), bool))
    weights = jax.nn.softmax(jnp.where(causal, logits, -jnp.inf), axis=-1)
    return jnp.einsum("bgjst,btgd->bsgjd", weights, v).reshape(b, t, hq, d)


class SparseAttention(nnx.Module):
    """Grouped-query self-attention with RoPE whose decode step runs a memory pipeline.

    Prefill is dense causal attention and fills the recipe's memory; each decode step appends
    one token (prepare), scores and selects memory (relevancy, retrieve) and attends to the
    selection (apply).  `recipe` is a recipe name ("dense", "seer", "dsa", "quest") built with
    `recipe_options`, or a recipe instance built for this layer's `shape`.
    """

    def __init__(self, shape: AttentionShape, *, recipe: str | AttentionRecipe = "dense",
                 recipe_options: Mapping | None = None, plan: Mapping[str, str] | None = None,
                 backend: str = "auto", rope_theta: float = 500_000.0, rngs: nnx.Rngs,
                 recipe_rngs: nnx.Rngs | None = None):
        self.shape, self.rope_theta = shape, rope_theta
        s = shape
        dense = lambda out: nnx.Linear(s.hidden_dim, out, use_bias=False, rngs=rngs)
        self.query = dense(s.num_heads * s.head_dim)
        self.key = dense(s.num_kv_heads * s.head_dim)
        self.value = dense(s.num_kv_heads * s.head_dim)
        self.out = nnx.Linear(s.num_heads * s.head_dim, s.hidden_dim, use_bias=False, rngs=rngs)
        if isinstance(recipe, str):
            if recipe not in ATTENTION_RECIPES:
                raise ValueError(f"SparseAttention: recipe={recipe!r} is not an attention recipe; "
                                 f"valid choices: {tuple(ATTENTION_RECIPES)}")
            recipe = make_recipe(recipe, shape, rngs=recipe_rngs, **dict(recipe_options or {}))
        elif recipe_options:
            raise ValueError("SparseAttention: recipe_options only apply when recipe is a name")
        if not isinstance(recipe, AttentionRecipe):
            raise TypeError(f"SparseAttention: recipe must be a name or an attention recipe, "
                            f"got {type(recipe).__name__}")
        recipe.check_matches(shape)
        self.pipeline = MemoryPipeline(recipe, plan=plan, backend=backend)

    def _project(self, x, positions):
        """x [b, T, dm] -> q [b, T, hq, d], k, v [b, T, hkv, d] with RoPE applied to q and k."""
        s = self.shape
        b, t = x.shape[:2]
        q = self.query(x).reshape(b, t, s.num_heads, s.head_dim)
        k = self.key(x).reshape(b, t, s.num_kv_heads, s.head_dim)
        v = self.value(x).reshape(b, t, s.num_kv_heads, s.head_dim)
        return rope(q, positions, self.rope_theta), rope(k, positions, self.rope_theta), v

    def prefill(self, x, memory):
        """x [b, T, dm] at positions 0..T-1 -> (output [b, T, dm], memory holding the T tokens)."""
        t = x.shape[1]
        q, k, v = self._project(x, jnp.arange(t))
        memory = self.pipeline.prepare(memory, {"k": k, "v": v, "hidden": x, "position": jnp.int32(0)})
        attended = causal_attention(q, k, v)
        return self.out(attended.reshape(x.shape[0], t, -1)), memory

    def decode(self, x, memory, position):
        """One new token per sequence: x [b, dm] at `position` -> (output [b, dm], memory)."""
        q, k, v = self._project(x[:, None], jnp.reshape(position, (1,)))
        update = {"k": k, "v": v, "hidden": x[:, None], "position": position}
        memory, attended = self.pipeline.step(memory, update, {"q": q[:, 0], "hidden": x})
        return self.out(attended.reshape(x.shape[0], -1)), memory
