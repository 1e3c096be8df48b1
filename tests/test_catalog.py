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

    def opener(model_key: str = "m@1", dim: int = DIM, instance_dim: int = 0):
        if request.param == "milvus-lite":
            return open_catalog(
                f"milvus-lite://{tmp_path / 'milvus.db'}", dim, model_key, instance_dim=instance_dim
            )
        return open_catalog(str(tmp_path / "c.db"), dim, model_key, request.param, instance_dim)

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
    done = {"indexed": 60, "failed": 0, "skipped": 0, "catalog": 60}
    assert index_source(model, stale, nouns.root) == done
    created = stale.get("nouns", "5").created_at
    stale.close()
    cat = make(m.catalog_key, m.embedding_dim)
    assert cat.stale_count() == 60
    # resuming by content hash: stored by another model is not "already stored" for this one
    assert index_source(model, cat, nouns.root) == done
    assert index_source(model, cat, nouns.root) == {**done, "indexed": 0, "skipped": 60}
    assert reindex(model, cat) == {"indexed": 0, "failed": 0}
    assert reindex(model, cat, everything=True) == {"indexed": 60, "failed": 0}
    assert cat.stale_count() == 0 and cat.count() == 60
    tok = cat.get("nouns", "5", with_vector=True)
    assert tok.created_at == created and tok.model == m.catalog_key  # updated in place: identity kept
    assert tok.metadata["label"] == "nouns" and tok.metadata["attributes"]["head"].startswith("head-")
    assert cat.search(tok.vector, 1)[0].token_id == "5"


IDIM = 8


def test_two_vector_spaces_search_independently_and_persist(make):
    """Each token carries a collection and an instance vector; each kind has its own index."""
    rng = np.random.default_rng(4)
    cat = make(instance_dim=IDIM)
    vecs = unit(rng, 30)
    inst = rng.normal(size=(30, IDIM)).astype(np.float32)
    inst /= np.linalg.norm(inst, axis=1, keepdims=True)
    cat.upsert_many([(Token("a", str(i), {}), vecs[i], b"img", inst[i]) for i in range(29)])
    cat.upsert(Token("a", "29", {}), vecs[29], b"img")  # stored without an instance vector
    q = inst[3] + 0.05 * rng.normal(size=IDIM).astype(np.float32)
    q /= np.linalg.norm(q)
    truth = np.argsort(-(inst[:29] @ q))[:3].tolist()
    got = cat.search(q, 3, space="instance")
    assert [int(n.token_id) for n in got] == truth and got[0].token_id == "3"
    # the collection space answers from the other vectors
    assert cat.search(vecs[7], 1)[0].token_id == "7"
    assert cat.search(inst[3], 3, SearchFilter(exclude=("a", "3")), space="instance")[0].token_id != "3"
    tok = cat.get("a", "3", with_vector=True)
    assert np.allclose(tok.instance, inst[3]) and np.allclose(tok.vector, vecs[3])
    assert cat.get("a", "29", with_vector=True).instance is None
    assert "29" not in {n.token_id for n in cat.search(q, 30, space="instance") if n.score > 0.5}
    with pytest.raises(ValueError, match="dims"):
        cat.upsert(Token("a", "x", {}), vecs[0], None, np.ones(IDIM + 2, np.float32))
    cat.close()
    cat = make(instance_dim=IDIM)  # reopened: both indexes rebuilt from the stored rows
    assert cat.search(q, 1, space="instance")[0].token_id == "3"
    assert cat.delete("a", "3")
    assert "3" not in {n.token_id for n in cat.search(q, 30, space="instance")}


