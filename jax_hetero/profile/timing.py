"""Wall-clock timing of jitted calls: median of repeated, synchronised runs."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import jax


def median_seconds(call: Callable[[], object], reps: int = 5, warmup: int = 1) -> float:
    """Median wall time of `call()` (which must return jax arrays) over `reps` runs."""
    for _ in range(warmup):
        jax.block_until_ready(call())
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_seconds_threaded(step: Callable[[object], object], state, reps: int = 5, warmup: int = 1):
    """Like `median_seconds` for a call that consumes its (donated) state and returns the
    next one: ``state = step(state)``.  Returns (seconds, final state)."""
    for _ in range(warmup):
        state = jax.block_until_ready(step(state))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        state = jax.block_until_ready(step(state))
        times.append(time.perf_counter() - start)
    return statistics.median(times), state
