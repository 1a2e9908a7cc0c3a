"""BM25 for the rag recipe: index build on the host (numpy), scoring as a gather (jax).

The index stores, for every term t and document d, the term's whole contribution

    w[t, d] = idf(t) * tf * c / (tf + k1 * (1 - b + b * |d| / avgdl)),  c = 1 or k1 + 1

so scoring a query is a gather of its terms' rows and a sum (``gather`` op, placeable like
any step).  Two variants:
  - "lucene"  idf = log(1 + (N - df + 0.5) / (df + 0.5)), no (k1 + 1) factor
              (Lucene >= 8 and bm25s' default method);
  - "okapi"   idf = log((N - df + 0.5) / (df + 0.5)), negative idfs floored at
              epsilon * mean idf, with the (k1 + 1) factor (rank_bm25's BM25Okapi).
A query term repeated q times counts q times; unknown terms count zero.
"""
from __future__ import annotations

import dataclasses
import re
from collections import Counter

import numpy as np

from .. import ops

IDF_KINDS = ("lucene", "okapi")
_WORD = re.compile(r"\w+")


def tokenize(text: str) -> list[str]:
    """Lower-cased words (runs of letters, digits and underscores)."""
    return _WORD.findall(text.lower())


@dataclasses.dataclass(frozen=True, eq=False)  # identity hash: jit keys on it as static data
class BM25Index:
    vocabulary: dict          # term -> row of term_weights
    term_weights: np.ndarray  # [terms, documents] float32
    idf: np.ndarray           # [terms]
    doc_lengths: np.ndarray   # [documents] words per document

    def term_ids(self, words: list[str], width: int | None = None) -> np.ndarray:
        """Rows of the query's words, padded with -1 to `width`; unknown words are -1."""
        width = len(words) if width is None else width
        if len(words) > width:
            raise ValueError(f"bm25: the query has {len(words)} terms but width={width}; "
                             f"raise the width (nothing is truncated)")
        ids = np.full((width,), -1, np.int32)
        ids[: len(words)] = [self.vocabulary.get(w, -1) for w in words]
        return ids


def idf_values(doc_freq: np.ndarray, n_docs: int, kind: str, epsilon: float) -> np.ndarray:
    if kind == "lucene":
        return np.log1p((n_docs - doc_freq + 0.5) / (doc_freq + 0.5))
    idf = np.log(n_docs - doc_freq + 0.5) - np.log(doc_freq + 0.5)
    return np.where(idf < 0, epsilon * idf.mean(), idf)


def build_bm25(documents: list[list[str]], *, k1: float = 1.5, b: float = 0.75,
               idf: str = "lucene", epsilon: float = 0.25) -> BM25Index:
    """Index tokenized documents (lists of words)."""
    if idf not in IDF_KINDS:
        raise ValueError(f"bm25: idf={idf!r} is not one of {IDF_KINDS}")
    if not documents:
        raise ValueError("bm25: the document store is empty; index at least one document")
    vocabulary: dict[str, int] = {}
    for words in documents:
        for w in words:
            vocabulary.setdefault(w, len(vocabulary))
    tf = np.zeros((len(vocabulary), len(documents)), np.float64)
    for d, words in enumerate(documents):
        for w, count in Counter(words).items():
            tf[vocabulary[w], d] = count
    lengths = np.array([len(words) for words in documents], np.float64)
    avgdl = lengths.mean() if lengths.sum() else 1.0
    idf_of = idf_values((tf > 0).sum(axis=1), len(documents), idf, epsilon)
    saturation = tf / (tf + k1 * (1 - b + b * lengths / avgdl))
    if idf == "okapi":
        saturation *= k1 + 1
    weights = (idf_of[:, None] * saturation).astype(np.float32)
    return BM25Index(vocabulary, weights, idf_of, lengths.astype(np.int32))


def bm25_scores(term_weights, term_ids, *, backend: str = "auto"):
    """term_weights [terms, docs], term_ids int32 [..., q] (-1 = none) -> scores [..., docs]."""
    return ops.gather(term_weights, term_ids, backend=backend).sum(axis=-2)
