"""The public memory-processing primitives, one module per op."""
from .gather import gather
from .indexer import indexer
from .relevancy import relevancy
from .sparse_attention import sparse_attention
from .summarize import summarize
from .topk import topk

__all__ = ["topk", "gather", "summarize", "relevancy", "indexer", "sparse_attention"]
