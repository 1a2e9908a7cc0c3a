"""Search every assignment of the four steps to the devices present and pick the fastest.

Per step and device the cost is the measured time of the step on that device (CPU, GPU:
``jax_hetero.profile``) or the modelled FPGA kernel time; moving data between the steps'
devices costs the link's transfer time.  The decode step is modelled as sequential:
rest of the model + steps + transfers.  Energy = active power x busy time of each device +
idle power x the rest of the step for every device the plan keeps awake.
"""
from __future__ import annotations

import dataclasses
import datetime
import itertools

import jax

from ..pipeline import STEPS
from ..profile import PROFILE_CONFIG, DEFAULT_OPTIONS, profile_decode
from .devices import Device, available_devices, transfer_seconds
from .workloads import Workload, attention_workload, check_rag_options, rag_workload

# rag: dense-embedding retrieval by default; "rag-bm25" / "rag-dense" name the variant
# (the same as options={"scoring": ...}).
RAG_ALIASES = {"rag-bm25": "bm25", "rag-dense": "dense"}
PLANNABLE = ("dense", "seer", "quest", "dsa", "rag", *RAG_ALIASES)
OBJECTIVES = ("time", "energy")


@dataclasses.dataclass
class StepChoice:
    step: str
    device: str
    seconds: float
    source: str
    bytes_in: int
    transfer_seconds: float
    why: str


@dataclasses.dataclass
class Placement:
    """The chosen assignment, its predicted cost, and the all-on-the-model-device baseline."""
    recipe: str
    context: int
    model_device: str
    steps: list[StepChoice]
    rest_seconds: float
    total_seconds: float
    energy_joules: float
    baseline_seconds: float
    baseline_energy_joules: float
    devices: dict[str, str]          # device -> its power figures and where they come from
    backends: dict[str, str]         # device -> op backend
    date: str = dataclasses.field(default_factory=lambda: datetime.date.today().isoformat())
    options: dict = dataclasses.field(default_factory=dict)  # the options planned (rag: scoring, k, ...)

    @property
    def unit(self) -> str:
        """What one predicted time covers: a decode step, or one rag query (+ its prefill)."""
        return "query" if self.recipe == "rag" else "decode step"

    @property
    def label(self) -> str:
        """The recipe, with rag's scoring variant."""
        return f"rag ({self.options.get('scoring')})" if self.recipe == "rag" else self.recipe

    @property
    def plan(self) -> dict[str, str]:
        """{step: backend}, ready for MemoryPipeline(plan=...) / Decoder(plan=...)."""
        return {c.step: self.backends[c.device] for c in self.steps}

    @property
    def recipe_options(self) -> dict:
        """Recipe options the plan needs: the FPGA runs relevancy+retrieve as one fused
        indexer call, so a plan using it builds the recipe with ``fused=True``.  rag also
        names its scoring (and, dense, the embedding size the FPGA kernel was planned for):
        ``make_recipe("rag", **placement.recipe_options)``."""
        fused = {"fused": True} if "fpga" in (c.device for c in self.steps) else {}
        if self.recipe == "rag":
            scoring = self.options["scoring"]
            extra = {"embed_dim": self.options["embed_dim"]} if scoring == "dense" else {}
            return {"scoring": scoring, "k": self.options["k"], **extra, **fused}
        return fused

    @property
    def speedup(self) -> float:
        return self.baseline_seconds / self.total_seconds

    @property
    def energy_ratio(self) -> float:
        return self.baseline_energy_joules / self.energy_joules

    def table(self) -> str:
        context = (f"context={self.context} (store words, {self.context // self.options['words_per_doc']} "
                   f"documents; times per query)" if self.recipe == "rag" else f"context={self.context}")
        rows = [f"placement for recipe={self.label} {context} "
                f"(model on {self.model_device}; {self.date}; FPGA figures modelled)",
                "| step | device | time ms | source | bytes in | transfer ms | why |",
                "|---|---|---|---|---|---|---|"]
        for c in self.steps:
            rows.append(f"| {c.step} | {c.device} | {c.seconds * 1e3:.3f} | {c.source} | {c.bytes_in:,} "
                        f"| {c.transfer_seconds * 1e3:.3f} | {c.why} |")
        rest = "rest of model (prefill of the prompt)" if self.recipe == "rag" else "rest of model"
        rows.append(f"| {rest} | {self.model_device} | {self.rest_seconds * 1e3:.3f} | measured | | | |")
        rows.append("")
        rows.append(f"predicted {self.unit}: {self.total_seconds * 1e3:.3f} ms, {self.energy_joules * 1e3:.2f} mJ; "
                    f"all on {self.model_device}: {self.baseline_seconds * 1e3:.3f} ms, "
                    f"{self.baseline_energy_joules * 1e3:.2f} mJ -> {self.speedup:.2f}x time, "
                    f"{self.energy_ratio:.2f}x energy")
        rows.append("power: " + "; ".join(f"{d} {src}" for d, src in self.devices.items()))
        return "\n".join(rows)

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(plan=self.plan, recipe_options=self.recipe_options, speedup=self.speedup,
                   energy_ratio=self.energy_ratio)
        return out


