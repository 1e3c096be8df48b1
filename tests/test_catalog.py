"""The embedded catalog: SQLite record + FAISS search, filters, persistence, model-version isolation."""

from __future__ import annotations

import numpy as np
import pytest

from app.catalog import SearchFilter, SqliteFaissCatalog, Token
from app.indexing import index_source, reindex

DIM = 16


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    v = rng.normal(size=(n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(params=["flat", "hnsw"])
def kind(request) -> str:
    return request.param


def _fill(cat, rng, n=60):
    vecs = unit(rng, n)
    cat.upsert_many([(Token("a" if i % 2 else "b", str(i), {"i": i}), vecs[i], None) for i in range(n)])
    return vecs


def test_search_matches_brute_force_and_filters(tmp_path, kind):
    rng = np.random.default_rng(0)
    cat = SqliteFaissCatalog(tmp_path / "c.db", DIM, "m@1", kind)
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


def test_upsert_replaces_delete_removes_and_reopen_keeps(tmp_path, kind):
    rng = np.random.default_rng(1)
    path = tmp_path / "c.db"
    cat = SqliteFaissCatalog(path, DIM, "m@1", kind)
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
    reopened = SqliteFaissCatalog(path, DIM, "m@1", kind)
    assert reopened.count() == 59 and reopened.get("b", "0") is None
    assert reopened.search(new, 1)[0].token_id == "1"


def test_failed_batch_rolls_back(tmp_path):
    cat = SqliteFaissCatalog(tmp_path / "c.db", DIM, "m@1")
    rng = np.random.default_rng(2)
    _fill(cat, rng, 10)
    bad = [
        (Token("a", "new", {}), unit(rng, 1)[0], None),
        (Token("a", "1", {}), np.ones(DIM + 1, np.float32), None),
    ]
    with pytest.raises(ValueError, match="dims"):
        cat.upsert_many(bad)
    assert cat.count() == 10 and cat.get("a", "new") is None and cat.get("a", "1").metadata == {"i": 1}


def test_other_model_versions_are_never_searched(tmp_path):
    rng = np.random.default_rng(3)
    path = tmp_path / "c.db"
    old = SqliteFaissCatalog(path, DIM, "m@1")
    _fill(old, rng, 20)
    old.close()
    cur = SqliteFaissCatalog(path, DIM, "m@2")
    assert cur.count() == 20 and cur.stale_count() == 20 and cur.search(unit(rng, 1)[0], 5) == []
    cur.upsert(Token("c", "x", {}), unit(rng, 1)[0])
    assert [n.token_id for n in cur.search(unit(rng, 1)[0], 5)] == ["x"]


def test_index_and_reindex_with_the_real_model(tmp_path, model_dir, nouns):
    from app.inference import OnnxModel

    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    path = tmp_path / "c.db"
    stale = SqliteFaissCatalog(path, m.embedding_dim, "older@0")
    assert index_source(model, stale, nouns.root) == {"indexed": 60, "failed": 0}
    stale.close()
    cat = SqliteFaissCatalog(path, m.embedding_dim, f"{m.name}@{m.version}")
    assert cat.stale_count() == 60
    assert reindex(model, cat) == {"indexed": 60, "failed": 0}
    assert cat.stale_count() == 0 and cat.count() == 60
    tok = cat.get("nouns", "5", with_vector=True)
    assert tok.metadata["label"] == "nouns" and tok.metadata["attributes"]["head"].startswith("head-")
    assert cat.search(tok.vector, 1)[0].token_id == "5"
