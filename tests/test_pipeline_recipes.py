"""The attention recipes: exact at full budget, incremental memory updates, needles, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from jax_hetero.pipeline import AttentionShape, MemoryPipeline, dense_decode_attention, make_recipe

SHAPE = AttentionShape(num_heads=4, num_kv_heads=2, head_dim=16, hidden_dim=32, max_len=256)
FULL_BUDGET = {
    "quest": dict(page_size=16, budget=256),
    "seer": dict(block_size=32, budget=256),
    "seer-threshold": dict(block_size=32, threshold=1e-30),
    "dsa": dict(index_heads=8, index_dim=16, budget=256),
}


def build(key, **options):
    return make_recipe(key.split("-")[0], SHAPE, **options)


def random_update(rng, t, position=0, b=2):
    s = SHAPE
    normal = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)
    return {"k": normal(b, t, s.num_kv_heads, s.head_dim), "v": normal(b, t, s.num_kv_heads, s.head_dim),
            "hidden": normal(b, t, s.hidden_dim), "position": jnp.int32(position)}


def random_query(rng, b=2):
    return {"q": jnp.asarray(rng.standard_normal((b, SHAPE.num_heads, SHAPE.head_dim)), jnp.float32),
            "hidden": jnp.asarray(rng.standard_normal((b, SHAPE.hidden_dim)), jnp.float32)}


@pytest.mark.parametrize("key", sorted(FULL_BUDGET))
def test_full_budget_reproduces_dense_attention(key):
    rng = np.random.default_rng()
    pipe = MemoryPipeline(build(key, **FULL_BUDGET[key]))
    context = int(rng.integers(20, 250))
    memory = jax.jit(pipe.prepare)(pipe.init_memory(2), random_update(rng, context))
    query = random_query(rng)
    memory, out = jax.jit(pipe.step)(memory, random_update(rng, 1, context), query)
    expected = dense_decode_attention(query["q"], memory["k"], memory["v"], memory["length"])
    np.testing.assert_allclose(out, expected, rtol=2e-5, atol=2e-5, err_msg=f"context={context}")


@pytest.mark.parametrize("key, field", [("quest", "page_min"), ("quest", "page_max"),
                                        ("seer", "gate_keys"), ("dsa", "index_keys")])
def test_token_by_token_prepare_equals_bulk_prepare(key, field):
    rng = np.random.default_rng()
    pipe = MemoryPipeline(build(key, **FULL_BUDGET[key]))
    tokens = random_update(rng, 70)
    bulk = pipe.prepare(pipe.init_memory(2), tokens)
    prepare = jax.jit(pipe.prepare)
    part = lambda start, stop: {"k": tokens["k"][:, start:stop], "v": tokens["v"][:, start:stop],
                                "hidden": tokens["hidden"][:, start:stop], "position": jnp.int32(start)}
    memory = prepare(pipe.init_memory(2), part(0, 37))
    for t in range(37, 70):
        memory = prepare(memory, part(t, t + 1))
    np.testing.assert_allclose(memory[field], bulk[field], rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(memory["k"], bulk["k"])


def plant_needle(rng, memory, query, block_size):
    """A key per KV head at a random position that dominates that head's query group."""
    b, n = memory["length"].shape[0], int(memory["length"][0])
    q = np.asarray(query["q"]).reshape(b, SHAPE.num_kv_heads, -1, SHAPE.head_dim).sum(axis=2)
    positions = rng.integers(0, n, size=(b, SHAPE.num_kv_heads))
    k = np.array(memory["k"])
    for i in range(b):
        for h in range(SHAPE.num_kv_heads):
            k[i, positions[i, h], h] = 40.0 * q[i, h] / np.linalg.norm(q[i, h]) * np.sqrt(SHAPE.head_dim)
    return jnp.asarray(k), positions // block_size


@pytest.mark.parametrize("key, options, block_size", [
    ("quest", dict(page_size=16, budget=32), 16),
    ("seer", dict(block_size=32, budget=64), 32),
])
def test_needle_block_is_always_retrieved(key, options, block_size):
    rng = np.random.default_rng()
    pipe = MemoryPipeline(build(key, **options))
    for trial in range(5):
        context = int(rng.integers(100, 256))
        memory = pipe.prepare(pipe.init_memory(2), random_update(rng, context))
        query = random_query(rng)
        keys, needle_blocks = plant_needle(rng, memory, query, block_size)
        update = random_update(rng, context)
        memory = pipe.prepare(pipe.init_memory(2), {**update, "k": keys[:, :context]})
        selected = np.asarray(pipe.select(memory, query))
        for i in range(2):
            for h in range(SHAPE.num_kv_heads):
                assert needle_blocks[i, h] in selected[i, h], (trial, context, i, h)


