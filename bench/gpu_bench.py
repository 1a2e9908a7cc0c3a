"""CUDA backend benchmark: jax_hetero's CUDA handlers against jax.lax.top_k, torch.topk,
jnp.take and the jnp references, in one process on one GPU.

JAX work is timed as the slope between two jitted loops of different trip counts (dispatch
and launch of the loop cancel); each loop iteration runs the op on R different inputs, so
the L2 cache cannot hold them between calls.  torch is timed with CUDA events around CUDA-graph
replays.  Every figure is a median over repeated measurements.  The table is printed last.

    JAX_PLATFORMS=cuda python bench/gpu_bench.py [--quick] [--json out.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import time

import jax
import jax.numpy as jnp

import jax_hetero as jh
from jax_hetero import backends
from jax_hetero.ops.sparse_attention import sparse_attention_reference

ROTATE_BYTES = 256 << 20  # inputs per loop iteration cover at least this much memory


def _block(x):
    jax.tree_util.tree_map(lambda a: a.block_until_ready(), x)


def rotations(nbytes: int, limit: int = 8) -> int:
    return max(2, min(limit, math.ceil(ROTATE_BYTES / max(nbytes, 1))))


def time_jax(op, inputs, repeats=7, budget_s=0.25):
    """Median seconds per op(*inputs[j]) call, by the two-loop slope.

    Each call's inputs pass an optimization barrier together with a scalar that the previous
    call's output feeds, so the calls run one after another and none is hoisted out of the
    loop; per call, one fused scalar kernel runs besides the op.
    """
    r = len(inputs)

    def make(trips):
        def run(inputs):
            def body(_, chain):
                for args in inputs:
                    args, chain = jax.lax.optimization_barrier((args, chain))
                    # the barrier keeps XLA from computing only the element read below
                    out = jax.lax.optimization_barrier(op(*args))
                    chain = chain + jnp.ravel(jax.tree_util.tree_leaves(out)[0])[0].astype(jnp.float32) * 0.0
                return chain
            return jax.lax.fori_loop(0, trips, body, jnp.float32(0))
        return jax.jit(run)

    # Trip counts sized from one timed call so a measurement takes about budget_s.
    probe = make(1)
    _block(probe(inputs))
    t0 = time.perf_counter()
    _block(probe(inputs))
    once = max(time.perf_counter() - t0, 1e-6)
    small = 1
    large = int(min(max(small + 2, budget_s / once), 200))
    f_small, f_large = make(small), make(large)
    _block(f_small(inputs))
    _block(f_large(inputs))
    slopes = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        _block(f_small(inputs))
        t1 = time.perf_counter()
        _block(f_large(inputs))
        t2 = time.perf_counter()
        slopes.append(((t2 - t1) - (t1 - t0)) / ((large - small) * r))
    return statistics.median(slopes)


def time_torch(fn, inputs, repeats=21):
    """Median seconds per fn(x) call, with CUDA events around graph replays."""
    import torch
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        for x in inputs:  # warm up (allocations, kernels) outside the graph
            fn(x)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    per_replay = 4
    # thread_local: JAX's runtime threads may call CUDA (frees, event queries) while torch
    # captures; in the default global mode that invalidates the capture and the context.
    with torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local"):
        for _ in range(per_replay):
            for x in inputs:
                fn(x)
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e-3 / (per_replay * len(inputs)))
    return statistics.median(times)


def torch_available():
    try:
        import torch
        return torch.cuda.is_available()
    except Exception:
        return False


ROWS = []  # (section, case, impl, seconds, bytes, note)


def record(section, case, impl, seconds, nbytes=None, note=""):
    ROWS.append(dict(section=section, case=case, impl=impl, us=seconds * 1e6,
                     tbps=(nbytes / seconds / 1e12) if nbytes else None, note=note))
    tb = f"{nbytes / seconds / 1e12:6.2f} TB/s" if nbytes else ""
    print(f"  {section:9s} {case:34s} {impl:22s} {seconds * 1e6:11.1f} us  {tb} {note}", flush=True)


# ---------------------------------------------------------------- topk
TOPK_CASES = [  # rows, n, k, dtype
    (1, 131_072, 2048, "float32"), (64, 131_072, 2048, "float32"), (64, 131_072, 2048, "bfloat16"),
    (4, 1_048_576, 2048, "float32"), (256, 32_768, 64, "float32"), (64, 8192, 256, "float32"),
    (1, 10_000_000, 16, "float32"), (1, 10_000_000, 2048, "float32"),
    (1, 100_000_000, 16, "float32"), (1, 100_000_000, 2048, "float32"),
]


def parse_topk_cases(text):
    """"ROWSxN:K[:DTYPE],..." (e.g. "256x8192:256,64x8192:256:bfloat16") as TOPK_CASES rows."""
    cases = []
    for item in text.split(","):
        shape, k, *dtype = item.split(":")
        rows, n = shape.split("x")
        cases.append((int(rows), int(n), int(k), dtype[0] if dtype else "float32"))
    return cases


def bench_topk(opts):
    cases = opts.topk_cases or (TOPK_CASES[:6] if opts.quick else TOPK_CASES)
    for rows, n, k, dtype in cases:
        name = f"{rows}x{n:,} k={k} {dtype}"
        nbytes = rows * n * jnp.dtype(dtype).itemsize
        r = rotations(nbytes)
        keys = jax.random.split(jax.random.key(rows * 7 + n + k), r)
        xs = [jax.random.normal(key, (rows, n), jnp.float32).astype(dtype) for key in keys]
        full = jnp.full((rows,), n, jnp.int32)
        # correctness on the timed inputs: identical to lax.top_k
        v, i = jax.jit(lambda x: jh.topk(x, k, backend="cuda"))(xs[0])
        ev, ei = jax.jit(lambda x: jax.lax.top_k(x, k))(xs[0])
        ok = bool(jnp.array_equal(i, ei)) and bool(jnp.array_equal(v.view(jnp.uint16 if v.dtype.itemsize == 2 else jnp.uint32),
                                                                     ev.view(jnp.uint16 if v.dtype.itemsize == 2 else jnp.uint32)))
        note = "exact" if ok else "MISMATCH"
        t = time_jax(lambda x: jh.topk(x, k, lengths=full, backend="cuda"), [(x,) for x in xs])
        record("topk", name, "jax_hetero cuda", t, nbytes, note)
        if not opts.baselines:
            continue
        slow = rows * n >= 10_000_000 and k <= 16  # lax.top_k takes 15-155 ms here
        t = time_jax(lambda x: jax.lax.top_k(x, k),
                     [(x,) for x in xs[:1 if slow else r]], repeats=3 if slow else 7, budget_s=0.5)
        record("topk", name, "jax.lax.top_k", t, nbytes)
        if opts.torch:
            import torch
            txs = [torch.from_dlpack(x) for x in xs]
            t = time_torch(lambda x: torch.topk(x, k, dim=-1), txs)
            record("topk", name, "torch.topk", t, nbytes)
        del xs


# ---------------------------------------------------------------- gather
def bench_gather(opts):
    m, row_elems, count = 65_536, 1024, 65_536  # 2 KB bf16 rows (a KV page row), 128 MB gathered
    table = jax.random.normal(jax.random.key(1), (m, row_elems), jnp.bfloat16)
    r = 4
    idx = [jax.random.randint(jax.random.key(10 + j), (count,), 0, m, jnp.int32) for j in range(r)]
    nbytes = 2 * count * row_elems * 2  # read + write
    got = jh.gather(table, idx[0], backend="cuda")
    note = "exact" if bool(jnp.array_equal(got, jnp.take(table, idx[0], axis=0))) else "MISMATCH"
    name = f"{count:,} rows of 2 KB from {m:,}"
    for check in (False, True):  # the run-time index check costs a device-to-host sync
        t = time_jax(lambda tb, i: jh.gather(tb, i, backend="cuda", check_indices=check), [(table, i) for i in idx])
        record("gather", name, "jax_hetero cuda" + (", checked" if check else ""), t, nbytes, note)
    t = time_jax(lambda tb, i: jnp.take(tb, i, axis=0), [(table, i) for i in idx])
    record("gather", name, "jnp.take", t, nbytes)
    if opts.torch:
        import torch
        tt = torch.from_dlpack(table)
        t = time_torch(lambda i: torch.index_select(tt, 0, i), [torch.from_dlpack(i) for i in idx])
        record("gather", name, "torch.index_select", t, nbytes)


# ---------------------------------------------------------------- indexer (dsa)
def bench_indexer(opts):
    if not backends.has("indexer_dsa", "cuda"):
        print("  indexer_dsa: no CUDA handler, skipped")
        return
    b, h, di, n, k = 1, 64, 128, 131_072, 2048
    r = rotations(b * n * di * 2)
    name = f"dsa {h}x{di} bf16, {n:,} tok, top-{k}"
    sets = []
    for j in range(r):
        kq, kk, kw = jax.random.split(jax.random.key(100 + j), 3)
        sets.append((jax.random.normal(kq, (b, h, di), jnp.bfloat16), jax.random.normal(kk, (b, n, di), jnp.bfloat16),
                     jax.random.uniform(kw, (b, h), jnp.float32)))
    nbytes = b * n * di * 2
    full = jnp.full((b,), n, jnp.int32)
    q, keys, w = sets[0]
    v, i = jh.indexer(q, keys, k, kind="dsa", weights=w, backend="cuda")
    ev, _ = jh.indexer(q, keys, k, kind="dsa", weights=w, backend="xla")
    err = float(jnp.max(jnp.abs(v - ev)) / jnp.max(jnp.abs(ev)))
    record_note = f"max rel err {err:.1e}"
    t = time_jax(lambda q, kk, w: jh.indexer(q, kk, k, kind="dsa", weights=w, lengths=full, backend="cuda"), sets)
    record("indexer", name, "jax_hetero cuda (fused)", t, nbytes, record_note)
    if not opts.baselines:
        return
    t = time_jax(lambda q, kk, w: jh.indexer(q, kk, k, kind="dsa", weights=w, lengths=full, backend="xla"), sets)
    record("indexer", name, "einsum+relu+lax.top_k", t, nbytes)


# ---------------------------------------------------------------- sparse attention
def bench_attention(opts):
    if not backends.has("sparse_attention", "cuda"):
        print("  sparse_attention: no CUDA handler, skipped")
        return
    b, hq, hkv, d, n, kb, bs = 32, 32, 8, 128, 131_072, 64, 64
    if opts.quick:
        b = 4
    name = f"b={b} hq={hq} hkv={hkv} d={d} bf16 {n:,} ctx, {kb}x{bs}"
    kq, kk, kv = jax.random.split(jax.random.key(7), 3)
    q = jax.random.normal(kq, (b, hq, d), jnp.bfloat16)
    k = jax.random.normal(kk, (b, n, hkv, d), jnp.bfloat16)
    v = jax.random.normal(kv, (b, n, hkv, d), jnp.bfloat16)
    nb = n // bs
    # distinct blocks per (b, head): a random permutation prefix
    sel = [jnp.argsort(jax.random.uniform(jax.random.key(50 + j), (b, hkv, nb)), axis=-1)[..., :kb].astype(jnp.int32)
           for j in range(4)]
    nbytes = b * hkv * kb * bs * d * 2 * 2
    full = jnp.full((b,), n, jnp.int32)
    got = jh.sparse_attention(q, k, v, sel[0], block_size=bs, backend="cuda").astype(jnp.float32)
    want = sparse_attention_reference(q, k, v, sel[0], full, bs, d ** -0.5).astype(jnp.float32)
    err = float(jnp.max(jnp.abs(got - want)))
    run = lambda bk, check: (lambda q, k, v, s: jh.sparse_attention(
        q, k, v, s, block_size=bs, lengths=full, backend=bk, check_indices=check))
    for check in (False, True):  # the run-time index check costs a device-to-host sync
        t = time_jax(run("cuda", check), [(q, k, v, s) for s in sel])
        record("attention", name, "jax_hetero cuda" + (", checked" if check else ""), t, nbytes,
               f"max abs err {err:.1e}")
    # the jnp reference without the op's host-callback index check (needs no CPU platform)
    ref = lambda q, k, v, s: sparse_attention_reference(q, k, v, s, full, bs, d ** -0.5)
    t = time_jax(ref, [(q, k, v, s) for s in sel], repeats=3)
    record("attention", name, "gather+dense jnp", t, nbytes)


def summary():
    print("\n## CUDA backend benchmark", flush=True)
    print(f"device: {jax.devices()[0].device_kind}  jax {jax.__version__}  "
          f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}")
    print("| section | case | impl | µs | TB/s | vs ours | note |")
    print("|---|---|---|---|---|---|---|")
    ours = {}
    for row in ROWS:
        if row["impl"].startswith("jax_hetero"):
            ours.setdefault((row["section"], row["case"]), row["us"])  # the first: unchecked
    for row in ROWS:
        mine = ours.get((row["section"], row["case"]))
        ratio = f"{row['us'] / mine:.1f}x" if mine and not row["impl"].startswith("jax_hetero") else ""
        tb = f"{row['tbps']:.2f}" if row["tbps"] else ""
        print(f"| {row['section']} | {row['case']} | {row['impl']} | {row['us']:.1f} | {tb} | {ratio} | {row['note']} |")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer and smaller cases")
    parser.add_argument("--only", default="topk,gather,indexer,attention")
    parser.add_argument("--json")
    parser.add_argument("--no-baselines", action="store_true",
                        help="time only jax_hetero's kernels (topk, indexer), to compare two builds")
    parser.add_argument("--topk-cases", type=parse_topk_cases,
                        help='top-k shapes instead of the standard ones: "ROWSxN:K[:DTYPE],..."')
    args = parser.parse_args()
    opts = argparse.Namespace(quick=args.quick, torch=torch_available(), baselines=not args.no_baselines,
                              topk_cases=args.topk_cases)
    print(f"device {jax.devices()[0].device_kind}, torch {'yes' if opts.torch else 'no'}", flush=True)
    sections = {"topk": bench_topk, "gather": bench_gather, "indexer": bench_indexer, "attention": bench_attention}
    for name in args.only.split(","):
        try:
            sections[name](opts)
        except Exception as err:  # keep the other sections' numbers
            print(f"  {name}: FAILED {type(err).__name__}: {err}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(device=jax.devices()[0].device_kind, rows=ROWS), f, indent=1)
    summary()


if __name__ == "__main__":
    main()
