"""The Flax decoder: recipes replace dense attention inside a jitted lax.scan decode loop."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_hetero.nn import Decoder, DecoderConfig, generate

CONFIG = DecoderConfig(vocab_size=256, hidden_dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                       head_dim=16, mlp_dim=128, max_len=256)
FULL_BUDGET = {"quest": dict(page_size=16, budget=256), "seer": dict(block_size=32, budget=256),
               "dsa": dict(index_heads=8, index_dim=16, budget=256)}


@pytest.fixture(scope="module")
def dense_run():
    prompt = jnp.asarray(np.random.default_rng().integers(0, 256, (2, 150)), jnp.int32)
    model = Decoder(CONFIG, seed=3)
    tokens, logits, _ = generate(model, prompt, 6)
    return model, prompt, tokens, logits


def test_decode_loop_matches_a_fresh_prefill(dense_run):
    """The scan's cached decode gives the same logits as prefilling the whole sequence."""
    model, prompt, tokens, logits = dense_run
    full = jnp.concatenate([prompt, tokens[:, :-1]], axis=1)
    last, _ = model.prefill(model.init_memory(2), full)
    np.testing.assert_allclose(last, logits[-1], rtol=1e-4, atol=1e-4)
    assert tokens.shape == (2, 6) and logits.shape == (6, 2, 256)


@pytest.mark.parametrize("recipe", sorted(FULL_BUDGET))
def test_full_budget_recipe_reproduces_the_dense_model(dense_run, recipe):
    model, prompt, tokens, logits = dense_run
    sparse = model.with_recipe(recipe, FULL_BUDGET[recipe])
    sparse_tokens, sparse_logits, _ = generate(sparse, prompt, 6)
    np.testing.assert_array_equal(sparse_tokens, tokens)
    np.testing.assert_allclose(sparse_logits, logits, rtol=1e-4, atol=1e-4)


def test_same_seed_same_weights_whatever_the_recipe():
    dense = Decoder(CONFIG, seed=5)
    quest = dense.with_recipe("quest", dict(budget=64))
    assert np.array_equal(dense.layers[1].attention.query.kernel[...], quest.layers[1].attention.query.kernel[...])
    assert np.array_equal(dense.head.kernel[...], quest.head.kernel[...])


def test_small_budget_changes_the_output_but_runs(dense_run):
    model, prompt, tokens, logits = dense_run
    sparse = model.with_recipe("quest", dict(budget=32), plan={"relevancy": "xla"})
    sparse_tokens, sparse_logits, memory = generate(sparse, prompt, 4)
    assert sparse_tokens.shape == (2, 4) and np.isfinite(np.asarray(sparse_logits)).all()
    assert int(memory[0]["length"][0]) == 150 + 3


def test_too_long_inputs_name_max_len():
    model = Decoder(CONFIG)
    with pytest.raises(ValueError, match="a prompt of 300 tokens.*max_len=256"):
        model.prefill(model.init_memory(1), jnp.zeros((1, 300), jnp.int32))
    with pytest.raises(ValueError, match="a prompt of 250 tokens \\+ 10 steps.*max_len=256"):
        generate(model, jnp.zeros((1, 250), jnp.int32), 10)


def test_unknown_recipe_name():
    with pytest.raises(ValueError, match="recipe='sparse' is not an attention recipe; valid choices: \\('dense', 'seer', 'dsa', 'quest'\\)"):
        Decoder(CONFIG, recipe="sparse")


def test_decode_step_under_nnx_jit():
    model = Decoder(CONFIG, recipe="seer", recipe_options=dict(block_size=32, budget=64))
    memory = model.init_memory(1)
    _, memory = model.prefill(memory, jnp.arange(40, dtype=jnp.int32)[None])
    step = nnx.jit(lambda m, mem, t, p: m.decode_step(mem, t, p))
    logits, memory = step(model, memory, jnp.array([7], jnp.int32), jnp.int32(40))
    assert logits.shape == (1, 256) and int(memory[1]["length"][0]) == 41
