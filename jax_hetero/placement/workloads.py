"""What each step of a recipe moves and what the FPGA kernel would do for it.

Sizes are per decode step and per layer for batch 1 (rag: per query); the planner
multiplies by the calls (layers; 1 for rag).
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
    calls: int = 1            # pipeline calls per decode step (layers) or per query (rag: 1)
    fpga_note: str | None = None  # why there is no FPGA kernel, where that is not obvious

    def fpga_seconds(self) -> float | None:
        return None if self.fpga_indexer is None else timing_model.indexer_time(**self.fpga_indexer)


# The FPGA indexer's widest key / embedding (HETERO_MAX_DIM in the kernels; timing_model checks it).
FPGA_MAX_DIM = 256
# Planning defaults of rag (docs/placement.md): dense retrieval with embeddings the FPGA
# kernel takes, top-3 of documents of 32 synthetic words, an 8-word question.
RAG_DEFAULTS = {"scoring": "dense", "k": 3, "embed_dim": FPGA_MAX_DIM, "words_per_doc": 32}
RAG_QUESTION_WORDS = 8


def check_rag_options(options: dict, context: int) -> dict:
    """RAG_DEFAULTS updated by `options`; clear errors for unknown or invalid settings."""
    from ..pipeline.rag import SCORINGS
    unknown = sorted(set(options) - set(RAG_DEFAULTS))
    if unknown:
        raise ValueError(f"plan: unknown rag option(s) {unknown}; valid options: {tuple(RAG_DEFAULTS)}")
    out = {**RAG_DEFAULTS, **options}
    if out["scoring"] not in SCORINGS:
        raise ValueError(f"plan: rag option scoring={out['scoring']!r} is not one of {SCORINGS}")
    for name in ("k", "embed_dim", "words_per_doc"):
        if not isinstance(out[name], int) or isinstance(out[name], bool) or out[name] < 1:
            raise ValueError(f"plan: rag option {name}={out[name]!r} must be a positive int")
    docs = context // out["words_per_doc"]
    if docs < out["k"]:
        raise ValueError(f"plan: rag context={context} words holds {docs} documents of "
                         f"words_per_doc={out['words_per_doc']}, fewer than k={out['k']}; "
                         f"raise the context (store words) or lower k")
    return out


def rag_workload(context: int, options: dict) -> Workload:
    """rag, per query: `context` = words in the document store, in documents of
    ``words_per_doc`` synthetic words (jax_hetero.profile.retrieval).  The store (BM25
    weights or document embeddings, document tokens) is built once and stays where it was
    built (the model device; for the FPGA, its embeddings resident in HBM), so a query moves
    only its own data.  Dense retrieval is one indexer(kind="dot") call over float32
    embeddings; BM25 scoring has no FPGA kernel."""
    from ..profile.retrieval import mean_word_bytes
    o = check_rag_options(options, context)
    docs, k, dim = context // o["words_per_doc"], o["k"], o["embed_dim"]
    word = mean_word_bytes()
    doc_tokens = round(o["words_per_doc"] * word)            # byte tokens of one document
    question = round(RAG_QUESTION_WORDS * word)
    prepared = dim * F32 if o["scoring"] == "dense" else RAG_QUESTION_WORDS * 4  # embedding or term ids
    indexer, note = None, None
    if o["scoring"] == "bm25":
        note = "BM25 scoring has no FPGA kernel (CPU/GPU only)"
    elif dim > FPGA_MAX_DIM:
        note = f"embed_dim={dim} exceeds the FPGA indexer's maximum {FPGA_MAX_DIM} (CPU/GPU only)"
    else:
        indexer = dict(kind="dot", num_entries=docs, dim=dim, heads=1, k=k, dtype="float32", rows=1)
    return Workload(new_token_bytes=question, memory_delta_bytes=prepared, query_bytes=0,
                    scores_bytes=docs * F32, selection_bytes=k * 4,
                    selected_kv_bytes=k * (doc_tokens + 1) * 4,  # the chosen documents' tokens + lengths
                    output_bytes=(k * doc_tokens + question) * 4 + 4, fpga_indexer=indexer,
                    calls=1, fpga_note=note)


def attention_workload(recipe: str, context: int, config: DecoderConfig, options: dict) -> Workload:
    c = config
    token_kv = 2 * c.num_kv_heads * c.head_dim * F32
    new_token = token_kv + c.hidden_dim * F32
    query = c.num_heads * c.head_dim * F32
    output = c.num_heads * c.head_dim * F32
    group = c.num_heads // c.num_kv_heads
    if recipe == "dense":
        return Workload(new_token, 0, 0, 0, 0, context * token_kv, output, None, c.num_layers)
    if recipe == "dsa":
        heads, dim = options.get("index_heads", 64), options.get("index_dim", 128)
        k = min(options.get("budget", 2048), context)
        indexer = dict(kind="dsa", num_entries=context, dim=dim, heads=heads, k=k, dtype="bfloat16", rows=1)
        return Workload(new_token, dim * BF16, heads * dim * F32 + heads * F32, context * F32, k * 4,
                        k * token_kv, output, indexer, c.num_layers)
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
                    output, indexer, c.num_layers)
