"""MemoryPipeline: the four memory-processing steps as named, replaceable, placeable functions.

A *recipe* (one per workload: seer, dsa, quest, rag, hmt, dense) implements the four steps

    prepare(memory, update)           -> memory      build/extend the searchable memory
    relevancy(memory, query)          -> scores      score every memory entry for the query
    retrieve(memory, scores)          -> selection   pick what to use (top-k, threshold, gather)
    apply(memory, query, selection)   -> output      use it (sparse attention, prompt, prepend)

and :class:`MemoryPipeline` runs them, passing each step the backend its placement says
("auto", "xla", "cpu", "cuda" or "fpga").  A placement plan is a plain dict
``{step name: backend}``; steps it leaves out use the pipeline's default backend, so model code
never changes when the placement does.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
from flax import nnx

from ..backends import BACKENDS

STEPS = ("prepare", "relevancy", "retrieve", "apply")

# What a step override receives: (recipe, *step arguments, backend=...) -> step result.
StepFunction = Callable[..., Any]


def check_plan(plan: Mapping[str, str] | None, default: str = "auto") -> tuple[tuple[str, str], ...]:
    """Validate a placement plan {step: backend}; return it as a static, hashable tuple."""
    if default not in BACKENDS:
        raise ValueError(f"MemoryPipeline: backend={default!r} is not one of {BACKENDS}")
    plan = dict(plan or {})
    for step, backend in plan.items():
        if step not in STEPS:
            raise ValueError(f"MemoryPipeline: plan names step {step!r}, not one of {STEPS}")
        if backend not in BACKENDS:
            raise ValueError(f"MemoryPipeline: plan[{step!r}]={backend!r} is not one of {BACKENDS}")
    return tuple((step, plan.get(step, default)) for step in STEPS)


class Recipe(nnx.Module):
    """A workload's four steps.  Subclasses set `name` and implement the steps.

    `shapes()` documents each step's inputs and outputs (used by ``describe`` and the docs).
    Steps take their backend as the keyword argument ``backend`` and must pass it to the
    public ops they call.
    """

    name = "recipe"

    def shapes(self) -> dict[str, str]:
        raise NotImplementedError

    def init_memory(self, batch: int):
        """The empty memory pytree for `batch` sequences (fixed shapes, preallocated)."""
        raise NotImplementedError

    def prepare(self, memory, update, *, backend: str):
        raise NotImplementedError

    def relevancy(self, memory, query, *, backend: str):
        raise NotImplementedError

    def retrieve(self, memory, scores, *, backend: str):
        raise NotImplementedError

    def apply(self, memory, query, selection, *, backend: str):
        raise NotImplementedError


class MemoryPipeline(nnx.Module):
    """Runs a recipe's four steps, each on the backend its placement names.

    Args:
      recipe: the workload (a :class:`Recipe`).
      plan: ``{step: backend}`` for any of ``STEPS``; e.g. the output of a placement planner,
        ``{"relevancy": "fpga", "retrieve": "fpga"}``.  Steps not named use `backend`.
      backend: the default backend of every step ("auto" follows ``jax_hetero.use_backend``).
      steps: ``{step: fn}`` replacing a recipe step; ``fn(recipe, *args, backend=...)``
        receives the same arguments as the recipe method it replaces.

    The pipeline holds no memory itself: memory is an explicit pytree (``init_memory``), so
    ``step`` is a pure function that ``jax.jit`` and ``lax.scan`` compose (donate the memory
    to update it in place).
    """

    def __init__(self, recipe: Recipe, *, plan: Mapping[str, str] | None = None,
                 backend: str = "auto", steps: Mapping[str, StepFunction] | None = None):
        if not isinstance(recipe, Recipe):
            raise TypeError(f"MemoryPipeline: recipe must be a jax_hetero.pipeline Recipe, "
                            f"got {type(recipe).__name__}; build one with make_recipe(name, ...)")
        for step in steps or {}:
            if step not in STEPS:
                raise ValueError(f"MemoryPipeline: steps names {step!r}, not one of {STEPS}")
        self.recipe = recipe
        self.default_backend = backend
        self.placement = check_plan(plan, backend)
        self.overrides = tuple(sorted((steps or {}).items()))

    @property
    def plan(self) -> dict[str, str]:
        """The placement in force: {step: backend} for every step."""
        return dict(self.placement)

    def backend_of(self, step: str) -> str:
        return self.plan[step]

    def with_plan(self, plan: Mapping[str, str] | None) -> "MemoryPipeline":
        """The same recipe (same parameters) under another placement."""
        return MemoryPipeline(self.recipe, plan=plan, backend=self.default_backend,
                              steps=dict(self.overrides))

    def with_step(self, step: str, fn: StepFunction) -> "MemoryPipeline":
        """The same pipeline with one step replaced by ``fn(recipe, *args, backend=...)``."""
        return MemoryPipeline(self.recipe, plan=self.plan, backend=self.default_backend,
                              steps={**dict(self.overrides), step: fn})

    def init_memory(self, batch: int = 1):
        return self.recipe.init_memory(batch)

    def run(self, step: str, *args):
        """Run one named step on its backend (inside a named scope, visible in profiles)."""
        fn = dict(self.overrides).get(step)
        with jax.named_scope(f"{self.recipe.name}.{step}"):
            if fn is not None:
                return fn(self.recipe, *args, backend=self.backend_of(step))
            return getattr(self.recipe, step)(*args, backend=self.backend_of(step))

    def prepare(self, memory, update):
        return self.run("prepare", memory, update)

    def relevancy(self, memory, query):
        return self.run("relevancy", memory, query)

    def retrieve(self, memory, scores):
        return self.run("retrieve", memory, scores)

    def apply(self, memory, query, selection):
        return self.run("apply", memory, query, selection)

    def select(self, memory, query):
        """Steps 2-3: what to use for this query."""
        return self.retrieve(memory, self.relevancy(memory, query))

    def step(self, memory, update, query):
        """All four steps for newly appended entries: returns (memory, output)."""
        memory = self.prepare(memory, update)
        return memory, self.apply(memory, query, self.select(memory, query))

    def describe(self) -> str:
        """A table of the steps: what each does (shapes) and where it runs."""
        shapes = self.recipe.shapes()
        rows = [f"{self.recipe.name} pipeline"]
        for step in STEPS:
            custom = " (replaced)" if step in dict(self.overrides) else ""
            rows.append(f"  {step:<10} [{self.backend_of(step)}]{custom}  {shapes[step]}")
        return "\n".join(rows)
