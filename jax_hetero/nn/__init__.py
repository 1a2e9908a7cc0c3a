"""Flax NNX modules: the recipe-driven attention layer, a small decoder LM and retrieval memory."""
from .attention import SparseAttention, causal_attention, rope
from .decoder import Decoder, DecoderConfig, generate
from .memory import RetrievalMemory

__all__ = ["SparseAttention", "Decoder", "DecoderConfig", "generate", "RetrievalMemory", "rope", "causal_attention"]
