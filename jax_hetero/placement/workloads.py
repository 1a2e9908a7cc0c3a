"""What each step of a recipe moves and what the FPGA kernel would do for it.

Sizes are per decode step and per layer for batch 1; the planner multiplies by layers.
"""
from __future__ import annotations

import dataclasses

from ..fpga import timing_model
from ..nn import DecoderConfig

F32, BF16 = 4, 2


@dataclasses.dataclass(frozen=True)
class Workload:
    """Per-layer data sizes (bytes) of one decode step and the FPGA indexer call, if any."""
    new_token_bytes: int      # model device -> prepare: the token's k, v and hidden state
    memory_delta_bytes: int   # prepare -> relevancy: memory rows appended for this token
    query_bytes: int          # model device -> relevancy: the query (and dsa head weights)
    scores_bytes: int         # relevancy -> retrieve
    selection_bytes: int      # retrieve -> apply: the chosen indices
    selected_kv_bytes: int    # model device -> apply, when apply runs elsewhere
    output_bytes: int         # apply -> model device
    fpga_indexer: dict | None  # timing_model.indexer_time arguments; None: no kernel for it

    def fpga_seconds(self) -> float | None:
        return None if self.fpga_indexer is None else timing_model.indexer_time(**self.fpga_indexer)


def attention_workload(recipe: str, context: int, config: DecoderConfig, options: dict) -> Workload:
    c = config
    token_kv = 2 * c.num_kv_heads * c.head_dim * F32
    new_token = token_kv + c.hidden_dim * F32
    query = c.num_heads * c.head_dim * F32
    output = c.num_heads * c.head_dim * F32
    group = c.num_heads // c.num_kv_heads
    if recipe == "dense":
        return Workload(new_token, 0, 0, 0, 0, context * token_kv, output, None)
    if recipe == "dsa":
        heads, dim = options.get("index_heads", 64), options.get("index_dim", 128)
        k = min(options.get("budget", 2048), context)
        indexer = dict(kind="dsa", num_entries=context, dim=dim, heads=heads, k=k, dtype="bfloat16", rows=1)
        return Workload(new_token, dim * BF16, heads * dim * F32 + heads * F32, context * F32, k * 4,
                        k * token_kv, output, indexer)
    block = options.get("page_size", options.get("block_size", 16 if recipe == "quest" else 64))
    blocks = -(-context // block)
    k_blocks = max(1, min(options.get("budget", 2048) // block, blocks))
    summaries = 2 if recipe == "quest" else 1
    dim = options.get("gate_dim") or c.head_dim
    kind = "quest" if recipe == "quest" else "dot"
    indexer = dict(kind=kind, num_entries=blocks, dim=dim, heads=group, k=k_blocks, dtype="bfloat16",
                   rows=c.num_kv_heads)
    # A summary row changes every token (the current block's running min/max or mean).
    delta = summaries * c.num_kv_heads * dim * BF16
    return Workload(new_token, delta, query, c.num_kv_heads * blocks * F32,
                    c.num_kv_heads * k_blocks * 4, k_blocks * block * token_kv,
                    output, indexer)