def measure_steps(recipe: str, context: int, device: Device, options: dict, config) -> tuple[dict, float]:
    """Seconds of each step (all layers; rag: one query) and of the rest of the model (rag:
    the prefill of the assembled prompt), measured on `device`."""
    with jax.default_device(device.jax_device):
        if recipe == "rag":
            from ..profile.retrieval import profile_rag
            prof = profile_rag(context, backend=device.backend, config=config, **options)
        else:
            prof = profile_decode(recipe, context, backend=device.backend, options=options, config=config)
    return {s: ms / 1e3 for s, ms in prof.steps_ms.items()}, prof.rest_ms / 1e3


def _feasible(assignment: dict[str, str], workload: Workload) -> str | None:
    """Why an assignment cannot run, or None."""
    on_fpga = {s for s, d in assignment.items() if d == "fpga"}
    if not on_fpga:
        return None
    if workload.fpga_indexer is None:
        return "no FPGA kernel for this recipe"
    if on_fpga != {"relevancy", "retrieve"}:
        return "the FPGA kernel fuses relevancy+retrieve; prepare and apply stay on CPU/GPU"
    return None


def _transfers(assignment: dict[str, str], workload: Workload, model: str) -> dict[str, tuple[int, float]]:
    """Bytes into each step from other devices, and their transfer seconds (one layer)."""
    w, a = workload, assignment
    moves = {
        "prepare": [(w.new_token_bytes, model)],
        "relevancy": [(w.query_bytes, model), (w.memory_delta_bytes, a["prepare"])],
        "retrieve": [(w.scores_bytes, a["relevancy"])],
        "apply": [(w.selection_bytes, a["retrieve"]), (w.selected_kv_bytes, model)],
    }
    out = {}
    for step, sources in moves.items():
        moved = [(b, src) for b, src in sources if src != a[step]]
        seconds = sum(transfer_seconds(b, src, a[step])[0] for b, src in moved)
        out[step] = (sum(b for b, _ in moved), seconds)
    back = transfer_seconds(w.output_bytes, a["apply"], model)[0]
    out["apply"] = (out["apply"][0], out["apply"][1] + back)
    return out


