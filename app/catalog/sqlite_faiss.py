"""Embedded catalog: SQLite (WAL) is the durable record; FAISS indexes in memory serve searches.

Each row holds two vectors: the collection embedding (`/similar`) and, when the model has the head, the
instance embedding (`/copies`). There is one FAISS index per vector kind. Each write commits to SQLite
before it is acknowledged, then updates FAISS. At start the indexes are rebuilt from the rows embedded by
the current model; rows from another model version are kept but never searched until
`nftlens catalog reindex` re-embeds them (and fills the instance vector of rows that predate it).
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path

import faiss
import numpy as np

from app.catalog.base import Neighbour, SearchFilter, Token, utc_now

SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    collection  TEXT NOT NULL,
    token_id    TEXT NOT NULL,
    metadata    TEXT NOT NULL DEFAULT '{}',
    model       TEXT NOT NULL,
    dim         INTEGER NOT NULL,
    vector      BLOB NOT NULL,
    image       BLOB,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    instance    BLOB,
    fingerprint TEXT,
    UNIQUE (collection, token_id)
);
CREATE INDEX IF NOT EXISTS tokens_model ON tokens (model);
"""
FINGERPRINT_INDEX = "CREATE INDEX IF NOT EXISTS tokens_fingerprint ON tokens (fingerprint)"
SPACES = ("collection", "instance")  # the vector kinds a search can use


def make_index(dim: int, kind: str = "flat") -> faiss.Index:
    """Inner product on unit vectors = cosine. Flat is exact; HNSW trades exactness for speed at scale."""
    base = (
        faiss.IndexFlatIP(dim) if kind == "flat" else faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
    )
    if kind == "hnsw":
        base.hnsw.efSearch = 64
        base.hnsw.efConstruction = 80
    return faiss.IndexIDMap2(base)


