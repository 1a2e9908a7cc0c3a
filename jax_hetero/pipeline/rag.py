"""rag: retrieval-augmented generation over a document store.

1. prepare    index build on the host: BM25 term weights [terms, docs] (see bm25.py), the
              documents' model tokens, and for the dense variant their embeddings [docs, e];
2. relevancy  "bm25": sum of the query terms' rows (``gather``) -> [b, docs];
              "dense": inner product of the query embedding with every document embedding
              (``relevancy(kind="dot")``) -> [b, docs];
3. retrieve   the top-``k`` documents (``topk``) -> [b, k]; with ``fused=True`` (dense only)
              steps 2-3 are one ``indexer(kind="dot")`` call in retrieve (scores never
              reach memory; the form the FPGA runs) and relevancy only passes the query on;
4. apply      context assembly: the chosen documents' tokens, best first, then the query's,
              packed without gaps into a prompt [b, capacity] with its length [b].

Parameters: ``k`` (documents per query, default 3), ``scoring`` ("bm25" or "dense"),
``k1``, ``b``, ``idf`` ("lucene" or "okapi") for BM25, ``max_len`` (the model's limit on the
assembled prompt), ``tokenizer`` (text -> model token ids; default UTF-8 bytes),
``embedder`` (text -> vector; default hashed character trigrams of ``embed_dim`` dims,
default 512; the FPGA indexer takes at most 256) and ``fused`` (see step 3).
"""
from __future__ import annotations

import zlib
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from .. import ops
from .bm25 import IDF_KINDS, BM25Index, bm25_scores, build_bm25, tokenize
from .core import Recipe

SCORINGS = ("bm25", "dense")
CORPUS = Path(__file__).with_name("corpus.txt")


def shipped_corpus() -> list[str]:
    """The small corpus shipped for examples and tests: 38 short paragraphs, one per topic."""
    return [p.strip() for p in CORPUS.read_text(encoding="utf-8").split("\n\n") if p.strip()]


def byte_tokens(text: str) -> list[int]:
    """Model token ids of a text: its UTF-8 bytes (vocabulary 256)."""
    return list(text.encode("utf-8"))


def hashed_embedding(text: str, dim: int = 512) -> np.ndarray:
    """A deterministic, model-free text embedding: L2-normalised hashed character trigrams
    of the words longer than three letters (so "rise" and "rises" overlap and short
    function words do not dominate)."""
    vector = np.zeros(dim, np.float32)
    for word in tokenize(text):
        if len(word) > 3:
            padded = f"<{word}>"
            for i in range(len(padded) - 2):
                vector[zlib.crc32(padded[i:i + 3].encode()) % dim] += 1.0
    norm = np.linalg.norm(vector)
    return vector / norm if norm else vector


@jax.tree_util.register_pytree_node_class
class DocumentStore:
    """The rag memory: device arrays as pytree leaves, texts and the index on the host."""

    def __init__(self, texts, index: BM25Index, doc_tokens, doc_lengths, embeddings):
        self.texts, self.index = tuple(texts), index
        self.token_counts = tuple(int(n) for n in np.asarray(doc_lengths))  # host copy: static sizes
        self.term_weights = None if index is None else jnp.asarray(index.term_weights)
        self.doc_tokens, self.doc_lengths, self.embeddings = doc_tokens, doc_lengths, embeddings

    def tree_flatten(self):
        return (self.term_weights, self.doc_tokens, self.doc_lengths, self.embeddings), (self.texts, self.index, self.token_counts)

    @classmethod
    def tree_unflatten(cls, aux, leaves):
        store = cls.__new__(cls)
        store.texts, store.index, store.token_counts = aux
        store.term_weights, store.doc_tokens, store.doc_lengths, store.embeddings = leaves
        return store

    def __len__(self):
        return len(self.texts)


