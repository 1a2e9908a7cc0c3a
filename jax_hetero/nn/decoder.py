"""A small Llama-style decoder (RMSNorm, RoPE, grouped-query attention, SwiGLU) whose
attention is any memory-processing recipe, with a preallocated KV cache and a jit-compiled
`lax.scan` decode loop."""
from __future__ import annotations

import dataclasses
from functools import partial
from typing import Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from ..pipeline import AttentionShape
from .attention import SparseAttention


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int = 256          # bytes
    hidden_dim: int = 256
    num_layers: int = 2
    num_heads: int = 8
    num_kv_heads: int = 2
    head_dim: int = 32
    mlp_dim: int = 512
    max_len: int = 4096            # prompt + generated tokens
    rope_theta: float = 500_000.0

    def attention_shape(self) -> AttentionShape:
        return AttentionShape(self.num_heads, self.num_kv_heads, self.head_dim, self.hidden_dim, self.max_len)


class SwiGLU(nnx.Module):
    def __init__(self, dim: int, mlp_dim: int, rngs: nnx.Rngs):
        self.gate = nnx.Linear(dim, mlp_dim, use_bias=False, rngs=rngs)
        self.up = nnx.Linear(dim, mlp_dim, use_bias=False, rngs=rngs)
        self.down = nnx.Linear(mlp_dim, dim, use_bias=False, rngs=rngs)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class DecoderLayer(nnx.Module):
    def __init__(self, config: DecoderConfig, attention: SparseAttention, rngs: nnx.Rngs):
        self.attention_norm = nnx.RMSNorm(config.hidden_dim, rngs=rngs)
        self.attention = attention
        self.mlp_norm = nnx.RMSNorm(config.hidden_dim, rngs=rngs)
        self.mlp = SwiGLU(config.hidden_dim, config.mlp_dim, rngs)

    def prefill(self, x, memory):
        attended, memory = self.attention.prefill(self.attention_norm(x), memory)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), memory

    def decode(self, x, memory, position):
        attended, memory = self.attention.decode(self.attention_norm(x), memory, position)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), memory


class Decoder(nnx.Module):
    """Decoder LM.  The same `seed` gives the same model weights whatever the recipe, so a
    sparse model and its dense twin are directly comparable (recipe parameters such as the
    seer gate come from a separate stream).

    Memory (the KV cache and the recipe's summaries) is an explicit pytree, one entry per
    layer: ``memory = model.init_memory(batch)``.
    """

    def __init__(self, config: DecoderConfig = DecoderConfig(), *, recipe: str = "dense",
                 recipe_options: Mapping | None = None, plan: Mapping[str, str] | None = None,
                 backend: str = "auto", seed: int = 0):
        self.config, self.seed, self.recipe_name = config, seed, recipe
        rngs = nnx.Rngs(seed)
        shape = config.attention_shape()
        self.embed = nnx.Embed(config.vocab_size, config.hidden_dim, rngs=rngs)
        self.layers = nnx.List([
            DecoderLayer(config, SparseAttention(
                shape, recipe=recipe, recipe_options=recipe_options, plan=plan, backend=backend,
                rope_theta=config.rope_theta, rngs=rngs,
                recipe_rngs=nnx.Rngs(jax.random.fold_in(jax.random.key(seed), 1_000 + i))), rngs)
            for i in range(config.num_layers)])
        self.final_norm = nnx.RMSNorm(config.hidden_dim, rngs=rngs)
        self.head = nnx.Linear(config.hidden_dim, config.vocab_size, use_bias=False, rngs=rngs)

    def with_recipe(self, recipe: str, recipe_options: Mapping | None = None,
                    plan: Mapping[str, str] | None = None, backend: str = "auto") -> "Decoder":
        """The same weights with another attention recipe or placement."""
        return Decoder(self.config, recipe=recipe, recipe_options=recipe_options, plan=plan,
                       backend=backend, seed=self.seed)

    @property
    def pipelines(self):
        return [layer.attention.pipeline for layer in self.layers]

    def init_memory(self, batch: int = 1):
        return [p.init_memory(batch) for p in self.pipelines]

    def check_length(self, tokens: int, what: str):
        if tokens > self.config.max_len:
            raise ValueError(f"Decoder: {what} needs {tokens} positions but the model's "
                             f"max_len={self.config.max_len}; shorten it or build the model "
                             f"with DecoderConfig(max_len>={tokens})")

    def prefill(self, memory, tokens=None, *, embeddings=None):
        """Process the prompt (token ids [b, T] or embeddings [b, T, dm]) from position 0.

        Returns (logits of the last prompt token [b, vocab], memory).
        """
        if (tokens is None) == (embeddings is None):
            raise ValueError("Decoder.prefill: pass exactly one of tokens or embeddings")
        x = self.embed(tokens) if embeddings is None else embeddings
        self.check_length(x.shape[1], f"a prompt of {x.shape[1]} tokens")
        memory = list(memory)
        for i, layer in enumerate(self.layers):
            x, memory[i] = layer.prefill(x, memory[i])
        return self.head(self.final_norm(x[:, -1])), memory

    def decode_step(self, memory, token, position):
        """One token per sequence (ids [b]) at `position` -> (logits [b, vocab], memory)."""
        x = self.embed(token)
        memory = list(memory)
        for i, layer in enumerate(self.layers):
            x, memory[i] = layer.decode(x, memory[i], position)
        return self.head(self.final_norm(x)), memory


@partial(jax.jit, static_argnums=(0,))
def _prefill(graphdef, state, memory, tokens):
    return nnx.merge(graphdef, state).prefill(memory, tokens)


@partial(jax.jit, static_argnums=(0, 5), donate_argnums=(2,))
def _decode_loop(graphdef, state, memory, token, position, steps):
    model = nnx.merge(graphdef, state)

    def body(carry, _):
        memory, token, position = carry
        logits, memory = model.decode_step(memory, token, position)
        following = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        return (memory, following, position + 1), (following, logits)

    (memory, _, _), (tokens, logits) = jax.lax.scan(body, (memory, token, position), None, length=steps)
    return jnp.swapaxes(tokens, 0, 1), logits, memory


def generate(model: Decoder, prompt, steps: int, memory=None):
    """Greedy decoding: prefill `prompt` [b, T], then `steps` jit-compiled decode steps.

    Returns (tokens [b, steps], logits [steps, b, vocab] (the prompt's last token, then
    each decode step), memory).  The decode loop is one `lax.scan` under `jax.jit` with the
    memory donated, so the KV cache is updated in place.
    """
    prompt = jnp.asarray(prompt, jnp.int32)
    if prompt.ndim != 2:
        raise ValueError(f"generate: prompt must be token ids [batch, T], got shape {prompt.shape}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"generate: steps={steps!r} must be a positive int")
    model.check_length(prompt.shape[1] + steps, f"a prompt of {prompt.shape[1]} tokens + {steps} steps")
    graphdef, state = nnx.split(model)
    memory = model.init_memory(prompt.shape[0]) if memory is None else memory
    first_logits, memory = _prefill(graphdef, state, memory, prompt)
    first = jnp.argmax(first_logits, axis=-1).astype(jnp.int32)
    tokens, logits, memory = _decode_loop(graphdef, state, memory, first, jnp.int32(prompt.shape[1]), steps - 1)
    tokens = jnp.concatenate([first[:, None], tokens], axis=1)
    return tokens, jnp.concatenate([first_logits[None], logits]), memory
