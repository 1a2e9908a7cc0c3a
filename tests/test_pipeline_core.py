"""MemoryPipeline: placement plans, replaceable steps, recipe registry, clear errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_hetero as jh
from jax_hetero.pipeline import (STEPS, AttentionShape, MemoryPipeline, RECIPES, make_recipe,
                                 recipe_options)

SHAPE = AttentionShape(num_heads=4, num_kv_heads=2, head_dim=16, hidden_dim=32, max_len=128)


def random_update(rng, t, position=0, shape=SHAPE, b=2):
    return {"k": jnp.asarray(rng.standard_normal((b, t, shape.num_kv_heads, shape.head_dim)), jnp.float32),
            "v": jnp.asarray(rng.standard_normal((b, t, shape.num_kv_heads, shape.head_dim)), jnp.float32),
            "hidden": jnp.asarray(rng.standard_normal((b, t, shape.hidden_dim)), jnp.float32),
            "position": jnp.int32(position)}


def test_plan_defaults_and_overrides():
    pipe = MemoryPipeline(make_recipe("quest", SHAPE, budget=32), plan={"retrieve": "xla"}, backend="auto")
    assert pipe.plan == {"prepare": "auto", "relevancy": "auto", "retrieve": "xla", "apply": "auto"}
    moved = pipe.with_plan({"apply": "xla"})
    assert moved.backend_of("apply") == "xla" and moved.backend_of("retrieve") == "auto"
    assert moved.recipe is pipe.recipe
    assert "quest pipeline" in pipe.describe() and all(step in pipe.describe() for step in STEPS)


def test_plan_placements_give_the_same_result():
    rng = np.random.default_rng()
    recipe = make_recipe("quest", SHAPE, budget=32)
    query = {"q": jnp.asarray(rng.standard_normal((2, 4, 16)), jnp.float32), "hidden": None}
    outs = []
    # backend "cpu" runs only in programs on the CPU device (its handler exists for no other).
    on_cpu = jax.default_backend() == "cpu" and jh.backends.has("topk", "cpu")
    for plan in ({}, {step: "xla" for step in STEPS}, {"retrieve": "cpu"} if on_cpu else {}):
        pipe = MemoryPipeline(recipe, plan=plan)
        memory = pipe.prepare(pipe.init_memory(2), random_update(np.random.default_rng(7), 100))
        outs.append(pipe.apply(memory, query, pipe.select(memory, query)))
    for out in outs[1:]:
        np.testing.assert_allclose(out, outs[0], rtol=1e-5, atol=1e-6)


def test_replaced_step_is_used():
    calls = []

    def first_blocks(recipe, memory, scores, *, backend):
        calls.append(backend)
        b, hkv, _ = scores.shape
        return jnp.broadcast_to(jnp.arange(2, dtype=jnp.int32), (b, hkv, 2))

    pipe = MemoryPipeline(make_recipe("quest", SHAPE, budget=32)).with_step("retrieve", first_blocks)
    memory = pipe.prepare(pipe.init_memory(2), random_update(np.random.default_rng(0), 64))
    selection = pipe.select(memory, {"q": jnp.ones((2, 4, 16))})
    assert calls == ["auto"] and selection.shape == (2, 2, 2)
    assert "(replaced)" in pipe.describe()


def test_step_is_jittable_and_donates():
    pipe = MemoryPipeline(make_recipe("seer", SHAPE, block_size=16, budget=64))
    rng = np.random.default_rng()
    memory = jax.jit(pipe.prepare)(pipe.init_memory(2), random_update(rng, 50))
    step = jax.jit(pipe.step, donate_argnums=0)
    memory, out = step(memory, random_update(rng, 1, position=50), {"q": jnp.ones((2, 4, 16)), "hidden": None})
    assert out.shape == (2, 4, 16) and int(memory["length"][0]) == 51


@pytest.mark.parametrize("plan, message", [
    ({"score": "cpu"}, "not one of ('prepare'"),
    ({"retrieve": "tpu"}, "plan['retrieve']='tpu' is not one of"),
])
def test_bad_plan_names_the_setting(plan, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("[", r"\[")):
        MemoryPipeline(make_recipe("dense", SHAPE), plan=plan)


def test_unknown_recipe_lists_choices():
    with pytest.raises(ValueError, match="unknown recipe 'flash'.*'seer'.*'dsa'.*'quest'.*'rag'.*'hmt'"):
        make_recipe("flash", SHAPE)
    with pytest.raises(TypeError, match="unknown option.*'topk'.*valid options"):
        make_recipe("quest", SHAPE, topk=4)
    assert set(RECIPES) == {"dense", "seer", "dsa", "quest", "rag", "hmt"}
    assert "page_size" in recipe_options("quest")


def test_not_a_recipe():
    with pytest.raises(TypeError, match="recipe must be a jax_hetero.pipeline Recipe"):
        MemoryPipeline("quest")
