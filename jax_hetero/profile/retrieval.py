"""Step profiles of the recipes that feed the model's input: rag per query, hmt per segment.

"context" is the size of the memory in tokens (words of the document store for rag; the
history compressed into segment memories for hmt).  The rest of the model is the decoder's
prefill of what the recipe hands it (the assembled prompt, or the segment with its memories
prepended).  Each step and the prefill are timed jitted on their own (best of `reps`); rag's
prepare is the per-query host work (tokenizing the question, and embedding it for dense
scoring); the one-off index build is not part of a query.
"""
from __future__ import annotations

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..nn import Decoder, DecoderConfig
from ..pipeline import HMTRecipe, MemoryPipeline, RAGRecipe
from .decode import PROFILE_CONFIG, StepProfile, device_name
from .timing import best_seconds


@partial(jax.jit, static_argnums=(0,))
def _prefill_tokens(graphdef, state, tokens):
    model = nnx.merge(graphdef, state)
    return model.prefill(model.init_memory(tokens.shape[0]), tokens)[0]


@partial(jax.jit, static_argnums=(0,))
def _prefill_embeddings(graphdef, state, embeddings):
    model = nnx.merge(graphdef, state)
    return model.prefill(model.init_memory(embeddings.shape[0]), embeddings=embeddings)[0]


def _model(config: DecoderConfig, length: int, seed: int):
    return nnx.split(Decoder(dataclasses.replace(config, max_len=length), seed=seed))


def synthetic_documents(words: int, words_per_doc: int, rng, vocabulary: int = 5000):
    """Documents of Zipf-distributed synthetic words totalling `words` words."""
    ranks = np.arange(1, vocabulary + 1)
    probability = (1 / ranks) / (1 / ranks).sum()
    lexicon = np.array([f"w{i}" for i in range(vocabulary)])
    draw = lambda n: " ".join(lexicon[rng.choice(vocabulary, n, p=probability)])
    return [draw(words_per_doc) for _ in range(words // words_per_doc)], draw


def mean_word_bytes(vocabulary: int = 5000) -> float:
    """Expected UTF-8 bytes of one synthetic word with its separator (byte tokens per word)."""
    ranks = np.arange(1, vocabulary + 1)
    probability = (1 / ranks) / (1 / ranks).sum()
    return float((probability * np.array([len(f"w{i}") for i in range(vocabulary)])).sum() + 1)


def profile_rag(context: int, *, backend: str = "auto", k: int = 3, words_per_doc: int = 32,
                scoring: str = "bm25", embed_dim: int = 512, fused: bool = False,
                config: DecoderConfig = PROFILE_CONFIG, reps: int = 5, seed: int = 0) -> StepProfile:
    """rag per query over a store of `context` words (``context // words_per_doc`` documents);
    `scoring`, `embed_dim`, `fused` and `k` are the RAGRecipe options."""
    if context // words_per_doc < k:
        raise ValueError(f"profile: rag context={context} words makes {context // words_per_doc} documents "
                         f"of words_per_doc={words_per_doc}, fewer than k={k}; raise the context")
    rng = np.random.default_rng(seed)
    documents, draw = synthetic_documents(context, words_per_doc, rng)
    recipe = RAGRecipe(k=k, max_len=config.max_len, scoring=scoring, embed_dim=embed_dim, fused=fused)
    pipe = MemoryPipeline(recipe, backend=backend)
    store = pipe.prepare(None, documents)
    question = draw(8)
    t_prepare = best_seconds(lambda: recipe.make_query(store, [question])["terms"], reps)  # dense: + embedding
    query = recipe.make_query(store, [question])
    relevancy, retrieve, apply = jax.jit(pipe.relevancy), jax.jit(pipe.retrieve), jax.jit(pipe.apply)
    scores = relevancy(store, query)
    selection = retrieve(store, scores)
    assembled = apply(store, query, selection)
    prompt = assembled["tokens"][:, : int(assembled["length"][0])]
    graphdef, state = _model(config, prompt.shape[1], seed)
    steps = {"prepare": t_prepare,
             "relevancy": best_seconds(lambda: relevancy(store, query), reps),
             "retrieve": best_seconds(lambda: retrieve(store, scores), reps),
             "apply": best_seconds(lambda: apply(store, query, selection), reps)}
    rest = best_seconds(lambda: _prefill_tokens(graphdef, state, prompt), reps)
    return _profile("rag", context, backend, config, steps, rest)


def profile_hmt(context: int, *, backend: str = "auto", segment: int = 512, k: int = 4,
                config: DecoderConfig = PROFILE_CONFIG, reps: int = 5, seed: int = 0) -> StepProfile:
    rng = np.random.default_rng(seed)
    slots = max(context // segment, k)
    pipe = MemoryPipeline(HMTRecipe(embed_dim=config.hidden_dim, slots=slots, k=k, rngs=nnx.Rngs(seed)),
                          backend=backend)
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    memory = {"bank": normal(1, slots, config.hidden_dim), "count": jnp.full((1,), slots, jnp.int32)}
    query = {"segment": normal(1, segment, config.hidden_dim)}
    prepare = jax.jit(pipe.prepare)
    relevancy, retrieve, apply = jax.jit(pipe.relevancy), jax.jit(pipe.retrieve), jax.jit(pipe.apply)
    scores = relevancy(memory, query)
    selection = retrieve(memory, scores)
    extended = apply(memory, query, selection)
    graphdef, state = _model(config, extended.shape[1], seed)
    steps = {"prepare": best_seconds(lambda: prepare(memory, query), reps),
             "relevancy": best_seconds(lambda: relevancy(memory, query), reps),
             "retrieve": best_seconds(lambda: retrieve(memory, scores), reps),
             "apply": best_seconds(lambda: apply(memory, query, selection), reps)}
    rest = best_seconds(lambda: _prefill_embeddings(graphdef, state, extended), reps)
    return _profile("hmt", context, backend, config, steps, rest)


def _profile(recipe, context, backend, config, steps, rest) -> StepProfile:
    """A StepProfile from step and rest-of-model seconds (no whole-step measurement)."""
    steps_ms = {name: t * 1e3 for name, t in steps.items()}
    return StepProfile(recipe, context, backend, device_name(), config.num_layers, steps_ms,
                       rest * 1e3, sum(steps_ms.values()) + rest * 1e3, float("nan"))