def test_sqlite_catalog_without_instance_column_is_migrated(tmp_path):
    """A catalog file written before instance vectors existed opens, gains the column, and reindex fills it."""
    import sqlite3

    db = tmp_path / "old.db"
    con = sqlite3.connect(db)
    con.executescript(
        "CREATE TABLE tokens (id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL,"
        " token_id TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', model TEXT NOT NULL, dim INTEGER NOT NULL,"
        " vector BLOB NOT NULL, image BLOB, created_at TEXT NOT NULL, updated_at TEXT NOT NULL,"
        " UNIQUE (collection, token_id));"
    )
    v = unit(np.random.default_rng(5), 1)[0]
    con.execute(
        "INSERT INTO tokens (collection, token_id, model, dim, vector, image, created_at, updated_at)"
        " VALUES ('a', '1', 'm@1', ?, ?, NULL, 'x', 'x')",
        (DIM, v.tobytes()),
    )
    con.commit()
    con.close()
    cat = open_catalog(str(db), DIM, "m@1", "flat", IDIM)
    assert cat.search(v, 1)[0].token_id == "1" and cat.search(v[:IDIM] / 1, 1, space="instance") == []
    cat.upsert(Token("a", "1", {}), v, None, np.eye(IDIM, dtype=np.float32)[0])
    assert cat.search(np.eye(IDIM, dtype=np.float32)[0], 1, space="instance")[0].token_id == "1"


def test_reindex_fills_instance_vectors_with_the_real_model(tmp_path, model_dir, nouns):
    from app.inference import OnnxModel

    model = OnnxModel(model_dir, providers=["CPUExecutionProvider"])
    m = model.manifest
    if not m.instance_dim:
        pytest.skip("the model under test has no instance head")
    old = open_catalog(str(tmp_path / "c.db"), m.embedding_dim, "older@0")
    index_source(model, old, nouns.root)  # as an older model without instance vectors would have
    old.close()
    cat = open_catalog(str(tmp_path / "c.db"), m.embedding_dim, m.catalog_key, "flat", m.instance_dim)
    assert cat.search(np.ones(m.instance_dim, np.float32), 1, space="instance") == []
    assert reindex(model, cat) == {"indexed": 60, "failed": 0}
    tok = cat.get("nouns", "5", with_vector=True)
    assert tok.instance is not None and tok.instance.shape == (m.instance_dim,)
    assert cat.search(tok.instance, 1, space="instance")[0].token_id == "5"


def test_exact_stage_finds_tokens_by_pixel_fingerprint(make):
    rng = np.random.default_rng(6)
    cat = make(instance_dim=IDIM)
    vecs = unit(rng, 3)
    cat.upsert(Token("a", "1", {"n": 1}, fingerprint="f" * 64), vecs[0], b"img")
    cat.upsert(Token("b", "2", {}, fingerprint="f" * 64), vecs[1], b"img")  # the same picture, minted twice
    cat.upsert(Token("a", "3", {}), vecs[2], b"img")  # no fingerprint
    hits = cat.find_exact("f" * 64)
    assert {(h.collection, h.token_id) for h in hits} == {("a", "1"), ("b", "2")} and {
        h.score for h in hits
    } == {1.0}
    assert [h.token_id for h in cat.find_exact("f" * 64, SearchFilter(collections={"a"}))] == ["1"]
    assert cat.find_exact("f" * 64, SearchFilter(exclude=("a", "1")))[0].token_id == "2"
    assert cat.find_exact("0" * 64) == [] and cat.find_exact("") == []
    assert cat.image("a", "1") == b"img" and cat.image("a", "nope") is None


# -- one truth for every process ------------------------------------------------------------------------
@pytest.fixture(params=["flat", "hnsw"])
def two_views(request, tmp_path):
    """Two catalogs on one SQLite file, as two processes hold it (each its own connection and indexes)."""
    path = str(tmp_path / "shared.db")
    a = open_catalog(path, DIM, "m@1", request.param, IDIM)
    b = open_catalog(path, DIM, "m@1", request.param, IDIM)
    yield a, b
    a.close(), b.close()


def test_writes_by_one_catalog_are_searched_by_another_without_reopening(two_views):
    writer, server = two_views
    rng = np.random.default_rng(7)
    vecs, insts = unit(rng, 40), np.eye(IDIM, dtype=np.float32)
    assert server.search(vecs[0], 5) == []
    writer.upsert_many([(Token("a", str(i), {}), vecs[i], None, insts[i % IDIM]) for i in range(40)])
    assert [n.token_id for n in server.search(vecs[3], 1)] == ["3"]
    assert server.search(insts[2], 1, space="instance")[0].token_id in {"2", "10", "18", "26", "34"}
    # re-embedding in place (what reindex does) keeps the token searchable with its new vector
    writer.upsert(Token("a", "3", {"v": 2}), vecs[20], None, insts[0])
    top = server.search(vecs[20], 2)
    assert {n.token_id for n in top} == {"3", "20"} and len(server.search(vecs[0], 100)) == 40
    assert writer.delete("a", "3")
    assert "3" not in {n.token_id for n in server.search(vecs[20], 40)}
    assert writer.delete_collection("a") == 39
    assert server.search(vecs[0], 5) == [] and server.count() == 0


