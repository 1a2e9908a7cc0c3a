"""Planner predictions for the paper's attention workloads at 16K-128K contexts.

For each recipe and context: measure the steps on the devices present (CPU; GPU when there
is one), take the FPGA kernel's modelled time and the modelled transfers, and print the best
placement's predicted decode-step time and energy against running every step on the model's
device -- beside the source paper's reported range (1.04-2.2x speed, 1.11-4.7x energy vs
GPU only, measured there on a real GPU + U55C).  FPGA figures are MODELLED.

rag (dense-embedding retrieval; rag-bm25: BM25 scoring, no FPGA kernel) is planned per
query over a document store of `context` words; its time includes the prefill of the
assembled prompt (the rest of the model for rag).

    python bench/placement_repro.py [--contexts 16K,32K,64K,128K] [--recipes seer,quest,dsa,rag,rag-bm25]
                                    [--markdown docs/placement_repro.md] [--json PATH]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import jax

from jax_hetero.__main__ import parse_tokens
from jax_hetero.placement import PLANNABLE, available_devices, plan_placement
from jax_hetero.profile import device_name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="16K,32K,64K,128K")
    parser.add_argument("--recipes", default="seer,quest,dsa,rag,rag-bm25")
    parser.add_argument("--markdown", metavar="PATH")
    parser.add_argument("--json", metavar="PATH")
    args = parser.parse_args(argv)
    contexts = [parse_tokens(c) for c in args.contexts.split(",")]
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in PLANNABLE]
    if unknown:
        parser.error(f"--recipes: {unknown} cannot be planned; valid choices: {', '.join(PLANNABLE)}")
    devices = available_devices()
    header = (f"{datetime.date.today().isoformat()}, jax {jax.__version__}, measured on {device_name()}; "
              f"devices: " + ", ".join(f"{d.name} (backend {d.backend}, power {d.power_source})" for d in devices)
              + f"; 1-min load average at start {os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    rows, results = [], []
    for recipe in recipes:
        for context in contexts:
            unit = "words" if recipe.startswith("rag") else "tokens"
            print(f"[repro] {recipe} at {context} {unit} ...", file=sys.stderr, flush=True)
            p = plan_placement(recipe, context, devices=devices)
            results.append(p.to_dict())
            offloaded = ", ".join(f"{c.step}->{c.device}" for c in p.steps if c.device != p.model_device) or "none"
            unit = " words" if p.recipe == "rag" else ""
            rows.append(f"| {p.label} | {context:,}{unit} | {offloaded} | {p.baseline_seconds * 1e3:.2f} | "
                        f"{p.total_seconds * 1e3:.2f} | {p.speedup:.2f}x | {p.energy_ratio:.2f}x |")
            print(rows[-1], flush=True)
            write(args, header, rows, results)  # after every row: a run cut short keeps its rows
    print(table(rows, results))


def table(rows, results):
    device = results[0]["model_device"]
    return "\n".join([f"| recipe | context | steps moved off the {device} | all on {device} ms | planned ms | "
                      "speed-up | energy ratio |", "|---|---|---|---|---|---|---|", *rows])


def write(args, header, rows, results):
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(f"Measured + modelled: {header}\n\nCommand: `python bench/placement_repro.py "
                    f"--contexts {args.contexts} --recipes {args.recipes}`\n\n{table(rows, results)}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)

if __name__ == "__main__":
    main()
