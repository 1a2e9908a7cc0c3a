"""CPU backend benchmark: our FFI handlers against the XLA baseline, measured in the same run.

    PYTHONPATH=. python bench/cpu_bench.py [--quick] [--json PATH]   (from the repository root)

Cases: topk (backend="cpu" vs jax.lax.top_k), sparse_attention (backend="cpu" vs the jnp
reference, backend="xla") and gather (backend="cpu" vs jnp.take) for a paged KV cache.
Every function is jitted and warmed up; inputs are generated once, outside the timing.
Baseline and ours alternate in short blocks so that a load change on a shared machine hits
both; each time is the median of many calls.  Prints the machine, the date, the jax version, one
line per case, and a markdown table last.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jax_hetero as jh
from jax_hetero import backends

TOPK_CASES = [  # rows, n, k
    (1, 1_048_576, 2048),
    (32, 131_072, 2048),
    (1, 4_194_304, 100),
    (64, 65_536, 16),
]
TOPK_BAR, ATTENTION_BAR = 3.0, 2.0


def machine() -> dict:
    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cpu = backends.module("cpu")
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "handler_threads": cpu.num_threads() if cpu is not None else None,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "command": "python " + " ".join(sys.argv),
    }


def time_pair(baseline, ours, args, reps: int, warmup: int = 3, block: int = 5):
    """Median seconds per call of each function over about `reps` calls, and the count.

    The two alternate in blocks of `block` calls whose first call is not counted: a load
    change on a shared machine hits both, and each is timed in its steady state (right
    after the other, XLA's or our worker threads may still be busy or asleep).
    """
    for _ in range(warmup):
        jax.block_until_ready(baseline(*args))
        jax.block_until_ready(ours(*args))
    times = ([], [])
    for _ in range(max(1, -(-reps // (block - 1)))):
        for fn, out in zip((baseline, ours), times):
            for call in range(block):
                start = time.perf_counter()
                jax.block_until_ready(fn(*args))
                if call:
                    out.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1]), len(times[0])


def reps_for(seconds_per_call: float, budget: float, low: int, high: int) -> int:
    return int(min(high, max(low, budget / max(seconds_per_call, 1e-6))))


def rough_time(fn, args) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    return time.perf_counter() - start


def bench_topk(quick: bool):
    results = []
    key = jax.random.PRNGKey(0)
    for rows, n, k in TOPK_CASES:
        scores = jax.random.normal(key, (rows, n), jnp.float32)
        baseline = jax.jit(lambda s, k=k: jax.lax.top_k(s, k))
        ours = jax.jit(lambda s, k=k: jh.topk(s, k, backend="cpu"))
        (bv, bi), (ov, oi) = baseline(scores), ours(scores)
        exact = bool(jnp.all(bi == oi)) and bool(jnp.all(bv == ov))
        per_call = rough_time(baseline, (scores,))
        reps = reps_for(per_call, 1.5 if quick else 6.0, 10 if quick else 30, 200)
        t_base, t_ours, reps = time_pair(baseline, ours, (scores,), reps)
        results.append(dict(op="topk", case=f"{rows} x {n:,} k={k}, float32", baseline="jax.lax.top_k",
                            baseline_ms=t_base * 1e3, ours_ms=t_ours * 1e3, reps=reps, bar=TOPK_BAR,
                            check="identical" if exact else "MISMATCH"))
        report(results[-1])
    return results


def bench_sparse_attention(quick: bool):
    b, hq, hkv, d, block_size, kb = 4, 32, 8, 128, 16, 256
    n = 16_384 if quick else 65_536
    keys = jax.random.split(jax.random.PRNGKey(1), 3)
    q = jax.random.normal(keys[0], (b, hq, d), jnp.float32)
    k = jax.random.normal(keys[1], (b, n, hkv, d), jnp.float32)
    v = jax.random.normal(keys[2], (b, n, hkv, d), jnp.float32)
    rng = np.random.default_rng(0)
    blocks = n // block_size
    indices = jnp.asarray(np.stack([[rng.choice(blocks, kb, replace=False) for _ in range(hkv)]
                                    for _ in range(b)]), jnp.int32)
    args = (q, k, v, indices)
    fn = lambda backend: jax.jit(lambda q, k, v, i: jh.sparse_attention(q, k, v, i, block_size=block_size,
                                                                        backend=backend))
    baseline, ours = fn("xla"), fn("cpu")
    error = float(jnp.max(jnp.abs(baseline(*args) - ours(*args))))
    reps = reps_for(rough_time(baseline, args), 2.0 if quick else 8.0, 5 if quick else 15, 60)
    t_base, t_ours, reps = time_pair(baseline, ours, args, reps)
    result = dict(op="sparse_attention",
                  case=f"b={b} hq={hq} hkv={hkv} d={d} n={n:,} block {block_size}, {kb} blocks, float32",
                  baseline="jnp reference (backend='xla')", baseline_ms=t_base * 1e3, ours_ms=t_ours * 1e3,
                  reps=reps, bar=ATTENTION_BAR, check=f"max abs err {error:.1e}")
    report(result)
    return [result]


def bench_gather(quick: bool):
    if not backends.has("gather", "cpu"):
        print("gather: no CPU handler in this build, skipped")
        return []
    pages, page_size, hkv, d = (1024 if quick else 4096), 16, 8, 128
    b, per_sequence = 4, 256
    table = jax.random.normal(jax.random.PRNGKey(2), (pages, page_size, hkv, d), jnp.float32)
    rng = np.random.default_rng(1)
    indices = jnp.asarray(np.stack([rng.choice(pages, per_sequence, replace=False) for _ in range(b)]),
                          jnp.int32)
    baseline = jax.jit(lambda t, i: jnp.take(t, i, axis=0))
    ours = jax.jit(lambda t, i: jh.gather(t, i, backend="cpu"))
    same = bool(jnp.all(baseline(table, indices) == ours(table, indices)))
    args = (table, indices)
    reps = reps_for(rough_time(baseline, args), 1.5 if quick else 6.0, 10 if quick else 30, 200)
    t_base, t_ours, reps = time_pair(baseline, ours, args, reps)
    mib = b * per_sequence * page_size * hkv * d * 4 / 2**20
    result = dict(op="gather", case=f"{b} x {per_sequence} pages of [{page_size}, {hkv}, {d}] from {pages:,}, "
                                    f"float32 ({mib:.0f} MiB out)",
                  baseline="jnp.take", baseline_ms=t_base * 1e3, ours_ms=t_ours * 1e3, reps=reps, bar=None,
                  check="identical" if same else "MISMATCH")
    report(result)
    return [result]


def report(r):
    r["ratio"] = r["baseline_ms"] / r["ours_ms"]
    r["bar_met"] = None if r["bar"] is None else r["ratio"] >= r["bar"]
    print(f"{r['op']:16s} {r['case']:70s} {r['baseline']}: {r['baseline_ms']:9.3f} ms   ours: "
          f"{r['ours_ms']:8.3f} ms   {r['ratio']:5.2f}x   ({r['check']}, median of {r['reps']})", flush=True)


def markdown(results) -> str:
    lines = ["| op | case | baseline | baseline ms | cpu backend ms | speed-up | bar |",
             "|---|---|---|---:|---:|---:|---|"]
    for r in results:
        bar = "–" if r["bar"] is None else f"≥{r['bar']:g}x: {'met' if r['bar_met'] else 'NOT met'}"
        lines.append(f"| {r['op']} | {r['case']} | {r['baseline']} | {r['baseline_ms']:.3f} | "
                     f"{r['ours_ms']:.3f} | {r['ratio']:.2f}x | {bar} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smaller attention/gather inputs, fewer repetitions")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    backends.require("topk", "cpu")
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores ({info['handler_threads']} handler threads), "
          f"load average {info['load_average_at_start']}")
    print(f"date: {info['date_utc']}   jax {info['jax']}   python {info['python']}")
    print(f"command: {info['command']}\n")
    results = bench_topk(args.quick) + bench_sparse_attention(args.quick) + bench_gather(args.quick)
    info["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(f"\nload average at end: {info['load_average_at_end']}\n")
    print(markdown(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
