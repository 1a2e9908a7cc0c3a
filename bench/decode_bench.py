"""Decode-step benchmark: the small decoder at 32K context, dense attention vs the quest and
dsa recipes on the compiled CPU backend and on the XLA (jnp reference) backend.

    PYTHONPATH=. python bench/decode_bench.py [--context 32K] [--reps 10] [--write docs/benchmarks.md]

Prints the device, the date, every configuration's decode-step time (best of --reps, after
a warm-up; memory donated, updated in place) and its ratio to the dense baseline measured in
the same run.  --write replaces the "## Decode step (CPU)" section of the given file.
"""
from __future__ import annotations

import argparse
import datetime
import os
import re
import sys
from pathlib import Path

import jax

from jax_hetero import build_info
from jax_hetero.__main__ import parse_tokens
from jax_hetero.profile import DEFAULT_OPTIONS, PROFILE_CONFIG, device_name, profile_decode

SECTION = "## Decode step (CPU)"
RUNS = [("dense", "xla"), ("quest", "cpu"), ("quest", "xla"), ("dsa", "cpu"), ("dsa", "xla")]


def measure(context: int, reps: int):
    results = []
    for i, (recipe, backend) in enumerate(RUNS, 1):
        print(f"[{i}/{len(RUNS)}] {recipe} on {backend} at {context} tokens", file=sys.stderr, flush=True)
        results.append(profile_decode(recipe, context, backend=backend, options=DEFAULT_OPTIONS[recipe], reps=reps))
    return results


def report(results, context: int, reps: int, load: tuple[float, float]) -> str:
    dense = results[0].measured_ms
    by_key = {(p.recipe, p.backend): p for p in results}
    c = PROFILE_CONFIG
    lines = [
        SECTION, "",
        f"Measured {datetime.date.today().isoformat()} on {device_name()}, jax {jax.__version__}, "
        f"CPU ops compiled: {len(build_info()['backends']['cpu'].get('ops', []))}. "
        f"Command: `PYTHONPATH=. python bench/decode_bench.py --context {context} --reps {reps}`.", "",
        f"One jitted decode step (batch 1) of the small decoder ({c.num_layers} layers, hidden "
        f"{c.hidden_dim}, {c.num_heads} query / {c.num_kv_heads} KV heads of {c.head_dim}, SwiGLU "
        f"{c.mlp_dim}) with {context} tokens in the KV cache; best of {reps} runs after a warm-up. "
        f"quest: pages of 16, budget 2048 tokens; dsa: 64 index heads x 128, top-2048 tokens. "
        f"The step columns (ms, all layers) are timed separately, less the dispatch of an empty "
        f"jitted call, as in docs/profile_cpu.md. 1-min load average {load[0]:.1f} at the start, "
        f"{load[1]:.1f} at the end: the machine may be shared with other jobs, so absolute times "
        f"are noisy; the ratios come from the same run.", "",
        "| recipe | backend | decode step ms | vs dense | vs same recipe on xla | prepare | relevancy | retrieve | apply | rest of model |",
        "|---|---|---|---|---|---|---|---|---|---|"]
    for p in results:
        xla = by_key.get((p.recipe, "xla"))
        vs_xla = speed(xla.measured_ms, p.measured_ms) if xla is not None and p.backend != "xla" else "-"
        vs_dense = "baseline" if p is results[0] else speed(dense, p.measured_ms)
        steps = " | ".join(f"{p.steps_ms[s]:.2f}" for s in ("prepare", "relevancy", "retrieve", "apply"))
        lines.append(f"| {p.recipe} | {p.backend} | {p.measured_ms:.2f} | {vs_dense} | {vs_xla} | {steps} | {p.rest_ms:.2f} |")
    verdict = all(by_key[(r, "cpu")].measured_ms < dense
                  and by_key[(r, "cpu")].measured_ms < by_key[(r, "xla")].measured_ms for r in ("quest", "dsa"))
    lines += ["", f"Bar (quest and dsa on the CPU backend faster than dense and than themselves on "
                  f"xla): {'met' if verdict else 'NOT met'}.", ""]
    return "\n".join(lines)


def speed(baseline_ms: float, ms: float) -> str:
    return f"{baseline_ms / ms:.2f}x faster" if ms <= baseline_ms else f"{ms / baseline_ms:.2f}x slower"


def write_section(path: Path, section: str):
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(SECTION)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section + "\n", text) if pattern.search(text) else text.rstrip() + "\n\n" + section + "\n"
    path.write_text(text)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--context", type=parse_tokens, default=32768)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--write", type=Path, default=None, help="markdown file whose section to replace")
    args = parser.parse_args(argv)
    start_load = os.getloadavg()[0]
    results = measure(args.context, args.reps)
    section = report(results, args.context, args.reps, (start_load, os.getloadavg()[0]))
    print(section)
    if args.write:
        write_section(args.write, section)


if __name__ == "__main__":
    main()