def test_reader_that_fell_behind_the_pruned_log_rebuilds(tmp_path, monkeypatch):
    import app.catalog.sqlite_faiss as backend

    monkeypatch.setattr(backend, "LOG_KEEP", 5)
    path = str(tmp_path / "c.db")
    writer, server = open_catalog(path, DIM, "m@1"), open_catalog(path, DIM, "m@1")
    vecs = unit(np.random.default_rng(8), 3000)
    for start in range(0, 3000, 500):  # every commit past 1,000 log entries prunes
        writer.upsert_many([(Token("a", str(i), {}), vecs[i], None) for i in range(start, start + 500)])
    assert writer._db.execute("SELECT MIN(seq) FROM changes").fetchone()[0] > 1
    assert [n.token_id for n in server.search(vecs[2999], 1)] == ["2999"]
    assert server.index_stats()["collection"]["vectors"] == 3000


def test_hnsw_churn_is_compacted_and_search_stays_exact_enough(tmp_path):
    cat = open_catalog(str(tmp_path / "c.db"), DIM, "m@1", "hnsw")
    rng = np.random.default_rng(9)
    vecs = unit(rng, 500)
    cat.upsert_many([(Token("a", str(i), {}), vecs[i], None) for i in range(500)])
    for round_ in range(6):  # 6 x 100 updates: tombstones would reach 600 without compaction
        fresh = unit(rng, 100)
        cat.upsert_many([(Token("a", str(i), {"r": round_}), fresh[i], None) for i in range(100)])
        vecs[:100] = fresh
        cat.wait_for_compaction()
    stats = cat.index_stats()["collection"]
    assert stats["vectors"] == 500 and stats["tombstones"] <= max(256, 0.2 * 600)
    hits = [cat.search(vecs[i], 1)[0].token_id == str(i) for i in range(0, 500, 5)]
    assert sum(hits) >= 0.98 * len(hits)


@pytest.mark.parametrize("path", ["own graphs", "global bitmap"])
def test_collection_filters_run_inside_the_graph_search(tmp_path, path):
    """With HNSW, a filtered search runs inside the index: on each allowed collection's own graph, or (when
    a filter allows more collections than `max_shards`) on the global graph with a FAISS selector. Every
    result is allowed, and k come back even when the allowed collection is a small share."""
    cat = open_catalog(str(tmp_path / "c.db"), DIM, "m@1", "hnsw")
    space = cat._spaces["collection"]
    space.exact_limit = 10  # collections above this get their own graph
    space.max_shards = 64 if path == "own graphs" else 0
    rng = np.random.default_rng(10)
    vecs = unit(rng, 1000)
    names = ["small" if i % 20 == 0 else "big" for i in range(1000)]  # 50 small, 950 big
    cat.upsert_many([(Token(names[i], str(i), {}), vecs[i], None) for i in range(1000)])
    cat.wait_for_compaction()
    assert set(space._own) == {"small", "big"}
    q = vecs[1]
    got = cat.search(q, 10, SearchFilter(collections={"small"}))
    truth = [str(i) for i in sorted(range(0, 1000, 20), key=lambda i: -(vecs[i] @ q))[:10]]
    assert len(got) == 10 and {n.collection for n in got} == {"small"}
    assert len({n.token_id for n in got} & set(truth)) >= 9
    not_big = cat.search(q, 10, SearchFilter(exclude_collections={"big"}))
    assert {n.collection for n in not_big} == {"small"} and len(not_big) == 10