def plan_placement(recipe: str, context: int, *, devices: list[Device] | None = None,
                   options: dict | None = None, config=PROFILE_CONFIG,
                   measured: dict | None = None, objective: str = "time",
                   progress=None) -> Placement:
    """Measure, model and search: the best placement of `recipe`'s steps at `context`.

    objective: "time" (fastest decode step; energy breaks ties) or "energy".
    progress: optional callable(str) told what is being measured.

    measured: optional {device name: (step seconds dict, rest seconds)} to skip measuring
    (e.g. numbers taken on another machine); devices then only supplies power and backends.

    recipe "rag" (or "rag-dense" / "rag-bm25"): retrieval over a document store of `context`
    words, planned per query (its rest of the model: the prefill of the assembled prompt);
    options (defaults workloads.RAG_DEFAULTS): scoring ("dense" or "bm25"), k, embed_dim,
    words_per_doc.
    """
    if recipe not in PLANNABLE:
        raise ValueError(f"plan: recipe={recipe!r} cannot be planned; valid choices: {PLANNABLE}")
    if objective not in OBJECTIVES:
        raise ValueError(f"plan: objective={objective!r} is not one of {OBJECTIVES}")
    if recipe.startswith("rag"):
        options = dict(options or {})
        if recipe in RAG_ALIASES:
            scoring = options.setdefault("scoring", RAG_ALIASES[recipe])
            if scoring != RAG_ALIASES[recipe]:
                raise ValueError(f"plan: recipe={recipe!r} means scoring={RAG_ALIASES[recipe]!r}, but "
                                 f"options give scoring={scoring!r}; use recipe='rag' with the option")
        recipe, options = "rag", check_rag_options(options, context)
    else:
        options = dict(DEFAULT_OPTIONS.get(recipe, {}) if options is None else options)
    devices = devices or available_devices()
    config = dataclasses.replace(config, max_len=max(config.max_len, context))
    workload = (rag_workload(context, options) if recipe == "rag"
                else attention_workload(recipe, context, config, options))
    layers = workload.calls
    by_name = {d.name: d for d in devices}
    model = "gpu" if "gpu" in by_name else "cpu"

    costs: dict[str, dict[str, tuple[float, str]]] = {}
    rest = 0.0
    for device in devices:
        if device.name == "fpga":
            fpga = workload.fpga_seconds()
            if fpga is not None:
                costs["fpga"] = {"relevancy": (fpga * layers, "modelled"), "retrieve": (0.0, "modelled (fused)")}
            continue
        if progress and device.name not in (measured or {}):
            progress(f"measuring {recipe} at context {context} on {device.name} (backend {device.backend})")
        steps, rest_s = (measured or {}).get(device.name) or measure_steps(recipe, context, device, options, config)
        costs[device.name] = {s: (t, "measured") for s, t in steps.items()}
        if device.name == model:
            rest = rest_s

    def evaluate(assignment):
        transfers = _transfers(assignment, workload, model)
        busy = {d: 0.0 for d in by_name}
        total = rest
        busy[model] += rest
        for step in STEPS:
            t = costs[assignment[step]][step][0] + transfers[step][1] * layers
            busy[assignment[step]] += costs[assignment[step]][step][0]
            total += t
        awake = {model, *assignment.values()}
        energy = sum(by_name[d].active_w * busy[d] + by_name[d].idle_w * (total - busy[d]) for d in awake)
        return total, energy, transfers

    candidates = []
    for combo in itertools.product(list(costs), repeat=len(STEPS)):
        assignment = dict(zip(STEPS, combo))
        if any(step not in costs[dev] for step, dev in assignment.items()):
            continue
        if _feasible(assignment, workload) is None:
            candidates.append((evaluate(assignment)[:2], assignment))
    rank = (lambda c: c[0]) if objective == "time" else (lambda c: c[0][::-1])
    (total, energy), best = min(candidates, key=rank)
    baseline = {s: model for s in STEPS}
    base_total, base_energy, _ = evaluate(baseline)
    transfers = evaluate(best)[2]

    choices = []
    for step in STEPS:
        device = best[step]
        seconds, source = costs[device][step]
        others = [f"{d} {costs[d][step][0] * 1e3:.3f} ms ({costs[d][step][1]})"
                  for d in costs if d != device and step in costs[d]]
        why = f"best {objective} of all plans" + (f"; elsewhere: {', '.join(others)}" if others else "")
        if device == "fpga":
            why = "fused indexer kernel; " + why
        elif step in ("relevancy", "retrieve") and workload.fpga_note and "fpga" in by_name:
            why = f"{workload.fpga_note}; " + why
        bytes_in, t_in = transfers[step]
        choices.append(StepChoice(step, device, seconds, source, bytes_in * layers, t_in * layers, why))
    return Placement(recipe, context, model, choices, rest, total, energy, base_total, base_energy,
                     {d.name: f"{d.power_source} ({d.active_w:.0f} W active, {d.idle_w:.0f} W idle)" for d in devices},
                     {d.name: d.backend for d in devices},
                     options=options)
