"""How far each sparse recipe is from dense attention, as a function of its token budget.

For a random decoder (same weights for every recipe), one decode step after the same
prompt: relative error ||logits_recipe - logits_dense|| / ||logits_dense||, averaged over
prompts.  Random weights spread attention almost uniformly, so this is close to a worst case:
trained models concentrate attention and lose less at the same budget.
"""
from __future__ import annotations

import dataclasses
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..nn import Decoder, DecoderConfig

QUALITY_CONFIG = DecoderConfig(vocab_size=256, hidden_dim=128, num_layers=2, num_heads=4,
                               num_kv_heads=2, head_dim=32, mlp_dim=256, max_len=4096)
RECIPE_OPTIONS = {"quest": lambda budget: dict(page_size=16, budget=budget),
                  "seer": lambda budget: dict(block_size=64, budget=budget),
                  "dsa": lambda budget: dict(index_heads=16, index_dim=64, budget=budget)}


@partial(jax.jit, static_argnums=(0,))
def _next_logits(graphdef, state, prompt, token):
    """Logits of one decode step of `token` after prefilling `prompt`."""
    model = nnx.merge(graphdef, state)
    _, memory = model.prefill(model.init_memory(prompt.shape[0]), prompt)
    logits, _ = model.decode_step(memory, token, jnp.int32(prompt.shape[1]))
    return logits


def logits_after(model: Decoder, prompt, token):
    graphdef, state = nnx.split(model)
    return _next_logits(graphdef, state, prompt, token)


def relative_errors(context: int = 2048, budgets=(64, 128, 256, 512, 1024, 2048),
                    recipes=("seer", "quest", "dsa"), prompts: int = 3,
                    config: DecoderConfig = QUALITY_CONFIG, seed: int = 0, progress=sys.stderr) -> dict:
    """{recipe: {budget: mean relative logit error}} with `context` tokens in the cache
    (a prompt of context - 1 tokens, then the decode token)."""
    config = dataclasses.replace(config, max_len=max(config.max_len, context))
    rng = np.random.default_rng(seed)
    batch = jnp.asarray(rng.integers(0, config.vocab_size, (prompts, context - 1)), jnp.int32)
    token = jnp.asarray(rng.integers(0, config.vocab_size, (prompts,)), jnp.int32)
    dense = Decoder(config, seed=seed)
    reference = logits_after(dense, batch, token)
    norm = jnp.linalg.norm(reference, axis=-1)
    errors = {}
    for recipe in recipes:
        errors[recipe] = {}
        for budget in budgets:
            if progress:
                print(f"  quality: {recipe} budget {budget} / context {context}", file=progress, flush=True)
            model = dense.with_recipe(recipe, RECIPE_OPTIONS[recipe](budget))
            diff = jnp.linalg.norm(logits_after(model, batch, token) - reference, axis=-1)
            errors[recipe][budget] = float(jnp.mean(diff / norm))
    return errors


def markdown(errors: dict, context: int) -> str:
    budgets = sorted({b for per in errors.values() for b in per})
    rows = ["| recipe | " + " | ".join(f"budget {b} ({100 * b / context:.1f} %)" for b in budgets) + " |",
            "|---|" + "---|" * len(budgets)]
    for recipe, per in errors.items():
        rows.append(f"| {recipe} | " + " | ".join(f"{per[b]:.3g}" for b in budgets) + " |")
    return "\n".join(rows)