def test_list_tokens_pages_with_a_stable_cursor(make):
    cat = make()
    rng = np.random.default_rng(11)
    vecs = unit(rng, 25)
    cat.upsert_many([(Token("ab"[i % 2], f"{i:02d}", {}), vecs[i], None) for i in range(25)])
    seen, cursor = [], None
    while True:
        page, cursor = cat.list_tokens(cursor=cursor, limit=7)
        seen += [(t.collection, t.token_id) for t in page]
        if cursor is None:
            break
        cat.upsert(Token("a", "00", {"touched": True}), vecs[0], None)  # writes between pages move nothing
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 25
    only_b, more = cat.list_tokens("b", limit=100)
    assert more is None and [t.token_id for t in only_b] == [f"{i:02d}" for i in range(1, 25, 2)]
    with pytest.raises(ValueError, match="cursor"):
        cat.list_tokens(cursor="not-a-cursor")


def test_milvus_rolling_deploy_keeps_each_models_rows(tmp_path):
    """Old and new model replicas write the same token during a deploy: each keeps its own row and
    searches only its own; reindex then migrates and drops the superseded rows."""
    pytest.importorskip("pymilvus", reason="the Milvus backend needs the [milvus] extra")
    url = f"milvus-lite://{tmp_path / 'milvus.db'}"
    rng = np.random.default_rng(12)
    v_old, v_new = unit(rng, 2)
    old = open_catalog(url, DIM, "a" * 64, model_label="m@1")
    old.upsert(Token("c", "1", {"by": "old"}), v_old, b"png-bytes")
    old.upsert(Token("c", "2", {"by": "old"}), v_old, b"png-bytes")
    old.close()
    new = open_catalog(url, DIM, "b" * 64, model_label="m@2")
    new.upsert(Token("c", "1", {"by": "new"}), v_new, b"png-bytes")
    assert new.get("c", "1").model_label == "m@2" and new.count() == 2 and new.stale_count() == 1
    assert [n.token_id for n in new.search(v_new, 5)] == ["1"]
    new.close()
    old = open_catalog(url, DIM, "a" * 64, model_label="m@1")
    assert old.get("c", "1").metadata == {"by": "old"}  # not overwritten by the new model
    assert sorted(n.token_id for n in old.search(v_old, 5)) == ["1", "2"]
    old.close()
    new = open_catalog(url, DIM, "b" * 64, model_label="m@2")
    assert [[t.token_id for t, _ in chunk] for chunk in new.iter_images()] == [["2"]]
    new.upsert(Token("c", "2", {"by": "new"}), v_new, b"png-bytes")
    assert new.drop_superseded() == 2 and new.stale_count() == 0 and new.count() == 2
    new.close()


def test_milvus_keeps_transparency_of_images_too_large_for_its_field():
    """An image over the VARCHAR limit is stored downscaled as PNG with its alpha, so re-embedding
    composites it on the model's background, not on white."""
    import base64
    import io

    from PIL import Image

    from app.catalog.milvus import MAX_IMAGE_CHARS, _pack_image

    rng = np.random.default_rng(13)
    rgba = rng.integers(0, 256, (900, 900, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(900)[None, :] < 450, 0, 255)  # left half transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    packed = _pack_image(buf.getvalue())
    assert 0 < len(packed) <= MAX_IMAGE_CHARS
    small = Image.open(io.BytesIO(base64.b64decode(packed)))
    assert small.mode == "RGBA" and max(small.size) <= 512
    alpha = np.asarray(small)[..., 3]
    assert alpha[:, : alpha.shape[1] // 4].max() == 0 and alpha[:, -alpha.shape[1] // 4 :].min() == 255


def _open_at(path: str, barrier) -> str:
    """Open a catalog once every process is ready to open it too (a worker starting)."""
    from app.catalog import SqliteFaissCatalog

    barrier.wait()
    SqliteFaissCatalog(path, 8, "k").close()
    return "ok"


def test_workers_opening_a_fresh_catalog_together_all_start(tmp_path):
    """Server workers open one new SQLite file at the same moment; none may fail with "database is locked"
    (switching to WAL does not wait for SQLite's busy handler)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    for round_ in range(3):
        path = str(tmp_path / f"fresh-{round_}.db")
        with ctx.Manager() as manager:
            barrier = manager.Barrier(4)
            with ctx.Pool(4) as pool:
                assert pool.starmap(_open_at, [(path, barrier)] * 4) == ["ok"] * 4
