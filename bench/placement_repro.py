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
                                    [--markdown docs/placement_repro.md] [--json PATH] [--no-cpu]

--gpu-profile PATH plans for a GPU + FPGA machine from the step times that `jax-hetero profile`
recorded on a GPU (e.g. docs/profile_gpu.json: the same measurement the planner makes live),
without a GPU here: only the contexts and recipes in that file, GPU power assumed.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import jax

from jax_hetero.__main__ import parse_tokens
from jax_hetero.placement import PLANNABLE, available_devices, fpga_device, plan_placement
from jax_hetero.placement.devices import GPU_ACTIVE_W, GPU_IDLE_W, Device
from jax_hetero.profile import device_name


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="16K,32K,64K,128K")
    parser.add_argument("--recipes", default="seer,quest,dsa,rag,rag-bm25")
    parser.add_argument("--markdown", metavar="PATH")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--no-cpu", action="store_true",
                        help="plan for GPU + FPGA only, as the paper does (the CPU is not measured)")
    parser.add_argument("--gpu-profile", metavar="PATH",
                        help="plan GPU + FPGA from a GPU profile's JSON instead of measuring here")
    args = parser.parse_args(argv)
    contexts = [parse_tokens(c) for c in args.contexts.split(",")]
    recipes = args.recipes.split(",")
    unknown = [r for r in recipes if r not in PLANNABLE]
    if unknown:
        parser.error(f"--recipes: {unknown} cannot be planned; valid choices: {', '.join(PLANNABLE)}")
    recorded = recorded_gpu_steps(args.gpu_profile) if args.gpu_profile else None
    if recorded:
        gpu_name = next(iter(recorded.values()))[2]
        devices = [Device("gpu", "auto", GPU_ACTIVE_W, GPU_IDLE_W, "assumed"), fpga_device()]
        header = (f"{datetime.date.today().isoformat()}; GPU steps measured on {gpu_name} by `jax-hetero "
                  f"profile` ({args.gpu_profile}); devices: gpu (power assumed {GPU_ACTIVE_W:.0f} W active, "
                  f"{GPU_IDLE_W:.0f} W idle), fpga (time, transfers and power modelled)")
    else:
        devices = [d for d in available_devices() if not (args.no_cpu and d.name == "cpu")]
        if args.no_cpu and not any(d.name == "gpu" for d in devices):
            parser.error("--no-cpu: JAX sees no GPU here, so nothing could be measured")
        header = (f"{datetime.date.today().isoformat()}, jax {jax.__version__}, measured on {device_name()}; "
                  f"devices: " + ", ".join(f"{d.name} (backend {d.backend}, power {d.power_source}: {d.active_w:.0f} W "
                                  f"active, {d.idle_w:.0f} W idle)" for d in devices)
                  + f"; 1-min load average at start {os.getloadavg()[0]:.1f}")
    print(header, flush=True)
    rows, results = [], []
    for recipe in recipes:
        for context in contexts:
            unit = "words" if recipe.startswith("rag") else "tokens"
            measured = None
            if recorded is not None:
                if (recipe, context) not in recorded:
                    continue
                steps, rest, _ = recorded[recipe, context]
                measured = {"gpu": (steps, rest)}
            print(f"[repro] {recipe} at {context} {unit} ...", file=sys.stderr, flush=True)
            p = plan_placement(recipe, context, devices=devices, measured=measured)
            results.append(p.to_dict())
            offloaded = ", ".join(f"{c.step}->{c.device}" for c in p.steps if c.device != p.model_device) or "none"
            unit = " words" if p.recipe == "rag" else ""
            rows.append(f"| {p.label} | {context:,}{unit} | {offloaded} | {p.baseline_seconds * 1e3:.2f} | "
                        f"{p.total_seconds * 1e3:.2f} | {p.speedup:.2f}x | {p.energy_ratio:.2f}x |")
            print(rows[-1], flush=True)
            write(args, header, rows, results)  # after every row: a run cut short keeps its rows
    print(table(rows, results))


def recorded_gpu_steps(path):
    """{(recipe, context): (step seconds, rest seconds, device)} from a GPU profile's JSON.  Its
    rag rows were timed with BM25 scoring, so they stand for rag-bm25."""
    with open(path) as f:
        profiles = json.load(f)
    if not any(p["device"].startswith("gpu") for p in profiles):
        sys.exit(f"--gpu-profile: {path} holds no GPU profile")
    return {("rag-bm25" if p["recipe"] == "rag" else p["recipe"], p["context"]):
            ({s: ms / 1e3 for s, ms in p["steps_ms"].items()}, p["rest_ms"] / 1e3, p["device"])
            for p in profiles if p["device"].startswith("gpu") and p["recipe"] != "hmt"}


def table(rows, results):
    device = results[0]["model_device"]
    return "\n".join([f"| recipe | context | steps moved off the {device} | all on {device} ms | planned ms | "
                      "speed-up | energy ratio |", "|---|---|---|---|---|---|---|", *rows])


def write(args, header, rows, results):
    if args.markdown:
        with open(args.markdown, "w") as f:
            source = (f" --gpu-profile {args.gpu_profile}" if args.gpu_profile else "") + (
                " --no-cpu" if args.no_cpu else "")
            f.write(f"Measured + modelled: {header}\n\nCommand: `python bench/placement_repro.py "
                    f"--contexts {args.contexts} --recipes {args.recipes}{source}`\n\n{table(rows, results)}\n")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)

if __name__ == "__main__":
    main()
