"""Where the time of one decode step goes: the four memory steps and the rest of the model.

Method (per recipe, context length and backend):
  1. Build the decoder with the recipe and fill every layer's memory with `context - 1`
     random tokens (random keys, values and hidden states through the recipe's own
     prepare), so long contexts need no O(n^2) prefill.
  2. Time each step of layer 0's pipeline jitted on its own, with that layer's real memory
     and a decode query, less the time of an empty jitted call with the same memory
     (`dispatch_ms`: dispatch and sync, which the fused decode step does not pay per step);
     every layer has the same shapes, so a step costs `layers x` that.
  3. Time the rest of the model directly: the same decode step with attention's apply
     replaced by a stub that returns the query (the KV append stays; nothing is scored,
     selected or attended).
  4. total = steps + rest; the whole jitted decode step (memory donated, updated in place) is
     timed too and reported beside it as a check (`measured_ms`).
Each time is the best of `reps` synchronised runs after a warm-up (compilation excluded).
"""
from __future__ import annotations

import dataclasses
import datetime
import platform
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ..nn import Decoder, DecoderConfig
from ..pipeline import STEPS
from .timing import best_seconds, best_seconds_threaded, dispatch_seconds

# The decoder profiled by default: small enough for a laptop, large enough that the rest of
# the model is not negligible (about 11 M parameters in the layers).
PROFILE_CONFIG = DecoderConfig(vocab_size=256, hidden_dim=512, num_layers=4, num_heads=8,
                               num_kv_heads=2, head_dim=64, mlp_dim=1408, max_len=131_072)

DEFAULT_OPTIONS = {"dense": {}, "quest": dict(page_size=16, budget=2048),
                   "seer": dict(block_size=64, budget=2048), "dsa": dict(budget=2048)}


@dataclasses.dataclass
class StepProfile:
    recipe: str
    context: int
    backend: str
    device: str
    layers: int
    steps_ms: dict          # step -> ms per decode step, all layers
    rest_ms: float
    total_ms: float         # steps + rest
    measured_ms: float      # the whole decode step timed as one call
    dispatch_ms: float = 0.0  # taken off each separately timed step call (decode recipes)
    date: str = dataclasses.field(default_factory=lambda: datetime.date.today().isoformat())

    @property
    def memory_ms(self) -> float:
        return sum(self.steps_ms.values())

    @property
    def memory_share(self) -> float:
        """Fraction of the decode step spent in the four memory-processing steps."""
        return self.memory_ms / self.total_ms if self.total_ms else 0.0

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "memory_ms": self.memory_ms, "memory_share": self.memory_share}

    @classmethod
    def from_dict(cls, data: dict) -> "StepProfile":
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})


def device_name() -> str:
    device = jax.devices()[0]
    if device.platform == "cpu":
        return f"cpu ({platform.processor() or platform.machine()}, {jax.device_count()} device, " \
               f"{_cpu_count()} cores)"
    return f"{device.platform} ({device.device_kind})"


def _cpu_count() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


@partial(jax.jit, static_argnums=(0,), donate_argnums=(2,))
def _decode_step(graphdef, state, memory, token, position):
    logits, memory = nnx.merge(graphdef, state).decode_step(memory, token, position)
    return logits, memory


def random_tokens(rng, config: DecoderConfig, count: int, position: int, batch: int = 1):
    """A prepare update of `count` random tokens (keys, values, hidden states)."""
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    c = config
    return {"k": normal(batch, count, c.num_kv_heads, c.head_dim),
            "v": normal(batch, count, c.num_kv_heads, c.head_dim),
            "hidden": normal(batch, count, c.hidden_dim), "position": jnp.int32(position)}


def filled_memory(model: Decoder, context: int, rng):
    """Every layer's memory holding `context - 1` random tokens."""
    return [jax.jit(pipe.prepare)(pipe.init_memory(1), random_tokens(rng, model.config, context - 1, 0))
            for pipe in model.pipelines]


def profile_decode(recipe: str, context: int, *, backend: str = "auto", options: dict | None = None,
                   config: DecoderConfig = PROFILE_CONFIG, reps: int = 5, seed: int = 0) -> StepProfile:
    """Profile one decode step of `recipe` at `context` tokens on `backend`."""
    if context > config.max_len:
        raise ValueError(f"profile: context={context} exceeds the model's max_len={config.max_len}")
    options = dict(DEFAULT_OPTIONS.get(recipe, {}) if options is None else options)
    if "budget" in options:
        options["budget"] = min(options["budget"], context - context % options.get("page_size", options.get("block_size", 1)))
    config = dataclasses.replace(config, max_len=context)
    model = Decoder(config, recipe=recipe, recipe_options=options, backend=backend, seed=seed)
    rng = np.random.default_rng(seed)
    memory = filled_memory(model, context, rng)
    position = jnp.int32(context - 1)

    token = jnp.zeros((1,), jnp.int32)
    whole, memory = _time_decode_step(model, memory, token, position, reps)
    stub = _without_attention(model, backend)
    rest, _ = _time_decode_step(stub, stub.init_memory(1), token, position, reps)

    pipe, layer_memory = model.pipelines[0], memory[0]
    update = random_tokens(rng, config, 1, context - 1)
    query = {"q": jnp.asarray(rng.standard_normal((1, config.num_heads, config.head_dim)), jnp.float32),
             "hidden": jnp.asarray(rng.standard_normal((1, config.hidden_dim)), jnp.float32)}
    prepare = jax.jit(pipe.prepare, donate_argnums=0)
    t_prepare, layer_memory = best_seconds_threaded(lambda mem: prepare(mem, update), layer_memory, reps)
    relevancy, retrieve, apply = jax.jit(pipe.relevancy), jax.jit(pipe.retrieve), jax.jit(pipe.apply)
    scores = relevancy(layer_memory, query)
    selection = retrieve(layer_memory, scores)
    per_layer = {
        "prepare": t_prepare,
        "relevancy": best_seconds(lambda: relevancy(layer_memory, query), reps) if scores is not None else None,
        "retrieve": best_seconds(lambda: retrieve(layer_memory, scores), reps) if selection is not None else None,
        "apply": best_seconds(lambda: apply(layer_memory, query, selection), reps),
    }
    dispatch = dispatch_seconds(layer_memory, query, reps=reps)
    steps_ms = {step: 0.0 if t is None else max(t - dispatch, 0.0) * 1e3 * config.num_layers
                for step, t in per_layer.items()}
    return StepProfile(recipe, context, backend, device_name(), config.num_layers, steps_ms,
                       rest * 1e3, sum(steps_ms.values()) + rest * 1e3, whole * 1e3, dispatch_ms=dispatch * 1e3)


def _time_decode_step(model, memory, token, position, reps):
    graphdef, state = nnx.split(model)
    return best_seconds_threaded(lambda mem: _decode_step(graphdef, state, mem, token, position)[1], memory, reps)


def _return_query(recipe, memory, query, selection, *, backend):
    return query["q"]


def _without_attention(model: Decoder, backend: str) -> Decoder:
    """The same model whose attention does no memory processing: dense recipe (KV append
    only), with apply returning the query; what is left is the rest of the model."""
    stub = model.with_recipe("dense", backend=backend)
    for layer in stub.layers:
        layer.attention.pipeline = layer.attention.pipeline.with_step("apply", _return_query)
    return stub
