"""rag: BM25 agrees with established implementations; retrieval and prompt assembly."""
import importlib
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_hetero.nn import RetrievalMemory
from jax_hetero.pipeline import MemoryPipeline, RAGRecipe
from jax_hetero.pipeline.bm25 import bm25_scores, build_bm25, tokenize
from jax_hetero.pipeline.rag import shipped_corpus


def stdlib_corpus():
    """Real English prose that ships with Python: the docstrings of standard-library functions."""
    texts = []
    for name in ("json", "textwrap", "collections", "functools", "itertools", "pathlib", "argparse", "heapq"):
        module = importlib.import_module(name)
        for _, member in inspect.getmembers(module):
            doc = inspect.getdoc(member) if callable(member) else None
            if doc and len(doc) > 80 and doc not in texts:
                texts.append(doc)
    return texts


def queries_from(docs, rng, count=8):
    words = sorted({w for d in docs for w in tokenize(d)})
    picked = [list(rng.choice(words, size=int(rng.integers(2, 7)))) for _ in range(count)]
    return picked + [["the", "of", "and"], ["unknownword", "zzz"]]


@pytest.mark.parametrize("corpus", [shipped_corpus, stdlib_corpus])
def test_okapi_matches_rank_bm25(corpus):
    rank_bm25 = pytest.importorskip("rank_bm25")
    docs = [tokenize(t) for t in corpus()]
    assert len(docs) > 30
    reference = rank_bm25.BM25Okapi(docs)
    index = build_bm25(docs, idf="okapi")
    weights = jnp.asarray(index.term_weights)
    for query in queries_from(corpus(), np.random.default_rng()):
        ours = np.asarray(bm25_scores(weights, jnp.asarray(index.term_ids(query))))
        np.testing.assert_allclose(ours, reference.get_scores(query), rtol=1e-5, atol=1e-5, err_msg=str(query))


@pytest.mark.parametrize("corpus", [shipped_corpus, stdlib_corpus])
def test_lucene_matches_bm25s(corpus):
    bm25s = pytest.importorskip("bm25s")
    docs = [tokenize(t) for t in corpus()]
    reference = bm25s.BM25(method="lucene", k1=1.5, b=0.75)
    reference.index(docs, show_progress=False)
    index = build_bm25(docs, idf="lucene")
    weights = jnp.asarray(index.term_weights)
    for query in queries_from(corpus(), np.random.default_rng()):
        query = list(dict.fromkeys(query))  # bm25s scores each distinct term once
        ours = np.asarray(bm25_scores(weights, jnp.asarray(index.term_ids(query))))
        np.testing.assert_allclose(ours, reference.get_scores(query), rtol=1e-5, atol=1e-5, err_msg=str(query))


@pytest.mark.parametrize("scoring", ["bm25", "dense"])
def test_retrieval_and_prompt_assembly(scoring):
    docs = shipped_corpus()
    pipe = MemoryPipeline(RAGRecipe(k=3, scoring=scoring, max_len=2048))
    store = pipe.prepare(None, docs)
    questions = ["Why does bread dough rise with yeast?", "How do honey bees find flowers?"]
    query = pipe.recipe.make_query(store, questions)
    scores = np.asarray(pipe.relevancy(store, query))
    if scoring == "dense":
        expected = np.asarray(query["embedding"]) @ np.asarray(store.embeddings).T
        np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-6)
    selection = np.asarray(pipe.retrieve(store, jnp.asarray(scores)))
    np.testing.assert_array_equal(selection, np.argsort(-scores, axis=1, kind="stable")[:, :3])
    out = jax.jit(pipe.apply)(store, query, jnp.asarray(selection))
    for i, question in enumerate(questions):
        text = bytes(np.asarray(out["tokens"][i, : int(out["length"][i])]).astype(np.uint8)).decode()
        assert text == "".join(docs[d] + "\n" for d in selection[i]) + question
    assert "yeast" in docs[selection[0, 0]] and "bees" in docs[selection[1, 0]]


def test_retrieval_memory_module():
    memory = RetrievalMemory("rag", k=2, max_len=1024)
    store = memory.build(shipped_corpus())
    prompts = memory.augment(store, ["What makes Mars red?"])
    text = bytes(prompts[0].astype(np.uint8)).decode()
    assert text.startswith("Mars is the fourth planet") and text.endswith("What makes Mars red?")


def test_bad_inputs():
    with pytest.raises(ValueError, match="document store is empty"):
        MemoryPipeline(RAGRecipe()).prepare(None, [])
    with pytest.raises(ValueError, match="k=5 exceeds the 2 documents"):
        MemoryPipeline(RAGRecipe(k=5)).prepare(None, ["one doc", "two docs"])
    with pytest.raises(ValueError, match="scoring='sparse' is not one of \\('bm25', 'dense'\\)"):
        RAGRecipe(scoring="sparse")
    recipe = RAGRecipe(k=2, max_len=300)
    store = MemoryPipeline(recipe).prepare(None, shipped_corpus())
    with pytest.raises(ValueError, match="exceeds max_len=300"):
        recipe.make_query(store, ["word " * 200])
    with pytest.raises(ValueError, match="not one of"):
        RetrievalMemory("quest")