def test_dsa_needle_token_is_always_retrieved():
    rng = np.random.default_rng()
    pipe = MemoryPipeline(build("dsa", index_heads=8, index_dim=16, budget=8))
    indexer = pipe.recipe.indexer
    for trial in range(8):
        context = int(rng.integers(50, 256))
        memory = pipe.prepare(pipe.init_memory(2), random_update(rng, context))
        query = random_query(rng)
        q, w = (np.asarray(x) for x in indexer.queries(query["hidden"]))
        if not (w > 0).any(axis=-1).all():
            continue  # with no positive head weight no key can score above zero
        keys = np.array(memory["index_keys"])
        needle = rng.integers(0, context, size=2)
        for i in range(2):
            # q_h . k = +1 for heads of positive weight and -1 for the others (index_dim > heads)
            best = np.linalg.pinv(q[i]) @ np.where(w[i] > 0, 1.0, -1.0)
            value = np.maximum(q[i] @ best, 0) @ w[i]
            assert value > 0
            others = np.maximum(keys[i, :context] @ q[i].T, 0) @ w[i]
            keys[i, needle[i]] = best * 4 * max(np.abs(others).max(), 1.0) / value
        memory = {**memory, "index_keys": jnp.asarray(keys)}
        scores = np.asarray(pipe.relevancy(memory, query))
        assert (scores.argmax(axis=-1) == needle).all()  # the premise: the needle dominates
        selected = np.asarray(pipe.select(memory, query))
        for i in range(2):
            assert (selected[i] == needle[i]).any(axis=-1).all(), (trial, context, i)


def test_seer_threshold_pads_with_minus_one():
    rng = np.random.default_rng()
    pipe = MemoryPipeline(build("seer", block_size=32, threshold=0.2))
    memory = pipe.prepare(pipe.init_memory(2), random_update(rng, 200))
    query = random_query(rng)
    scores = pipe.relevancy(memory, query)
    probability = np.asarray(jax.nn.softmax(scores * pipe.recipe.gate_dim ** -0.5, axis=-1))
    selected = np.asarray(pipe.retrieve(memory, scores))
    assert selected.shape == (2, 2, pipe.recipe.num_blocks)
    for i in range(2):
        for h in range(2):
            chosen = set(selected[i, h][selected[i, h] >= 0].tolist())
            assert chosen == set(np.flatnonzero(probability[i, h] > 0.2).tolist())


@pytest.mark.parametrize("name, options, message", [
    ("quest", dict(budget=512), r"quest: budget=512 tokens exceeds the context \(max_len=256"),
    ("quest", dict(budget=40), "not a multiple of block_size=16"),
    ("seer", dict(budget=64, threshold=0.1), "either budget .* or threshold"),
    ("seer", dict(threshold=1.5), r"threshold=1.5 must be a gate probability in \(0, 1\)"),
    ("seer", dict(gate_init="zeros"), "gate_init='zeros' is not one of"),
    ("dsa", dict(budget=300), "dsa: budget=300 tokens exceeds the context"),
    ("dsa", dict(key_dtype="int8"), r"dsa: key_dtype='int8' is not one of \('bfloat16'"),
    ("dsa", dict(key_dtype="fp8"), "dsa: key_dtype='fp8' is not one of"),
])
def test_bad_recipe_settings(name, options, message):
    with pytest.raises(ValueError, match=message):
        make_recipe(name, SHAPE, **options)


def test_mismatched_model_and_recipe_dimensions():
    from flax import nnx
    from jax_hetero.nn import SparseAttention
    other = AttentionShape(num_heads=4, num_kv_heads=2, head_dim=32, hidden_dim=32, max_len=256)
    with pytest.raises(ValueError, match="head_dim=32 but the model layer has head_dim=16"):
        SparseAttention(SHAPE, recipe=make_recipe("quest", other, budget=64), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="recipe='rag' is not an attention recipe"):
        SparseAttention(SHAPE, recipe="rag", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("key, options", [
    ("quest", dict(page_size=16, budget=64)),
    ("seer", dict(block_size=32, budget=64)),
    ("dsa", dict(index_heads=8, index_dim=16, budget=16)),
])
def test_fused_indexer_selects_the_same_as_relevancy_then_topk(key, options):
    rng = np.random.default_rng()
    separate = MemoryPipeline(build(key, **options))
    fused = MemoryPipeline(build(key, fused=True, **options))
    context = int(rng.integers(40, 250))
    memory = separate.prepare(separate.init_memory(2), random_update(rng, context))
    query = random_query(rng)
    expected = np.sort(np.asarray(separate.select(memory, query)), axis=-1)
    np.testing.assert_array_equal(np.sort(np.asarray(fused.select(memory, query)), axis=-1), expected)
    if jh.backends.has("indexer_" + {"seer": "dot"}.get(key, key), "fpga"):
        on_fpga = fused.with_plan({"retrieve": "fpga"})
        np.testing.assert_array_equal(np.sort(np.asarray(on_fpga.select(memory, query)), axis=-1), expected)


def test_fused_seer_needs_a_budget():
    with pytest.raises(ValueError, match="fused=True needs budget"):
        make_recipe("seer", SHAPE, threshold=0.1, fused=True)


@pytest.mark.parametrize("key_dtype", ["bfloat16", "float32", None])
def test_dsa_stores_its_indexer_keys_in_key_dtype(key_dtype):
    rng = np.random.default_rng()
    pipe = MemoryPipeline(build("dsa", index_heads=8, index_dim=16, budget=8, key_dtype=key_dtype))
    memory = pipe.prepare(pipe.init_memory(2), random_update(rng, 40))
    default = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    assert memory["index_keys"].dtype == jnp.dtype(key_dtype or default)
    assert pipe.select(memory, random_query(rng)).shape[-1] == 8

