"""RetrievalMemory: the rag and hmt recipes as a Flax NNX module beside the decoder."""
from __future__ import annotations

from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx

from ..pipeline import RETRIEVAL_RECIPES, MemoryPipeline, make_recipe


class RetrievalMemory(nnx.Module):
    """Memory that feeds the model's input rather than its attention.

    - ``RetrievalMemory("rag", k=3, max_len=model max_len)``: ``store = build(texts)``, then
      ``augment(store, queries)`` returns prompts (retrieved documents + query) as token ids.
    - ``RetrievalMemory("hmt", embed_dim=..., slots=..., k=...)``: ``memory = init_memory(b)``,
      then ``process_segment(memory, segment)`` returns the segment with the retrieved memory
      embeddings prepended, and the memory with this segment's summary added.
    """

    def __init__(self, recipe: str, *, plan: Mapping[str, str] | None = None, backend: str = "auto",
                 rngs: nnx.Rngs | None = None, **options):
        if recipe not in RETRIEVAL_RECIPES:
            raise ValueError(f"RetrievalMemory: recipe={recipe!r} is not one of {tuple(RETRIEVAL_RECIPES)}")
        self.pipeline = MemoryPipeline(make_recipe(recipe, rngs=rngs, **options), plan=plan, backend=backend)

    @property
    def recipe(self):
        return self.pipeline.recipe

    def init_memory(self, batch: int = 1):
        return self.pipeline.init_memory(batch)

    def write(self, memory, update):
        return self.pipeline.prepare(memory, update)

    def read(self, memory, query):
        return self.pipeline.apply(memory, query, self.pipeline.select(memory, query))

    # rag
    def build(self, documents: Sequence[str]):
        """Index documents (rag): returns the document store."""
        return self.write(self.init_memory(), list(documents))

    def augment(self, store, queries: Sequence[str]) -> list[np.ndarray]:
        """Prompts for each query (rag): retrieved documents then the query, as token ids."""
        out = jax.jit(self.read)(store, self.recipe.make_query(store, list(queries)))
        tokens, lengths = np.asarray(out["tokens"]), np.asarray(out["length"])
        return [tokens[i, : lengths[i]] for i in range(len(queries))]

    # hmt
    def process_segment(self, memory, segment):
        """Read memories for `segment` [b, s, e], then remember it (hmt)."""
        extended = self.read(memory, {"segment": segment})
        return extended, self.write(memory, {"segment": segment})
