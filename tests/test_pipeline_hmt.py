"""hmt: segment memories, attention-based relevancy, top-k or soft retrieval, prepending."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_hetero.nn import RetrievalMemory
from jax_hetero.pipeline import HMTRecipe, MemoryPipeline


def segments(rng, count, b=2, s=6, e=16):
    return [jnp.asarray(rng.standard_normal((b, s, e)), jnp.float32) for _ in range(count)]


def test_top_k_memories_are_the_best_scored_and_prepended():
    rng = np.random.default_rng()
    pipe = MemoryPipeline(HMTRecipe(embed_dim=16, slots=8, k=3))
    memory = pipe.init_memory(2)
    prepare = jax.jit(pipe.prepare)
    for segment in segments(rng, 5):
        memory = prepare(memory, {"segment": segment})
    query = {"segment": segments(rng, 1)[0]}
    scores = np.asarray(pipe.relevancy(memory, query))
    assert np.isneginf(scores[:, 5:]).all()  # empty slots never score
    selection = pipe.retrieve(memory, jnp.asarray(scores))
    expected = np.argsort(-scores[:, :5], axis=1)[:, :3]
    np.testing.assert_array_equal(np.asarray(selection["indices"]), expected)
    out = pipe.apply(memory, query, selection)
    assert out.shape == (2, 3 + 6, 16)
    np.testing.assert_allclose(out[:, :3], np.take_along_axis(np.asarray(memory["bank"]), expected[..., None], 1))
    np.testing.assert_array_equal(out[:, 3:], query["segment"])


def test_ring_keeps_the_most_recent_memories_and_soft_mix():
    rng = np.random.default_rng()
    pipe = MemoryPipeline(HMTRecipe(embed_dim=16, slots=4, k=2, soft=True))
    memory = pipe.init_memory(2)
    summaries = []
    for segment in segments(rng, 6):
        memory = pipe.prepare(memory, {"segment": segment})
        summaries.append(np.asarray(pipe.recipe.summarize(segment.mean(axis=1))))
    np.testing.assert_allclose(memory["bank"][:, 0], summaries[4], rtol=1e-6)  # slot 0 overwritten by #5
    query = {"segment": segments(rng, 1)[0]}
    scores = pipe.relevancy(memory, query)
    mixed = pipe.retrieve(memory, scores)["memories"]
    weights = np.asarray(jax.nn.softmax(scores, axis=-1))
    np.testing.assert_allclose(mixed[:, 0], np.einsum("bm,bme->be", weights, memory["bank"]), rtol=1e-5, atol=1e-6)


def test_empty_memory_retrieves_nothing():
    pipe = MemoryPipeline(HMTRecipe(embed_dim=16, slots=4, k=2))
    memory = pipe.init_memory(2)
    query = {"segment": jnp.ones((2, 3, 16))}
    selection = pipe.select(memory, query)
    assert (np.asarray(selection["indices"]) == -1).all() and not np.asarray(selection["memories"]).any()


def test_process_segment_module_and_errors():
    memory_module = RetrievalMemory("hmt", embed_dim=16, slots=4, k=2)
    memory = memory_module.init_memory(2)
    for segment in segments(np.random.default_rng(), 3):
        extended, memory = memory_module.process_segment(memory, segment)
    assert extended.shape == (2, 8, 16) and int(memory["count"][0]) == 3
    with pytest.raises(ValueError, match="k=5 exceeds slots=4"):
        HMTRecipe(embed_dim=16, slots=4, k=5)
    with pytest.raises(ValueError, match="segment must be \\[b, s, embed_dim=16\\]"):
        memory_module.process_segment(memory, jnp.ones((2, 3, 8)))
