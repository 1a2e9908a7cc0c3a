"""`jax-hetero demo`: decode with every recipe, check it against dense attention, and show
where the time of a decode step goes.  Sized to finish in about a minute on a 2-core CPU."""
from __future__ import annotations

import dataclasses
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from .. import build_info
from ..nn import Decoder, DecoderConfig, RetrievalMemory, generate
from ..pipeline.rag import shipped_corpus
from .decode import device_name, profile_decode
from .report import table

DEMO_CONFIG = DecoderConfig(vocab_size=256, hidden_dim=128, num_layers=2, num_heads=4,
                            num_kv_heads=2, head_dim=32, mlp_dim=256, max_len=8192)
SPARSE = {"seer": lambda budget: dict(block_size=64, budget=budget),
          "quest": lambda budget: dict(page_size=16, budget=budget),
          "dsa": lambda budget: dict(index_heads=16, index_dim=64, budget=budget)}


def say(message: str, out=sys.stdout):
    print(message, file=out, flush=True)


def prompt_tokens(length: int) -> jnp.ndarray:
    """The first `length` bytes of the shipped corpus, repeated as needed: [1, length]."""
    text = "\n\n".join(shipped_corpus()).encode("utf-8")
    text = (text * (length // len(text) + 1))[:length]
    return jnp.asarray(np.frombuffer(text, np.uint8).astype(np.int32))[None]


def run_demo(context: int = 2048, steps: int = 16, budget: int = 256, profile_context: int = 8192,
             recipes=("seer", "quest", "dsa"), backend: str = "auto", out=sys.stdout) -> dict:
    started = time.perf_counter()
    cpu = build_info()["backends"]["cpu"]
    say(f"jax-hetero demo | jax {jax.__version__} | {device_name()} | backend={backend} | "
        f"compiled CPU ops: {', '.join(cpu.get('ops', [])) or 'none'}", out)
    config = dataclasses.replace(DEMO_CONFIG, max_len=max(DEMO_CONFIG.max_len, context + steps))
    say(f"model: {config.num_layers} layers, hidden {config.hidden_dim}, {config.num_heads} query / "
        f"{config.num_kv_heads} KV heads of {config.head_dim}; prompt {context} tokens, {steps} "
        f"decode steps (one jitted lax.scan)", out)
    prompt = prompt_tokens(context)
    dense = Decoder(config, backend=backend)
    dense_tokens, dense_logits, _ = generate(dense, prompt, steps)

    say(f"\nagreement with dense attention ({steps} greedy tokens):", out)
    say(f"  {'recipe':<7} {'budget':>14} {'same tokens':>12} {'rel. logit error':>17}   "
        f"{'at full budget: max |logit diff|':>32}", out)
    results = {}
    for recipe in recipes:
        whole = -(-(context + steps) // 64) * 64  # the whole context, in blocks of 64
        full = dense.with_recipe(recipe, SPARSE[recipe](whole), backend=backend)
        _, full_logits, _ = generate(full, prompt, steps)
        sparse = dense.with_recipe(recipe, SPARSE[recipe](budget), backend=backend)
        tokens, logits, _ = generate(sparse, prompt, steps)
        same = int((tokens == dense_tokens).sum())
        first_step = slice(1, 2)  # the first decode step: identical inputs for both models
        error = float(jnp.linalg.norm(logits[first_step] - dense_logits[first_step])
                      / jnp.linalg.norm(dense_logits[first_step]))
        exact = float(jnp.abs(full_logits - dense_logits).max())
        results[recipe] = {"same_tokens": same, "relative_error": error, "full_budget_max_diff": exact}
        say(f"  {recipe:<7} {f'{budget} / {context}':>14} {f'{same}/{steps}':>12} {error:>17.3g}   "
            f"{exact:>32.2e}", out)

    say(f"\nwhere a decode step's time goes at {profile_context} tokens (ms per step, all layers):", out)
    profiles = []
    for recipe in ("dense",) + tuple(recipes):
        options = {} if recipe == "dense" else SPARSE[recipe](min(2048, profile_context // 4))
        profiles.append(profile_decode(recipe, profile_context, backend=backend, options=options,
                                       config=config, reps=5))
    say(table(profiles), out)

    store_memory = RetrievalMemory("rag", k=2, max_len=config.max_len)
    store = store_memory.build(shipped_corpus())
    question = "Why does bread rise?"
    prompt_text = bytes(store_memory.augment(store, [question])[0].astype(np.uint8)).decode()
    say(f"\nrag (BM25 over {len(store)} shipped paragraphs): {question!r} -> context starts "
        f"{prompt_text[:70]!r}...", out)
    hmt = RetrievalMemory("hmt", embed_dim=config.hidden_dim, slots=8, k=2)
    hmt_memory = hmt.init_memory(1)
    process = jax.jit(hmt.process_segment)
    segment = min(context, 1024) // 4
    for i in range(4):
        extended, hmt_memory = process(hmt_memory, dense.embed(prompt[:, i * segment:(i + 1) * segment]))
    say(f"hmt (compressed memory): 4 segments of {segment} tokens; the last went to the model as "
        f"{extended.shape[1]} embeddings (2 retrieved segment memories + {segment}), "
        f"{int(hmt_memory['count'][0])} memories stored", out)
    say(f"\ndone in {time.perf_counter() - started:.0f} s", out)
    return {"agreement": results, "profiles": [p.to_dict() for p in profiles]}
