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
    head = ["recipe", "context", "backend", *STEPS, "rest of model", "total ms", "memory share"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for p in profiles:
        cells = [p.recipe, context_label(p.context), p.backend,
                 *(f"{p.steps_ms[s]:.2f}" for s in STEPS), f"{p.rest_ms:.2f}", f"{p.total_ms:.2f}",
                 f"{100 * p.memory_share:.0f} %"]
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


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
