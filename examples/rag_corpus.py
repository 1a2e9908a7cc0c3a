"""Retrieval-augmented generation over the small corpus shipped with jax_hetero.

BM25 (and the dense-embedding variant) picks the top documents for each question; the
assembled prompt (documents + question) goes through the decoder.  The decoder is random, so
its continuation is noise: the point is the pipeline.

    PYTHONPATH=. python examples/rag_corpus.py "How do bees find flowers?"
"""
import sys

import jax.numpy as jnp
import numpy as np

from jax_hetero.nn import Decoder, DecoderConfig, RetrievalMemory, generate
from jax_hetero.pipeline.rag import shipped_corpus

question = sys.argv[1] if len(sys.argv) > 1 else "How do bees find flowers?"
documents = shipped_corpus()
config = DecoderConfig(hidden_dim=128, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=32,
                       mlp_dim=256, max_len=2048)

for scoring in ("bm25", "dense"):
    memory = RetrievalMemory("rag", k=3, scoring=scoring, max_len=config.max_len)
    store = memory.build(documents)           # prepare: index build
    print(memory.pipeline.describe())
    prompt = memory.augment(store, [question])[0]   # relevancy, retrieve, apply
    text = bytes(prompt.astype(np.uint8)).decode()
    print(f"--- {scoring}: prompt of {len(prompt)} tokens ---\n{text}\n")

tokens, _, _ = generate(Decoder(config), jnp.asarray(prompt)[None], steps=8)
print("decoder continued with token ids", np.asarray(tokens[0]).tolist())
