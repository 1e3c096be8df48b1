"""The embedded catalog: SQLite record + FAISS search, filters, persistence, model-version isolation."""

from __future__ import annotations

import numpy as np
import pytest

from app.catalog import SearchFilter, Token, open_catalog
from app.indexing import index_source, reindex

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["flat", "hnsw", "milvus-lite"])
def make(request, tmp_path):
    """Open (or reopen) a catalog of one backend: the same suite runs against every backend."""
    if request.param == "milvus-lite":
        pytest.importorskip("pymilvus", reason="the Milvus backend needs the [milvus] extra")

    def opener(model_key: str = "m@1", dim: int = DIM):
        if request.param == "milvus-lite":
            return open_catalog(f"milvus-lite://{tmp_path / 'milvus.db'}", dim, model_key)
        return open_catalog(str(tmp_path / "c.db"), dim, model_key, request.param)

    return opener


def _fill(cat, rng, n=60):
    vecs = unit(rng, n)
    cat.upsert_many([(Token("a" if i % 2 else "b", str(i), {"i": i}), vecs[i], None) for i in range(n)])
    return vecs


def test_search_matches_brute_force_and_filters(make):
    rng = np.random.default_rng(0)
    cat = make()
    vecs = _fill(cat, rng)
    q = vecs[7]
    truth = np.argsort(-(vecs @ q))[1:6]  # brute force, self excluded
    got = cat.search(q, 5, SearchFilter(exclude=("a", "7")))
    assert [int(n.token_id) for n in got] == truth.tolist()
    assert got[0].metadata == {"i": int(truth[0])}
    only_b = cat.search(q, 50, SearchFilter(collections={"b"}))
    assert len(only_b) == 30 and {n.collection for n in only_b} == {"b"}
    not_a = cat.search(q, 5, SearchFilter(exclude_collections={"a"}))
    assert {n.collection for n in not_a} == {"b"}
    high = cat.search(q, 60, SearchFilter(min_score=0.3))
    assert all(n.score >= 0.3 for n in high) and len(high) == int((vecs @ q >= 0.3).sum())


def test_upsert_replaces_delete_removes_and_reopen_keeps(make):
    rng = np.random.default_rng(1)
    cat = make()
    vecs = _fill(cat, rng)
    new = unit(rng, 1)[0]
    first = cat.get("a", "1")
    cat.upsert(Token("a", "1", {"v": 2}), new, b"img")
    again = cat.get("a", "1", with_vector=True)
    assert (
        again.metadata == {"v": 2} and again.created_at == first.created_at and np.allclose(again.vector, new)
    )
    assert cat.search(new, 1)[0].token_id == "1" and cat.count() == 60
    assert cat.delete("b", "0") and not cat.delete("b", "0")
    assert "0" not in {n.token_id for n in cat.search(vecs[0], 60)}
    cat.close()
    reopened = make()
    assert reopened.count() == 59 and reopened.get("b", "0") is None
    assert reopened.search(new, 1)[0].token_id == "1"


def test_failed_batch_rolls_back(make):
    cat = make()
    rng = np.random.default_rng(2)
    _fill(cat, rng, 10)
    bad = [
        (Token("a", "new", {}), unit(rng, 1)[0], None),
        (Token("a", "1", {}), np.ones(DIM + 1, np.float32), None),
    ]
    with pytest.raises(ValueError, match="dims"):
        cat.upsert_many(bad)
    assert cat.count() == 10 and cat.get("a", "new") is None and cat.get("a", "1").metadata == {"i": 1}


def test_other_model_versions_are_never_searched(make):
    rng = np.random.default_rng(3)
    old = make("m@1")
    _fill(old, rng, 20)
    old.close()
    cur = make("m@2")
    assert cur.count() == 20 and cur.stale_count() == 20 and cur.search(unit(rng, 1)[0], 5) == []
    cur.upsert(Token("c", "x", {}), unit(rng, 1)[0], b"img")
    assert [n.token_id for n in cur.search(unit(rng, 1)[0], 5)] == ["x"]
    assert cur.collections() == {"a": 10, "b": 10, "c": 1}
    assert [[t.token_id for t, img in chunk] for chunk in cur.iter_images(only_stale=False)] == [["x"]]


def test_index_and_reindex_with_the_real_model(make, model_dir, nouns):
    from app.inference import OnnxModel

    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    stale = make("older@0", m.embedding_dim)
    assert index_source(model, stale, nouns.root) == {"indexed": 60, "failed": 0}
    stale.close()
    cat = make(f"{m.name}@{m.version}", m.embedding_dim)
    assert cat.stale_count() == 60
    assert reindex(model, cat) == {"indexed": 60, "failed": 0}
    assert cat.stale_count() == 0 and cat.count() == 60
    tok = cat.get("nouns", "5", with_vector=True)
    assert tok.metadata["label"] == "nouns" and tok.metadata["attributes"]["head"].startswith("head-")
    assert cat.search(tok.vector, 1)[0].token_id == "5"