class RAGRecipe(Recipe):
    name = "rag"

    def __init__(self, *, k: int = 3, scoring: str = "bm25", k1: float = 1.5, b: float = 0.75,
                 idf: str = "lucene", max_len: int = 4096,
                 tokenizer: Callable[[str], Sequence[int]] = byte_tokens,
                 embedder: Callable[[str], np.ndarray] | None = None, embed_dim: int = 512,
                 fused: bool = False):
        if scoring not in SCORINGS:
            raise ValueError(f"rag: scoring={scoring!r} is not one of {SCORINGS}")
        if fused and scoring != "dense":
            raise ValueError(f"rag: fused=True needs scoring='dense' (one indexer(kind='dot') call); "
                             f"BM25 scoring (scoring={scoring!r}) has no fused kernel")
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"rag: embed_dim={embed_dim!r} must be a positive int")
        if idf not in IDF_KINDS:
            raise ValueError(f"rag: idf={idf!r} is not one of {IDF_KINDS}")
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"rag: k={k!r} must be a positive int (documents per query)")
        self.k, self.scoring, self.k1, self.b, self.idf = k, scoring, k1, b, idf
        self.max_len, self.tokenizer, self.fused = max_len, tokenizer, fused
        self.embedder = embedder if embedder is not None else partial(hashed_embedding, dim=embed_dim)

    def shapes(self):
        score = ("sum of query-term rows of BM25 weights [terms, docs]" if self.scoring == "bm25"
                 else "query embedding . document embeddings [docs, e]")
        return {"prepare": "index build (host): BM25 weights, document tokens, embeddings",
                "relevancy": ("query embedding [b, e] passed on (scored in retrieve)" if self.fused
                              else f"{score} -> [b, docs]"),
                "retrieve": ("fused indexer: score + " if self.fused else "") + f"top-{self.k} documents -> [b, {self.k}]",
                "apply": f"prompt = {self.k} documents + query, packed -> [b, <= {self.max_len}]"}

    def init_memory(self, batch: int = 1):
        return None

    def prepare(self, memory, update, *, backend):
        """Index `update` (a list of texts) together with the documents already stored."""
        texts = (memory.texts if memory is not None else ()) + tuple(update)
        if not texts:
            raise ValueError("rag: the document store is empty; add at least one document")
        if self.k > len(texts):
            raise ValueError(f"rag: k={self.k} exceeds the {len(texts)} documents in the store; "
                             f"use k <= {len(texts)}")
        tokens = [list(self.tokenizer(t + "\n")) for t in texts]  # newline separates documents
        lengths = np.array([len(t) for t in tokens], np.int32)
        padded = np.zeros((len(texts), max(lengths.max(), 1)), np.int32)
        for i, t in enumerate(tokens):
            padded[i, : len(t)] = t
        index = build_bm25([tokenize(t) for t in texts], k1=self.k1, b=self.b, idf=self.idf)
        embeddings = (jnp.asarray(np.stack([self.embedder(t) for t in texts]), jnp.float32)
                      if self.scoring == "dense" else None)
        return DocumentStore(texts, index, jnp.asarray(padded), jnp.asarray(lengths), embeddings)

    def context_capacity(self, store: DocumentStore) -> int:
        """The longest the k retrieved documents can be together (host-known)."""
        return sum(sorted(store.token_counts)[-self.k:])

    def make_query(self, store: DocumentStore, texts: Sequence[str]) -> dict:
        """Host-side query batch: term ids, embeddings and model tokens of each text.

        Errors when a query and its retrieved context could exceed `max_len`.
        """
        if not len(texts):
            raise ValueError("rag: make_query needs at least one query text")
        words = [tokenize(t) for t in texts]
        tokens = [list(self.tokenizer(t)) for t in texts]
        room = self.max_len - self.context_capacity(store)
        longest = max(len(t) for t in tokens)
        if longest > room:
            raise ValueError(f"rag: a query of {longest} tokens plus up to {self.max_len - room} "
                             f"tokens of the top-{self.k} documents exceeds max_len={self.max_len}; "
                             f"shorten the query, lower k, or raise max_len")
        width = max(len(w) for w in words) or 1
        token_array = np.zeros((len(texts), max(longest, 1)), np.int32)
        for i, t in enumerate(tokens):
            token_array[i, : len(t)] = t
        query = {"terms": jnp.asarray(np.stack([store.index.term_ids(w, width) for w in words])),
                 "tokens": jnp.asarray(token_array),
                 "length": jnp.asarray([len(t) for t in tokens], jnp.int32)}
        if self.scoring == "dense":
            query["embedding"] = jnp.asarray(np.stack([self.embedder(t) for t in texts]), jnp.float32)
        return query

    @staticmethod
    def _dot_operands(store, query):
        """The query embedding as one head [b, 1, e] and the documents as one KV head [b, docs, 1, e]."""
        q = query["embedding"][:, None, :]
        docs = jnp.broadcast_to(store.embeddings[None, :, None, :], (q.shape[0],) + store.embeddings.shape[:1] + (1, q.shape[-1]))
        return q, docs

    def relevancy(self, store, query, *, backend):
        if self.scoring == "bm25":
            return bm25_scores(store.term_weights, query["terms"], backend=backend)
        if self.fused:
            return {"embedding": query["embedding"]}
        return ops.relevancy(*self._dot_operands(store, query), kind="dot", backend=backend)[:, 0]

    def retrieve(self, store, scores, *, backend):
        if self.fused:
            return ops.indexer(*self._dot_operands(store, scores), self.k, kind="dot", backend=backend)[1][:, 0]
        return ops.topk(scores, self.k, backend=backend)[1]

    def apply(self, store, query, selection, *, backend):
        """Pack the selected documents (best first) and the query into one prompt per row."""
        parts = jnp.take(store.doc_tokens, selection, axis=0)            # [b, k, L]
        part_lengths = jnp.take(store.doc_lengths, selection, axis=0)    # [b, k]
        capacity = self.context_capacity(store) + query["tokens"].shape[1]
        starts = jnp.cumsum(part_lengths, axis=1) - part_lengths
        context_length = part_lengths.sum(axis=1)
        b = selection.shape[0]
        prompt = jnp.zeros((b, capacity), jnp.int32)
        rows = jnp.arange(b)[:, None, None]
        pos = jnp.arange(parts.shape[2])
        doc_slots = jnp.where(pos < part_lengths[..., None], starts[..., None] + pos, capacity)
        prompt = prompt.at[rows, doc_slots].set(parts, mode="drop")
        qpos = jnp.arange(query["tokens"].shape[1])
        query_slots = jnp.where(qpos < query["length"][:, None], context_length[:, None] + qpos, capacity)
        prompt = prompt.at[jnp.arange(b)[:, None], query_slots].set(query["tokens"], mode="drop")
        return {"tokens": prompt, "length": context_length + query["length"], "documents": selection}
