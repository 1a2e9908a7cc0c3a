"""Profiles as a table, JSON and a stacked-bar chart."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..pipeline import STEPS
from .decode import StepProfile

COLOURS = {"prepare": "#4c72b0", "relevancy": "#dd8452", "retrieve": "#c44e52", "apply": "#55a868",
           "rest": "#bbbbbb"}


def context_label(tokens: int) -> str:
    return f"{tokens // 1024}K" if tokens % 1024 == 0 else str(tokens)


def table(profiles: Sequence[StepProfile]) -> str:
    """A markdown table: ms per decode step for each step and the memory-processing share."""
    head = ["recipe", "context", "backend", *STEPS, "rest of model", "total ms", "memory share",
            "whole step measured ms"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in profiles:
        cells = [p.recipe, context_label(p.context), p.backend,
                 *(f"{p.steps_ms[s]:.2f}" for s in STEPS), f"{p.rest_ms:.2f}", f"{p.total_ms:.2f}",
                 f"{100 * p.memory_share:.0f} %", f"{p.measured_ms:.2f}" if p.measured_ms == p.measured_ms else "-"]  # NaN: not measured
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def document(profiles: Sequence[StepProfile], command: str, png_name: str) -> str:
    """The markdown page of a profile run: method, machine, command, table, chart."""
    first = profiles[0]
    shares = [100 * p.memory_share for p in profiles if p.recipe in ("seer", "quest", "dsa")]
    return "\n".join([
        f"# Decode-step profile: {first.device}", "",
        f"Measured {first.date} with backend `{first.backend}`. Command: `{command}`", "",
        "Per decode step of the small decoder (`jax_hetero.profile.PROFILE_CONFIG`: 4 layers, hidden "
        "512, 8 query / 2 KV heads of 64, SwiGLU 1408, batch 1), the time of each memory-processing "
        "step summed over the layers, the rest of the model (embedding, norms, projections, MLP, "
        "head) and the share of the step spent in memory processing.  total = "
        "the sum of each step, timed jitted on its own with a layer's real memory" + dispatch_note(profiles) + ", and the rest "
        "of the model, timed as the decode step with attention's apply replaced by a stub; the "
        "last column times the whole jitted step (memory donated) as one call, as a check.  Best "
        "of several runs (see `jax_hetero/profile/decode.py`).  Budgets: 2048 tokens (seer blocks of 64, quest pages of "
        "16, dsa 64 index heads x 128).  rag and hmt feed the model's input instead: rag is timed "
        "per query (BM25 over a store of `context` synthetic Zipf words in 32-word documents, top-3, "
        "prompt assembly; rest = the decoder's prefill of the assembled prompt), hmt per segment "
        "of 512 tokens with `context / 512` segment memories (top-4; rest = the prefill of the "
        "segment with the memories prepended); see `jax_hetero/profile/retrieval.py`.", "",
        table(profiles), "",
        (f"Memory processing takes {min(shares):.0f}-{max(shares):.0f} % of the decode step across "
         f"the sparse-attention recipes here (the source paper reports 22-97 %); dense has no "
         f"relevancy or retrieval: its attention over the whole cache is its apply step."
         if shares else ""), "",
        retrieval_note(profiles),
        "The machine may be shared with other jobs: only the fastest of the runs counts, and the "
        "whole-step column checks the sum.", "",
        f"![stacked shares]({png_name})", ""])


def dispatch_note(profiles: Sequence[StepProfile]) -> str:
    """How the decode steps' own dispatch was handled (profiles before 2026-11-27 kept it)."""
    attention = [p for p in profiles if p.recipe not in ("rag", "hmt")]
    if not attention:
        return ""
    if all(p.dispatch_ms == 0.0 for p in attention):
        return (" (each such call includes one dispatch and sync, which the fused decode step does "
                "not pay per step: on a GPU the sum then exceeds the whole step)")
    low, high = min(p.dispatch_ms for p in attention), max(p.dispatch_ms for p in attention)
    return (f" less the time of an empty jitted call with the same memory ({low:.3f}-{high:.3f} ms: the "
            "dispatch and sync that the fused decode step does not pay per step)")


def retrieval_note(profiles: Sequence[StepProfile]) -> str:
    """The measured share of rag and hmt, with why it is small or large at these sizes."""
    shares = [100 * p.memory_share for p in profiles if p.recipe in ("rag", "hmt")]
    if not shares:
        return ""
    return (f"rag and hmt spend {min(shares):.0f}-{max(shares):.0f} % of their step in memory "
            "processing here: a store of at most 128K words (4K documents) or 256 segment memories "
            "is small, so the share depends on how fast this device runs the prefill of the "
            "assembled input; the source paper's RAG share comes from corpora of millions of "
            "documents.\n")


def from_json(text: str) -> list[StepProfile]:
    return [StepProfile.from_dict(item) for item in json.loads(text)]


def to_json(profiles: Sequence[StepProfile]) -> str:
    return json.dumps([p.to_dict() for p in profiles], indent=1)


def stacked_bars(profiles: Sequence[StepProfile], path: str | Path, title: str = "") -> Path:
    """PNG: one bar per (recipe, context), the decode step split into the four steps and the
    rest of the model, as shares of the step; the step's total time is written above."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{p.recipe}\n{context_label(p.context)}" for p in profiles]
    share = lambda ms, p: 100 * ms / p.total_ms if p.total_ms else 0.0
    parts = {**{s: [share(p.steps_ms[s], p) for p in profiles] for s in STEPS},
             "rest": [share(p.rest_ms, p) for p in profiles]}
    fig, ax = plt.subplots(figsize=(max(6.0, 0.75 * len(profiles) + 2), 4.8))
    bottom = [0.0] * len(profiles)
    for name, values in parts.items():
        ax.bar(labels, values, bottom=bottom, label=name if name != "rest" else "rest of model",
               color=COLOURS[name])
        bottom = [b + v for b, v in zip(bottom, values)]
    for x, p in enumerate(profiles):
        ax.text(x, max(bottom[x], 100) + 1, f"{p.total_ms:.1f} ms", ha="center", va="bottom", fontsize=7)
    ax.set_ylabel("% of the decode step")
    ax.set_ylim(0, 112)
    ax.set_title(title or "decode step: memory processing (4 steps) vs rest of model")
    ax.legend(fontsize=7, loc="lower right", framealpha=0.9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