class SqliteFaissCatalog:
    def __init__(
        self, path: str | Path, dim: int, model_key: str, index: str = "flat", instance_dim: int = 0
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim, self.model_key, self.index_kind = dim, model_key, index
        self.instance_dim = instance_dim
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
        self._db.executescript(SCHEMA)
        columns = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)")}
        for column in ("instance BLOB", "fingerprint TEXT"):  # catalogs written before these existed
            if column.split()[0] not in columns:
                self._db.execute(f"ALTER TABLE tokens ADD COLUMN {column}")
        self._db.execute(FINGERPRINT_INDEX)
        self._deleted: set[int] = set()  # HNSW cannot remove: deleted ids are filtered out of results
        self._rebuild()

    # -- index -------------------------------------------------------------------------------------
    def _rebuild(self) -> None:
        with self._lock:
            self._indexes = {"collection": make_index(self.dim, self.index_kind)}
            if self.instance_dim:
                self._indexes["instance"] = make_index(self.instance_dim, self.index_kind)
            self._deleted.clear()
            rows = self._db.execute(
                "SELECT id, vector, instance FROM tokens WHERE model = ? AND dim = ?",
                (self.model_key, self.dim),
            ).fetchall()
            if rows:
                ids = np.array([r[0] for r in rows], dtype=np.int64)
                vecs = np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows])
                self._indexes["collection"].add_with_ids(vecs, ids)
            inst = [(r[0], r[2]) for r in rows if r[2] is not None]
            if self.instance_dim and inst:
                vecs = np.stack([np.frombuffer(b, dtype=np.float32) for _, b in inst])
                if vecs.shape[1] == self.instance_dim:
                    self._indexes["instance"].add_with_ids(
                        vecs, np.array([i for i, _ in inst], dtype=np.int64)
                    )

    def _index_remove(self, row_id: int) -> None:
        if self.index_kind == "flat":
            for index in self._indexes.values():
                index.remove_ids(np.array([row_id], dtype=np.int64))
        else:
            self._deleted.add(row_id)

    def _index_add(self, space: str, ids: list[int], vecs: np.ndarray) -> None:
        if self.index_kind != "flat":
            self._deleted.difference_update(ids)
        self._indexes[space].add_with_ids(
            np.ascontiguousarray(vecs, dtype=np.float32), np.asarray(ids, dtype=np.int64)
        )

    def _check(self, vector: np.ndarray | None, dim: int, what: str) -> np.ndarray | None:
        if vector is None:
            return None
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if dim and vec.shape[0] != dim:  # dim 0: kept in the row, not indexed (no such space here)
            raise ValueError(f"{what} vector has {vec.shape[0]} dims, catalog expects {dim}")
        return vec

    # -- writes ------------------------------------------------------------------------------------
    def upsert(
        self, token: Token, vector: np.ndarray, image: bytes | None = None, instance: np.ndarray | None = None
    ) -> None:
        self.upsert_many([(token, vector, image, instance)])

    def upsert_many(self, items: list[tuple]) -> None:
        """Insert or replace tokens in one transaction; the indexes follow after the commit.

        Items are (token, collection vector, image bytes or None[, instance vector or None]).
        """
        now = utc_now()
        with self._lock:
            old_ids, new_ids, vecs, inst_ids, insts = [], [], [], [], []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for token, vector, image, *rest in items:
                    vec = self._check(vector, self.dim, "collection")
                    inst = self._check(rest[0] if rest else None, self.instance_dim, "instance")
                    prev = self._db.execute(
                        "SELECT id, created_at FROM tokens WHERE collection=? AND token_id=?",
                        (token.collection, token.token_id),
                    ).fetchone()
                    if prev:
                        old_ids.append(prev[0])
                        self._db.execute("DELETE FROM tokens WHERE id=?", (prev[0],))
                    cur = self._db.execute(
                        "INSERT INTO tokens (collection, token_id, metadata, model, dim, vector, image,"
                        " created_at, updated_at, instance, fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            token.collection,
                            token.token_id,
                            json.dumps(token.metadata),
                            self.model_key,
                            self.dim,
                            vec.tobytes(),
                            image,
                            prev[1] if prev else now,
                            now,
                            inst.tobytes() if inst is not None else None,
                            token.fingerprint or None,
                        ),
                    )
                    new_ids.append(cur.lastrowid)
                    vecs.append(vec)
                    if inst is not None and self.instance_dim:
                        inst_ids.append(cur.lastrowid)
                        insts.append(inst)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            for row_id in old_ids:
                self._index_remove(row_id)
            if new_ids:
                self._index_add("collection", new_ids, np.stack(vecs))
            if inst_ids:
                self._index_add("instance", inst_ids, np.stack(insts))

    def delete(self, collection: str, token_id: str) -> bool:
        with self._lock:
            row = self._db.execute(
                "SELECT id FROM tokens WHERE collection=? AND token_id=?", (collection, token_id)
            ).fetchone()
            if not row:
                return False
            self._db.execute("DELETE FROM tokens WHERE id=?", (row[0],))
            self._index_remove(row[0])
            return True

    # -- reads -------------------------------------------------------------------------------------
    def get(self, collection: str, token_id: str, with_vector: bool = False) -> Token | None:
        with self._lock:
            row = self._db.execute(
                "SELECT collection, token_id, metadata, model, created_at, updated_at, vector, instance"
                " FROM tokens WHERE collection=? AND token_id=?",
                (collection, token_id),
            ).fetchone()
        if not row:
            return None
        vec = np.frombuffer(row[6], dtype=np.float32).copy() if with_vector else None
        inst = np.frombuffer(row[7], dtype=np.float32).copy() if with_vector and row[7] else None
        return Token(row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], vec, inst)

    def search(
        self, vector: np.ndarray, k: int, flt: SearchFilter | None = None, space: str = "collection"
    ) -> list[Neighbour]:
        """The k most similar current-model tokens passing `flt` in one vector space, best first."""
        flt = flt or SearchFilter()
        query = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        if space not in self._indexes:
            raise ValueError(f"this catalog has no {space!r} vectors (the model has no such output)")
        index = self._indexes[space]
        with self._lock:
            total = index.ntotal
            if total == 0 or k <= 0:
                return []
            fetch = min(total, k + 1 + len(self._deleted))
            while True:
                scores, ids = index.search(query, fetch)
                hits = [
                    (int(i), float(s))
                    for i, s in zip(ids[0], scores[0], strict=True)
                    if i >= 0 and i not in self._deleted
                ]
                meta = self._rows_by_id([i for i, _ in hits])
                out = []
                for i, s in hits:
                    if i in meta and flt.allows(meta[i][0], meta[i][1], s):
                        out.append(Neighbour(meta[i][0], meta[i][1], s, meta[i][2]))
                # results are sorted by score: stop when enough pass the filter, the scores fell below
                # min_score, or the whole index was searched
                below = flt.min_score is not None and hits and hits[-1][1] < flt.min_score
                if len(out) >= k or fetch >= total or below:
                    return out[:k]
                fetch = min(total, fetch * 4)

    def _rows_by_id(self, ids: list[int]) -> dict[int, tuple[str, str, dict]]:
        out = {}
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = f"SELECT id, collection, token_id, metadata FROM tokens WHERE id IN ({','.join('?' * len(chunk))})"
            for r in self._db.execute(q, chunk):
                out[r[0]] = (r[1], r[2], json.loads(r[3]))
        return out

    def count(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM tokens").fetchone()[0]

    def stale_count(self) -> int:
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM tokens WHERE model != ?", (self.model_key,)
            ).fetchone()[0]

    def collections(self) -> dict[str, int]:
        with self._lock:
            return dict(
                self._db.execute("SELECT collection, COUNT(*) FROM tokens GROUP BY collection").fetchall()
            )

    def find_exact(self, fingerprint: str, flt: SearchFilter | None = None) -> list[Neighbour]:
        """Tokens whose stored pixel fingerprint equals `fingerprint` (score 1.0), whatever the model."""
        flt = flt or SearchFilter()
        if not fingerprint:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT collection, token_id, metadata FROM tokens WHERE fingerprint=? ORDER BY id",
                (fingerprint,),
            ).fetchall()
        return [Neighbour(r[0], r[1], 1.0, json.loads(r[2])) for r in rows if flt.allows(r[0], r[1], 1.0)]

    def image(self, collection: str, token_id: str) -> bytes | None:
        """The stored image bytes of a token (None when absent or stored without an image)."""
        with self._lock:
            row = self._db.execute(
                "SELECT image FROM tokens WHERE collection=? AND token_id=?", (collection, token_id)
            ).fetchone()
        return row[0] if row else None

    def iter_images(self, only_stale: bool = True, batch: int = 256):
        """Yield lists of (Token, image bytes) for re-embedding; rows without stored image bytes are skipped."""
        where = "WHERE image IS NOT NULL" + (" AND model != ?" if only_stale else "")
        args = (self.model_key,) if only_stale else ()
        with self._lock:
            keys = self._db.execute(f"SELECT id FROM tokens {where} ORDER BY id", args).fetchall()
        for start in range(0, len(keys), batch):
            ids = [k[0] for k in keys[start : start + batch]]
            with self._lock:
                rows = self._db.execute(
                    f"SELECT collection, token_id, metadata, image FROM tokens WHERE id IN ({','.join('?' * len(ids))})",
                    ids,
                ).fetchall()
            yield [(Token(r[0], r[1], json.loads(r[2])), r[3]) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
