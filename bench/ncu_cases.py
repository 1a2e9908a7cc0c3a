"""Run each benchmark shape of the bars once, for Nsight Compute to profile its kernels.

    ncu --clock-control none -k regex:'select_kernel|filter_kernel|scores_kernel|attention_mma' python bench/ncu_cases.py

(bench/gpu_check.sh, step ncu, adds the sections it reads.)

Compilation launches none of our kernels, so each case's kernels show up once in ncu's report,
in the order printed here.  NCU_CASES=a,b runs only the cases whose name contains a or b.
"""
import os

import jax
import jax.numpy as jnp

import jax_hetero as jh


def cases():
    key = jax.random.key(0)
    normal = lambda shape, dtype=jnp.float32: jax.random.normal(key, shape, jnp.float32).astype(dtype)
    for rows, n, k, dtype in [(1, 131_072, 2048, jnp.float32), (64, 131_072, 2048, jnp.float32),
                              (64, 131_072, 2048, jnp.bfloat16), (256, 32_768, 64, jnp.float32),
                              (64, 8192, 256, jnp.float32), (1, 10_000_000, 16, jnp.float32),
                              (1, 10_000_000, 2048, jnp.float32), (1, 100_000_000, 16, jnp.float32),
                              (1, 100_000_000, 2048, jnp.float32)]:
        yield (f"topk {rows}x{n} k={k} {jnp.dtype(dtype).name}",
               lambda s, k=k: jh.topk(s, k, backend="cuda"), (normal((rows, n), dtype),))
    yield ("indexer dsa 64x128 bf16 131072 k=2048",
           lambda q, w, keys: jh.indexer(q, keys, 2048, kind="dsa", weights=w, backend="cuda"),
           (normal((1, 64, 128), jnp.bfloat16), normal((1, 64)), normal((1, 131_072, 128), jnp.bfloat16)))
    b, hq, hkv, d, n, kb, bs = 32, 32, 8, 128, 131_072, 64, 64
    blocks = jnp.broadcast_to(jnp.arange(kb, dtype=jnp.int32) * (n // bs // kb), (b, hkv, kb))
    yield ("sparse_attention b32 hq32 hkv8 d128 bf16 64x64",
           lambda q, k_, v, i: jh.sparse_attention(q, k_, v, i, block_size=bs, backend="cuda", check_indices=False),
           (normal((b, hq, d), jnp.bfloat16), normal((b, n, hkv, d), jnp.bfloat16),
            normal((b, n, hkv, d), jnp.bfloat16), blocks))


if __name__ == "__main__":
    wanted = [w for w in os.environ.get("NCU_CASES", "").split(",") if w]
    for name, op, args in cases():
        if wanted and not any(w in name for w in wanted):
            continue
        f = jax.jit(op).lower(*args).compile()
        jax.block_until_ready(args)
        print("case:", name, flush=True)
        jax.block_until_ready(f(*args))
