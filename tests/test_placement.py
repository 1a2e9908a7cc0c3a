"""The placement planner: feasibility, transfer and energy accounting, and that its plan runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_hetero.fpga import timing_model
from jax_hetero.placement import Device, cpu_device, fpga_device, plan_placement, transfer_seconds
from jax_hetero.placement.workloads import attention_workload
from jax_hetero.profile import PROFILE_CONFIG
from conftest import needs_cpu_platform

pytestmark = needs_cpu_platform  # the planner measures and plans with the CPU as one device

CONTEXT = 16384


def _fake_gpu():
    return Device("gpu", "xla", 700.0, 70.0, "assumed", jax.devices("cpu")[0])


def _measured(cpu_relevancy=5e-3, gpu_relevancy=1e-3):
    steps = lambda rel: {"prepare": 1e-4, "relevancy": rel, "retrieve": 5e-4, "apply": 2e-4}
    return {"cpu": (steps(cpu_relevancy), 10e-3), "gpu": (steps(gpu_relevancy), 2e-3)}


def test_fpga_only_takes_the_fused_steps():
    placement = plan_placement("dsa", CONTEXT, devices=[cpu_device(), fpga_device()],
                               measured=_measured(cpu_relevancy=1.0))
    plan = placement.plan
    assert plan["relevancy"] == plan["retrieve"] == "fpga"
    assert plan["prepare"] != "fpga" and plan["apply"] != "fpga"
    fpga_rows = [c for c in placement.steps if c.device == "fpga"]
    assert all("modelled" in c.source for c in fpga_rows)
    expected = timing_model.indexer_time(**attention_workload("dsa", CONTEXT, PROFILE_CONFIG, {"budget": 2048}).fpga_indexer)
    assert fpga_rows[0].seconds == pytest.approx(expected * PROFILE_CONFIG.num_layers)


def test_slow_fpga_is_not_chosen_and_dense_never_uses_it():
    placement = plan_placement("dsa", CONTEXT, devices=[cpu_device(), fpga_device()],
                               measured=_measured(cpu_relevancy=1e-6))
    assert set(placement.plan.values()) == {"cpu"}
    assert placement.total_seconds == pytest.approx(placement.baseline_seconds)
    dense = plan_placement("dense", CONTEXT, devices=[cpu_device(), fpga_device()], measured=_measured())
    assert "fpga" not in dense.plan.values()


def test_transfers_are_charged_between_devices():
    devices = [cpu_device(), _fake_gpu()]
    # Relevancy much faster on the CPU, everything else equal: moving it costs the query and
    # the memory delta over PCIe, and the scores back.
    placement = plan_placement("quest", CONTEXT, devices=devices, measured=_measured(cpu_relevancy=1e-5))
    assert placement.model_device == "gpu"
    moved = {c.step: c for c in placement.steps}
    if placement.plan["relevancy"] == "cpu":
        assert moved["relevancy"].bytes_in > 0 and moved["relevancy"].transfer_seconds > 0
    step_sum = sum(c.seconds + c.transfer_seconds for c in placement.steps)
    assert placement.total_seconds == pytest.approx(placement.rest_seconds + step_sum)


def test_energy_objective_and_table_labels():
    placement = plan_placement("dsa", CONTEXT, devices=[cpu_device(), _fake_gpu(), fpga_device()],
                               measured=_measured(), objective="energy")
    assert placement.energy_joules <= placement.baseline_energy_joules + 1e-12
    text = placement.table()
    assert "FPGA figures modelled" in text and "fpga modelled" in text and "gpu assumed" in text
    assert set(placement.to_dict()["plan"]) == {"prepare", "relevancy", "retrieve", "apply"}


def test_transfer_model_directions():
    assert transfer_seconds(0, "gpu", "fpga")[0] == 0.0
    assert transfer_seconds(1 << 20, "gpu", "gpu")[0] == 0.0
    t_up, source = transfer_seconds(1 << 20, "gpu", "fpga")
    assert "modelled" in source and t_up == pytest.approx(timing_model.transfer_time(1 << 20, "gpu_to_fpga"))
    assert transfer_seconds(1 << 20, "cpu", "gpu")[1].startswith("assumed")


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"plan: recipe='bm25' cannot be planned; valid choices"):
        plan_placement("bm25", CONTEXT)
    with pytest.raises(ValueError, match=r"plan: objective='speed' is not one of"):
        plan_placement("dsa", CONTEXT, objective="speed", measured=_measured())


def test_measured_plan_runs_in_a_pipeline():
    """A real (small) measurement; then a plan using the FPGA drives the decoder unchanged
    and decodes the same tokens as the all-CPU placement."""
    from jax_hetero.nn import Decoder, DecoderConfig, generate
    config = DecoderConfig(vocab_size=64, hidden_dim=64, num_layers=1, num_heads=4, num_kv_heads=2,
                           head_dim=16, mlp_dim=128, max_len=1024)
    options = {"page_size": 16, "budget": 256}
    devices = [cpu_device(), fpga_device()]
    placement = plan_placement("quest", 1024, devices=devices, options=options, config=config)
    assert all(c.seconds >= 0 for c in placement.steps) and placement.rest_seconds >= 0

    slow_cpu = {"cpu": ({"prepare": 1e-4, "relevancy": 1.0, "retrieve": 1.0, "apply": 1e-4}, 1e-3)}
    offload = plan_placement("quest", 1024, devices=devices, options=options, config=config, measured=slow_cpu)
    assert offload.plan["retrieve"] == "fpga" and offload.recipe_options == {"fused": True}
    prompt = jnp.asarray(np.random.default_rng(0).integers(0, 64, (1, 300)), jnp.int32)
    outputs = []
    for plan, extra in ((offload.plan, offload.recipe_options), ({s: "cpu" for s in offload.plan}, {})):
        model = Decoder(config, recipe="quest", recipe_options={**options, **extra}, plan=plan)
        assert model.pipelines[0].plan == plan
        tokens, logits, _ = generate(model, prompt, steps=4)
        outputs.append((np.asarray(tokens), np.asarray(logits)))
    np.testing.assert_array_equal(outputs[0][0], outputs[1][0])
    np.testing.assert_allclose(outputs[0][1], outputs[1][1], rtol=1e-4, atol=1e-4)


# rag: retrieval over a document store, planned per query; context = words in the store.

RAG_WORDS = 16384  # 512 documents of 32 words


def test_rag_dense_maps_to_the_fused_dot_indexer():
    placement = plan_placement("rag", RAG_WORDS, devices=[cpu_device(), fpga_device()],
                               measured=_measured(cpu_relevancy=1.0))
    assert placement.recipe == "rag" and placement.options["scoring"] == "dense"
    assert placement.plan["relevancy"] == placement.plan["retrieve"] == "fpga"
    assert placement.recipe_options == {"scoring": "dense", "k": 3, "embed_dim": 256, "fused": True}
    fpga = {c.step: c for c in placement.steps}["relevancy"]
    # One call per query (not per layer): 512 float32 document embeddings of 256 dims, top-3.
    expected = timing_model.indexer_time("dot", num_entries=512, dim=256, heads=1, k=3, dtype="float32", rows=1)
    assert fpga.seconds == pytest.approx(expected) and fpga.source == "modelled"
    assert fpga.bytes_in == 256 * 4  # the query embedding; the store stays resident
    text = placement.table()
    assert "rag (dense)" in text and "512 documents" in text and "predicted query" in text
    assert "FPGA figures modelled" in text


@pytest.mark.parametrize("recipe, options, reason", [
    ("rag-bm25", None, "BM25 scoring has no FPGA kernel (CPU/GPU only)"),
    ("rag", {"scoring": "bm25"}, "BM25 scoring has no FPGA kernel (CPU/GPU only)"),
    ("rag", {"embed_dim": 512}, "embed_dim=512 exceeds the FPGA indexer's maximum 256"),
])
def test_rag_without_an_fpga_kernel_stays_on_cpu(recipe, options, reason):
    placement = plan_placement(recipe, RAG_WORDS, devices=[cpu_device(), fpga_device()], options=options,
                               measured=_measured(cpu_relevancy=1.0))
    assert "fpga" not in placement.plan.values()
    steps = {c.step: c for c in placement.steps}
    assert reason in steps["relevancy"].why and reason in steps["retrieve"].why
    assert "fused" not in placement.recipe_options


@pytest.mark.parametrize("recipe, options, message", [
    ("rag", {"scoring": "sparse"}, r"rag option scoring='sparse' is not one of \('bm25', 'dense'\)"),
    ("rag", {"top_k": 3}, r"unknown rag option\(s\) \['top_k'\]; valid options: \('scoring', 'k'"),
    ("rag", {"k": 0}, r"rag option k=0 must be a positive int"),
    ("rag-bm25", {"scoring": "dense"}, r"recipe='rag-bm25' means scoring='bm25'"),
    ("rag", {"k": 600}, r"holds 512 documents of words_per_doc=32, fewer than k=600"),
])
def test_rag_bad_settings(recipe, options, message):
    with pytest.raises(ValueError, match=message):
        plan_placement(recipe, RAG_WORDS, devices=[cpu_device()], options=options, measured=_measured())


def test_rag_plan_from_the_cli():
    from jax_hetero.__main__ import build_parser
    args = build_parser().parse_args(["plan", "--recipe", "rag-bm25", "--context", "16K"])
    assert args.recipe == "rag-bm25" and args.context == RAG_WORDS
    with pytest.raises(SystemExit):
        build_parser().parse_args(["plan", "--recipe", "rag-sparse"])


def test_rag_measured_plan_runs_in_a_pipeline():
    """A real (small) per-query measurement; then the plan using the FPGA drives the rag
    pipeline and retrieves the same documents, in the same prompt, as the all-CPU plan."""
    from jax_hetero.nn import DecoderConfig
    from jax_hetero.pipeline import MemoryPipeline, make_recipe
    from jax_hetero.pipeline.rag import shipped_corpus
    config = DecoderConfig(vocab_size=256, hidden_dim=64, num_layers=1, num_heads=4, num_kv_heads=2,
                           head_dim=16, mlp_dim=128, max_len=1024)
    devices = [cpu_device(), fpga_device()]
    placement = plan_placement("rag", 1024, devices=devices, config=config)
    assert all(c.seconds >= 0 for c in placement.steps) and placement.rest_seconds > 0
    assert {c.source for c in placement.steps if c.device == "cpu"} == {"measured"}

    slow_cpu = {"cpu": ({"prepare": 1e-4, "relevancy": 1.0, "retrieve": 1.0, "apply": 1e-4}, 1e-3)}
    offload = plan_placement("rag", 1024, devices=devices, config=config, measured=slow_cpu)
    assert offload.plan["relevancy"] == offload.plan["retrieve"] == "fpga"
    docs = shipped_corpus()
    questions = ["Why does bread dough rise with yeast?", "How do honey bees find flowers?"]
    outputs = []
    for plan, extra in ((offload.plan, {}), ({s: "cpu" for s in offload.plan}, {"fused": False})):
        pipe = MemoryPipeline(make_recipe("rag", **{**offload.recipe_options, **extra}), plan=plan)
        assert pipe.plan == plan
        store = pipe.prepare(None, docs)
        query = pipe.recipe.make_query(store, questions)
        outputs.append(pipe.apply(store, query, pipe.select(store, query)))
    for key in ("documents", "tokens", "length"):
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    assert "yeast" in docs[int(outputs[0]["documents"][0, 0])]


def test_gpu_power_reader_index_and_fallback(monkeypatch, tmp_path):
    from jax_hetero.placement import devices
    gpu = type("FakeGpu", (), {"id": 1})()
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert devices.nvml_index(gpu) == 5  # NVML counts every GPU, JAX only the visible ones
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert devices.nvml_index(gpu) == 1
    # Without pynvml, power comes from nvidia-smi; a fake one on PATH stands in for the driver.
    monkeypatch.setitem(__import__("sys").modules, "pynvml", None)
    fake = tmp_path / "nvidia-smi"
    fake.write_text("#!/bin/sh\necho 123.5\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert devices.power_reader(0)() == 123.5
    fake.write_text("#!/bin/sh\nexit 9\n")
    assert devices.power_reader(0) is None
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    assert devices.power_reader(0) is None
