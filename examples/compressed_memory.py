"""Compressed memory (hmt recipe): each finished segment leaves one memory embedding; each new
segment retrieves the most relevant memories and is processed with them prepended.

    PYTHONPATH=. python examples/compressed_memory.py
"""
import jax
import jax.numpy as jnp
import numpy as np

from jax_hetero.nn import Decoder, DecoderConfig, RetrievalMemory

config = DecoderConfig(hidden_dim=64, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=16,
                       mlp_dim=128, max_len=512)
model = Decoder(config)
memory_module = RetrievalMemory("hmt", embed_dim=config.hidden_dim, slots=16, k=4)
print(memory_module.pipeline.describe())

text = np.random.default_rng(0).integers(0, 256, (1, 8 * 64))
memory = memory_module.init_memory(batch=1)
step = jax.jit(memory_module.process_segment)
for i, segment_tokens in enumerate(np.split(text, 8, axis=1)):
    segment = model.embed(jnp.asarray(segment_tokens, jnp.int32))      # [1, 64, hidden]
    extended, memory = step(memory, segment)                           # memories + segment
    logits, _ = model.prefill(model.init_memory(1), embeddings=extended)
    print(f"segment {i}: {extended.shape[1] - segment.shape[1]} memories prepended, "
          f"{int(memory['count'][0])} stored, next-token guess {int(jnp.argmax(logits[0]))}")
