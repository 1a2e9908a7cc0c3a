"""Decode with a sparse-attention recipe and compare it with dense attention.

    PYTHONPATH=. python examples/decode_with_recipe.py [quest|seer|dsa] [budget]
"""
import sys

import jax.numpy as jnp
import numpy as np

from jax_hetero.nn import Decoder, DecoderConfig, generate

recipe = sys.argv[1] if len(sys.argv) > 1 else "quest"
budget = int(sys.argv[2]) if len(sys.argv) > 2 else 512

config = DecoderConfig(hidden_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                       mlp_dim=256, max_len=4096)
prompt = jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 2000)), jnp.int32)

dense = Decoder(config)                                  # same seed -> same weights below
sparse = dense.with_recipe(recipe, {"budget": budget})   # recipe options: see docs/pipeline.md
print(sparse.pipelines[0].describe())

dense_tokens, dense_logits, _ = generate(dense, prompt, steps=12)
tokens, logits, memory = generate(sparse, prompt, steps=12)   # prefill + jitted lax.scan decode
error = jnp.linalg.norm(logits[1] - dense_logits[1]) / jnp.linalg.norm(dense_logits[1])
print(f"{recipe} with a budget of {budget} tokens out of {prompt.shape[1]}:")
print(f"  tokens        {np.asarray(tokens[0]).tolist()}")
print(f"  dense tokens  {np.asarray(dense_tokens[0]).tolist()}")
print(f"  relative logit error of the first decode step: {float(error):.3g}")
print(f"  cache holds {int(memory[0]['length'][0])} tokens")
