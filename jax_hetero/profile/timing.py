"""Wall-clock timing of jitted calls: the best of repeated, synchronised runs.

The minimum, not the median: on a shared machine other processes only ever add time, so
the fastest run is the least disturbed estimate of what the computation itself costs.
"""
from __future__ import annotations

import time
from typing import Callable

import jax


def best_seconds(call: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    """Fastest wall time of `call()` (which must return jax arrays) over `reps` runs."""
    return best_seconds_threaded(lambda _: call(), None, reps, warmup)[0]


def best_seconds_threaded(step: Callable[[object], object], state, reps: int = 5, warmup: int = 1):
    """Like `best_seconds` for a call that consumes its (donated) state and returns the next
    one: ``state = step(state)``.  Returns (seconds, final state)."""
    for _ in range(warmup):
        state = jax.block_until_ready(step(state))
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state))
        best = min(best, time.perf_counter() - start)
    return best, state


def dispatch_seconds(*args, reps: int = 5) -> float:
    """Fastest wall time of an empty jitted call that takes `args`: the host dispatch and
    synchronisation that a step timed on its own pays, and a step inside a fused jitted
    program does not (tens of microseconds; on a GPU about as long as a small step)."""
    empty = jax.jit(lambda *a: jax.numpy.zeros((), jax.numpy.float32), keep_unused=True)
    return best_seconds(lambda: empty(*args), reps)

