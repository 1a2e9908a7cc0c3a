"""The memory-processing pipeline (prepare, relevancy, retrieve, apply) and one recipe per
workload of the source paper.  See docs/pipeline.md."""
from __future__ import annotations

import inspect

from flax import nnx

from .attention import AttentionRecipe, AttentionShape, DenseRecipe, dense_decode_attention
from .core import STEPS, MemoryPipeline, Recipe, check_plan
from .dsa import DSARecipe
from .hmt import HMTRecipe
from .quest import QuestRecipe
from .rag import DocumentStore, RAGRecipe
from .seer import SeerRecipe

# Recipes that replace a decoder layer's attention, and those that feed the model's input.
ATTENTION_RECIPES = {"dense": DenseRecipe, "seer": SeerRecipe, "dsa": DSARecipe, "quest": QuestRecipe}
RETRIEVAL_RECIPES = {"rag": RAGRecipe, "hmt": HMTRecipe}
RECIPES = {**ATTENTION_RECIPES, **RETRIEVAL_RECIPES}


def recipe_class(name: str):
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; valid choices: {tuple(RECIPES)}")
    return RECIPES[name]


def recipe_options(name: str) -> tuple[str, ...]:
    """The keyword parameters recipe `name` accepts."""
    params = inspect.signature(recipe_class(name).__init__).parameters
    return tuple(p for p in params if p not in ("self", "shape", "rngs"))


def make_recipe(name: str, shape: AttentionShape | None = None, *, rngs: nnx.Rngs | None = None,
                **options) -> Recipe:
    """Build recipe `name` with `options`.  Attention recipes ("dense", "seer", "dsa",
    "quest") need the layer's `shape`; "rag" and "hmt" take none."""
    cls = recipe_class(name)
    valid = recipe_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"recipe {name!r}: unknown option(s) {unknown}; valid options: {valid}")
    if "rngs" in inspect.signature(cls.__init__).parameters:
        options["rngs"] = rngs or nnx.Rngs(0)
    if name in ATTENTION_RECIPES:
        if shape is None:
            raise ValueError(f"recipe {name!r} needs the attention shape (AttentionShape)")
        return cls(shape, **options)
    return cls(**options)


__all__ = ["STEPS", "MemoryPipeline", "Recipe", "check_plan", "AttentionRecipe", "AttentionShape",
           "DenseRecipe", "SeerRecipe", "DSARecipe", "QuestRecipe", "RAGRecipe", "HMTRecipe",
           "DocumentStore", "ATTENTION_RECIPES", "RETRIEVAL_RECIPES", "RECIPES", "make_recipe",
           "recipe_options", "recipe_class", "dense_decode_attention"]
