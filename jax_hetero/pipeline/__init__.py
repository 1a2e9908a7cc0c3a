"""The memory-processing pipeline (prepare, relevancy, retrieve, apply) and one recipe per
workload of the source paper.  See docs/pipeline.md."""
from __future__ import annotations

import inspect

from flax import nnx

from .attention import AttentionRecipe, AttentionShape, DenseRecipe, dense_decode_attention
from .core import STEPS, MemoryPipeline, Recipe, check_plan
from .dsa import DSARecipe
from .quest import QuestRecipe
from .seer import SeerRecipe

# Recipes that replace a decoder layer's attention.
ATTENTION_RECIPES = {"dense": DenseRecipe, "seer": SeerRecipe, "dsa": DSARecipe, "quest": QuestRecipe}


def recipe_options(name: str) -> tuple[str, ...]:
    """The keyword parameters recipe `name` accepts."""
    params = inspect.signature(_recipe_class(name).__init__).parameters
    return tuple(p for p, spec in params.items() if spec.kind is inspect.Parameter.KEYWORD_ONLY
                 and p != "rngs" or (p == "block_size" and name == "dense"))


def _recipe_class(name: str):
    if name not in ATTENTION_RECIPES:
        raise ValueError(f"unknown attention recipe {name!r}; valid choices: {tuple(ATTENTION_RECIPES)}")
    return ATTENTION_RECIPES[name]


def make_recipe(name: str, shape: AttentionShape, *, rngs: nnx.Rngs | None = None, **options) -> AttentionRecipe:
    """Build attention recipe `name` ("dense", "seer", "dsa", "quest") for a layer's shape."""
    cls = _recipe_class(name)
    valid = recipe_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"recipe {name!r}: unknown option(s) {unknown}; valid options: {valid}")
    if "rngs" in inspect.signature(cls.__init__).parameters:
        options["rngs"] = rngs or nnx.Rngs(0)
    return cls(shape, **options)


__all__ = ["STEPS", "MemoryPipeline", "Recipe", "check_plan", "AttentionRecipe", "AttentionShape",
           "DenseRecipe", "SeerRecipe", "DSARecipe", "QuestRecipe", "ATTENTION_RECIPES",
           "make_recipe", "recipe_options", "dense_decode_attention"]
