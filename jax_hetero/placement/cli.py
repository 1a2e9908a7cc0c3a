"""`jax-hetero plan`: measure, model and print the best placement of a recipe's steps."""
from __future__ import annotations

import json
import sys


def add_arguments(parser):
    from .planner import OBJECTIVES, PLANNABLE
    from ..__main__ import parse_tokens
    parser.add_argument("--recipe", choices=PLANNABLE, default="dsa",
                        help="rag = dense-embedding retrieval (rag-dense), rag-bm25 = BM25 scoring")
    parser.add_argument("--context", type=parse_tokens, default=131072,
                        help="tokens (e.g. 32K, 131072); rag: words in the document store")
    parser.add_argument("--objective", choices=OBJECTIVES, default="time")
    parser.add_argument("--no-fpga", action="store_true", help="plan without the (modelled) FPGA")
    parser.add_argument("--json", metavar="PATH", help="also write the placement as JSON")


def run(args):
    from .devices import available_devices
    from .planner import plan_placement
    progress = lambda message: print(f"[plan] {message} ...", file=sys.stderr, flush=True)
    placement = plan_placement(args.recipe, args.context, devices=available_devices(not args.no_fpga),
                               objective=args.objective, progress=progress)
    print(placement.table())
    target = ("MemoryPipeline(make_recipe('rag', **options), plan=...)" if placement.recipe == "rag"
              else "MemoryPipeline(plan=...) / Decoder(plan=...)")
    print(f"plan for {target}: {placement.plan}"
          + (f" with recipe options {placement.recipe_options}" if placement.recipe_options else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(placement.to_dict(), f, indent=2)
    return 0
