"""Command line: ``jax-hetero <command>`` or ``python -m jax_hetero <command>``.

Commands live in COMMANDS: name -> Command(help, add_arguments, run).  Another module adds
one with ``register_command(name, help, add_arguments, run)`` (e.g. ``plan``).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Callable


@dataclasses.dataclass(frozen=True)
class Command:
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]


COMMANDS: dict[str, Command] = {}


def register_command(name: str, help: str, add_arguments, run) -> None:
    COMMANDS[name] = Command(help, add_arguments, run)


def parse_tokens(text: str) -> int:
    """'8K' / '8k' -> 8192, '1000' -> 1000."""
    text = text.strip().lower()
    try:
        return int(text[:-1]) * 1024 if text.endswith("k") else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 8K, 32K, 4096)") from None


def _csv(kind):
    return lambda text: [kind(part) for part in text.split(",") if part.strip()]


def _choices(valid):
    def parse(text):
        names = [part.strip() for part in text.split(",") if part.strip()]
        for name in names:
            if name not in valid:
                raise argparse.ArgumentTypeError(f"unknown recipe {name!r}; valid choices: {', '.join(valid)}")
        return names
    return parse


ATTENTION = ("dense", "seer", "quest", "dsa")
ALL_RECIPES = ATTENTION + ("rag", "hmt")
BACKEND_CHOICES = ("auto", "xla", "cpu", "cuda", "fpga")


# demo
def _demo_arguments(parser):
    parser.add_argument("--context", type=parse_tokens, default=2048, help="prompt tokens (default 2048)")
    parser.add_argument("--steps", type=int, default=16, help="decode steps (default 16)")
    parser.add_argument("--budget", type=int, default=256, help="token budget of the sparse recipes (default 256)")
    parser.add_argument("--profile-context", type=parse_tokens, default=8192,
                        help="context of the step breakdown (default 8K)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")


def _demo(args):
    from .profile.demo import run_demo
    run_demo(context=args.context, steps=args.steps, budget=args.budget,
             profile_context=args.profile_context, backend=args.backend)


# profile
def _profile_arguments(parser):
    parser.add_argument("--recipes", type=_choices(ALL_RECIPES), default=list(ALL_RECIPES),
                        help="comma-separated, from " + ", ".join(ALL_RECIPES))
    parser.add_argument("--contexts", type=_csv(parse_tokens), default=[8192, 32768, 131072],
                        help="comma-separated token counts (default 8K,32K,128K)")
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default="auto")
    parser.add_argument("--budget", type=int, default=2048, help="token budget of the sparse recipes")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per measurement (median)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write OUT.md, OUT.json and OUT.png (e.g. docs/profile_cpu)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-render the table, page and chart of an earlier run's JSON")


def _profile(args):
    from .profile import DEFAULT_OPTIONS, from_json, profile_decode
    from .profile.retrieval import profile_hmt, profile_rag
    if args.from_json:
        profiles = from_json(args.from_json.read_text())
    else:
        runs = [(r, c) for c in args.contexts for r in args.recipes]
        profiles = []
        for i, (recipe, context) in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {recipe} at {context} tokens ({args.backend})", file=sys.stderr, flush=True)
            if recipe in ("rag", "hmt"):
                run = profile_rag if recipe == "rag" else profile_hmt
                profiles.append(run(context, backend=args.backend, reps=args.reps))
                continue
            options = dict(DEFAULT_OPTIONS[recipe])
            if "budget" in options:
                options["budget"] = args.budget
            profiles.append(profile_decode(recipe, context, backend=args.backend, options=options, reps=args.reps))
    _write_profiles(profiles, args)


def _write_profiles(profiles, args):
    from .profile import document, stacked_bars, table, to_json
    print(table(profiles))
    if not args.out:
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not args.from_json:
        args.out.with_suffix(".json").write_text(to_json(profiles))
    png = stacked_bars(profiles, args.out.with_suffix(".png"),
                       title=f"decode step on {profiles[0].device} ({profiles[0].backend})")
    contexts = ",".join(sorted({f"{p.context // 1024}K" for p in profiles}, key=lambda c: int(c[:-1])))
    recipes = ",".join(dict.fromkeys(p.recipe for p in profiles))
    command = (f"jax-hetero profile --recipes {recipes} --contexts {contexts} "
               f"--backend {profiles[0].backend} --reps {args.reps} --out {args.out}")
    args.out.with_suffix(".md").write_text(document(profiles, command, png.name))
    print(f"wrote {args.out}.md, .json, .png", file=sys.stderr)


# quality
def _quality_arguments(parser):
    parser.add_argument("--context", type=parse_tokens, default=2048)
    parser.add_argument("--budgets", type=_csv(int), default=[64, 128, 256, 512, 1024, 2048])
    parser.add_argument("--prompts", type=int, default=3)


def _quality(args):
    from .profile.quality import markdown, relative_errors
    print(markdown(relative_errors(args.context, tuple(args.budgets), prompts=args.prompts), args.context))


register_command("demo", "decode with every recipe, compare with dense attention, show the step breakdown",
                 _demo_arguments, _demo)
register_command("profile", "time the four memory steps and the rest of a decode step (table, JSON, PNG)",
                 _profile_arguments, _profile)
register_command("quality", "relative error against dense attention as a function of the budget",
                 _quality_arguments, _quality)


# plan
def _plan_arguments(parser):
    from .placement.cli import add_arguments
    add_arguments(parser)


def _plan(args):
    from .placement.cli import run
    return run(args)


register_command("plan", "where each memory step should run: measured CPU/GPU, modelled FPGA, transfers, energy",
                 _plan_arguments, _plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jax-hetero", description="jax_hetero: memory processing for long-context inference")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.help, description=command.help))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return COMMANDS[args.command].run(args) or 0


if __name__ == "__main__":
    sys.exit(main())
