"""Embedded catalog: SQLite (WAL) is the one durable truth; FAISS indexes in memory serve searches.

Consistency: every change to `tokens`, by any process (server workers, `nftlens catalog index`/`reindex`,
a plain `sqlite3` shell), is recorded by SQLite triggers in the `changes` log with a monotonically
increasing `seq`. Before every search a catalog applies the log entries past the last `seq` it applied
(a `PRAGMA data_version` check makes the no-change case a few microseconds), so a write acknowledged by
any process is searchable by every process from its next search on, without a restart. Updates keep the
row id (`INSERT … ON CONFLICT DO UPDATE`), so a reindex never changes a token's identity. The log is
pruned to its last `LOG_KEEP` entries; a process that fell further behind rebuilds its indexes.

Vectors are keyed by the model's content (the ONNX file's sha256): rows embedded by another model are
kept but never searched, until `nftlens catalog reindex` re-embeds them in place.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from app.catalog.base import Neighbour, SearchFilter, Token, as_written, utc_now
from app.catalog.vectors import IndexKind, VectorSpace

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
CREATE TABLE IF NOT EXISTS changes (seq INTEGER PRIMARY KEY AUTOINCREMENT, row_id INTEGER NOT NULL);
CREATE TRIGGER IF NOT EXISTS tokens_logged_insert AFTER INSERT ON tokens
    BEGIN INSERT INTO changes (row_id) VALUES (NEW.id); END;
CREATE TRIGGER IF NOT EXISTS tokens_logged_update AFTER UPDATE ON tokens
    BEGIN INSERT INTO changes (row_id) VALUES (NEW.id); END;
CREATE TRIGGER IF NOT EXISTS tokens_logged_delete AFTER DELETE ON tokens
    BEGIN INSERT INTO changes (row_id) VALUES (OLD.id); END;
"""
# columns added after the first release: catalogs written before them are migrated on open
ADDED_COLUMNS = ("instance BLOB", "fingerprint TEXT", "model_label TEXT", "image_sha256 TEXT")
FINGERPRINT_INDEX = "CREATE INDEX IF NOT EXISTS tokens_fingerprint ON tokens (fingerprint)"
LOG_KEEP = 200_000  # change-log entries kept; a reader further behind rebuilds from the table
_TOKEN_COLUMNS = "collection, token_id, metadata, model, created_at, updated_at, model_label, image_sha256"


def encode_cursor(collection: str, token_id: str) -> str:
    """Opaque, URL-safe pagination cursor: the last (collection, token_id) a page returned."""
    return base64.urlsafe_b64encode(json.dumps([collection, token_id]).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[str, str]:
    """Inverse of `encode_cursor`; ValueError on anything else."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        collection, token_id = json.loads(raw)
    except Exception as exc:
        raise ValueError(f"invalid cursor {cursor!r}: pass back `next_cursor` as returned") from exc
    if not isinstance(collection, str) or not isinstance(token_id, str):
        raise ValueError(f"invalid cursor {cursor!r}: pass back `next_cursor` as returned")
    return collection, token_id


def _token(row, vector=None, instance=None) -> Token:
    return Token(
        row[0], row[1], json.loads(row[2]), row[3], row[4], row[5], vector, instance,
        model_label=row[6] or row[3], image_sha256=row[7] or "",
    )  # fmt: skip


def _set_wal(db: sqlite3.Connection, attempts: int = 300) -> None:
    """Switch a connection to WAL. SQLite answers "database is locked" at once, without its busy handler,
    while another process holds the file (workers starting together on a fresh catalog): retry."""
    for attempt in range(attempts):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1)


class SqliteFaissCatalog:
    def __init__(
        self,
        path: str | Path,
        dim: int,
        model_key: str,
        index: IndexKind = "auto",
        instance_dim: int = 0,
        model_label: str = "",
        ef_search: int = 64,
        background_compaction: bool = True,
    ):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.dim, self.model_key, self.index_kind = dim, model_key, index
        self.model_label = model_label or model_key
        self.instance_dim, self.ef_search = instance_dim, ef_search
        self.background_compaction = background_compaction
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        _set_wal(self._db)
        self._db.execute("PRAGMA synchronous=FULL")  # an acknowledged write survives power loss
        self._db.execute("PRAGMA busy_timeout=30000")  # writers in other processes queue, not fail
        self._db.execute("BEGIN IMMEDIATE")  # one process migrates at a time
        try:
            for statement in SCHEMA.split(";\n"):
                if statement.strip():
                    self._db.execute(statement)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(tokens)")}
            for column in ADDED_COLUMNS:
                if column.split()[0] not in columns:
                    self._db.execute(f"ALTER TABLE tokens ADD COLUMN {column}")
            self._db.execute(FINGERPRINT_INDEX)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._compaction: threading.Thread | None = None
        self._dirty = False  # this connection committed: its own writes do not change data_version
        self._load()

    # -- the in-memory indexes follow the change log --------------------------------------------------
    def _new_space(self, dim: int) -> VectorSpace:
        return VectorSpace(dim, self.index_kind, ef_search=self.ef_search)

    def _load(self) -> None:
        """Build the indexes from every current-model row (at open, or after falling behind the log)."""
        with self._lock:
            self._spaces = {"collection": self._new_space(self.dim)}
            if self.instance_dim:
                self._spaces["instance"] = self._new_space(self.instance_dim)
            self._db.execute("BEGIN")  # one snapshot: the rows and the log position agree
            try:
                self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
                ids = [
                    r[0] for r in self._db.execute("SELECT id FROM tokens WHERE model=?", (self.model_key,))
                ]
                for start in range(0, len(ids), 20_000):
                    self._apply_rows(ids[start : start + 20_000])
            finally:
                self._db.execute("COMMIT")
            self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]

    def _apply_rows(self, ids: list[int]) -> None:
        """Make the indexes hold exactly what the table holds now for these row ids."""
        for space in self._spaces.values():
            space.remove(ids)
        by_space: dict[str, tuple[list[int], list[str], list[np.ndarray]]] = {
            s: ([], [], []) for s in self._spaces
        }
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            q = (
                "SELECT id, collection, vector, instance FROM tokens "
                f"WHERE model=? AND dim=? AND id IN ({','.join('?' * len(chunk))})"
            )
            for row_id, coll, vec, inst in self._db.execute(q, (self.model_key, self.dim, *chunk)):
                for space, blob in (("collection", vec), ("instance", inst)):
                    if space in self._spaces and blob is not None:
                        v = np.frombuffer(blob, dtype=np.float32)
                        if v.shape[0] == self._spaces[space].dim:
                            rows, colls, vecs = by_space[space]
                            rows.append(row_id), colls.append(coll), vecs.append(v)
        for space, (rows, colls, vecs) in by_space.items():
            if rows:
                self._spaces[space].put(rows, colls, np.stack(vecs))

    def sync(self) -> int:
        """Apply every logged change since the last one applied (any process's); returns how many rows."""
        with self._lock:
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version == self._data_version and not self._dirty:
                return 0
            self._data_version, self._dirty = version, False
            oldest = self._db.execute("SELECT MIN(seq) FROM changes").fetchone()[0]
            if oldest is not None and oldest > self._seq + 1:  # pruned past us: rebuild
                before = len(self._spaces["collection"])
                self._load()
                return max(before, len(self._spaces["collection"]))
            log = self._db.execute("SELECT seq, row_id FROM changes WHERE seq > ? ORDER BY seq", (self._seq,))
            log = log.fetchall()
            if not log:
                return 0
            self._seq = log[-1][0]
            ids = list(dict.fromkeys(r for _, r in log))
            self._apply_rows(ids)
            self._maybe_compact()
            return len(ids)

    def _maybe_compact(self) -> None:
        for space in self._spaces.values():
            thread = space.compact(self._lock, self.background_compaction)
            if thread is not None:
                self._compaction = thread

    def wait_for_compaction(self, timeout: float | None = None) -> None:
        """Block until a background index rebuild (if any) has been installed (tests, benches)."""
        if self._compaction is not None:
            self._compaction.join(timeout)

    def index_stats(self) -> dict[str, dict]:
        """Per vector space: live vectors, tombstones, kind and the log position applied."""
        with self._lock:
            return {
                name: {
                    "vectors": len(s),
                    "tombstones": s.tombstones,
                    "kind": "hnsw" if s.is_hnsw else "flat",
                    "seq": self._seq,
                }
                for name, s in self._spaces.items()
            }

    def _check(self, vector: np.ndarray | None, dim: int, what: str) -> np.ndarray | None:
        if vector is None:
            return None
        vec = np.asarray(vector, dtype=np.float32).reshape(-1)
        if dim and vec.shape[0] != dim:  # dim 0: kept in the row, not indexed (no such space here)
            raise ValueError(f"{what} vector has {vec.shape[0]} dims, catalog expects {dim}")
        return vec

    @contextmanager
    def _writing(self):
        """One write transaction under the lock: rolled back on any error; after the commit the change log
        is pruned and applied to this process's indexes."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise
            self._dirty = True
            seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM changes").fetchone()[0]
            if seq % 1000 == 0 or seq - self._seq > 1000:
                self._db.execute("DELETE FROM changes WHERE seq <= ?", (seq - LOG_KEEP,))
            self.sync()

    # -- writes ------------------------------------------------------------------------------------
    def upsert(
        self, token: Token, vector: np.ndarray, image: bytes | None = None, instance: np.ndarray | None = None
    ) -> Token:
        return self.upsert_many([(token, vector, image, instance)])[0]

    def upsert_many(self, items: list[tuple]) -> list[Token]:
        """Insert or update tokens in one transaction (a token keeps its identity and `created_at`), then
        make them searchable. Returns the tokens as written, so callers never read back (no race with a
        concurrent delete).

        Items are (token, collection vector, image bytes or None[, instance vector or None]).
        """
        now = utc_now()
        written: list[Token] = []
        with self._writing():
            for token, vector, image, *rest in items:
                vec = self._check(vector, self.dim, "collection")
                inst = self._check(rest[0] if rest else None, self.instance_dim, "instance")
                created = self._db.execute(
                    "INSERT INTO tokens (collection, token_id, metadata, model, model_label, dim, vector,"
                    " image, image_sha256, created_at, updated_at, instance, fingerprint)"
                    " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
                    " ON CONFLICT (collection, token_id) DO UPDATE SET metadata=excluded.metadata,"
                    " model=excluded.model, model_label=excluded.model_label, dim=excluded.dim,"
                    " vector=excluded.vector, image=excluded.image, image_sha256=excluded.image_sha256,"
                    " updated_at=excluded.updated_at, instance=excluded.instance,"
                    " fingerprint=excluded.fingerprint"
                    " RETURNING created_at",
                    (
                        token.collection,
                        token.token_id,
                        json.dumps(token.metadata),
                        self.model_key,
                        self.model_label,
                        self.dim,
                        vec.tobytes(),
                        image,
                        token.image_sha256 or None,
                        now,
                        now,
                        inst.tobytes() if inst is not None else None,
                        token.fingerprint or None,
                    ),
                ).fetchone()[0]
                written.append(as_written(token, self.model_key, self.model_label, created, now))
        return written

    def delete(self, collection: str, token_id: str) -> bool:
        with self._writing():
            gone = self._db.execute(
                "DELETE FROM tokens WHERE collection=? AND token_id=? RETURNING id", (collection, token_id)
            ).fetchall()
        return bool(gone)

    def delete_collection(self, collection: str) -> int:
        """Delete every token of a collection; returns how many."""
        with self._writing():
            n = self._db.execute("DELETE FROM tokens WHERE collection=?", (collection,)).rowcount
        return n

    def drop_superseded(self) -> int:
        """Nothing to drop: a token has one row here, updated in place by a reindex."""
        return 0

    # -- reads -------------------------------------------------------------------------------------
    def get(self, collection: str, token_id: str, with_vector: bool = False) -> Token | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_TOKEN_COLUMNS}, vector, instance FROM tokens WHERE collection=? AND token_id=?",
                (collection, token_id),
            ).fetchone()
        if not row:
            return None
        vec = np.frombuffer(row[8], dtype=np.float32).copy() if with_vector else None
        inst = np.frombuffer(row[9], dtype=np.float32).copy() if with_vector and row[9] else None
        return _token(row, vec, inst)

    def list_tokens(
        self, collection: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Token], str | None]:
        """One page of tokens ordered by (collection, token_id), and the cursor of the next page (None at
        the end). Stable under concurrent writes: a page starts strictly after the cursor's token."""
        where, args = [], []
        if collection is not None:
            where.append("collection = ?")
            args.append(collection)
        if cursor:
            where.append("(collection, token_id) > (?, ?)")
            args += decode_cursor(cursor)
        sql = f"SELECT {_TOKEN_COLUMNS} FROM tokens"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY collection, token_id LIMIT ?"
        with self._lock:
            rows = self._db.execute(sql, (*args, limit + 1)).fetchall()
        tokens = [_token(r) for r in rows[:limit]]
        more = len(rows) > limit
        return tokens, encode_cursor(tokens[-1].collection, tokens[-1].token_id) if more else None

    def search(
        self, vector: np.ndarray, k: int, flt: SearchFilter | None = None, space: str = "collection"
    ) -> list[Neighbour]:
        """The k most similar current-model tokens passing `flt` in one vector space, best first.

        Collection filters run inside the index search; only the query token itself and `min_score` are
        applied to the results.
        """
        flt = flt or SearchFilter()
        if space not in self._spaces:
            raise ValueError(f"this catalog has no {space!r} vectors (the model has no such output)")
        with self._lock:
            self.sync()
            extra = 1 if flt.exclude else 0
            hits = self._spaces[space].search(vector, k + extra, flt.collections, flt.exclude_collections)
            meta = self._rows_by_id([i for i, _ in hits])
        out = []
        for i, s in hits:
            if i in meta and flt.allows(meta[i][0], meta[i][1], s):
                out.append(Neighbour(meta[i][0], meta[i][1], s, meta[i][2]))
        return out[:k]

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
                self._db.execute(
                    "SELECT collection, COUNT(*) FROM tokens GROUP BY collection ORDER BY collection"
                ).fetchall()
            )

    def stored_hashes(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(collection, token_id) -> (model key, image sha256) of every stored token (bulk-index resume)."""
        with self._lock:
            rows = self._db.execute("SELECT collection, token_id, model, image_sha256 FROM tokens").fetchall()
        return {(r[0], r[1]): (r[2], r[3] or "") for r in rows}

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
                    "SELECT collection, token_id, metadata, image, image_sha256 FROM tokens"
                    f" WHERE id IN ({','.join('?' * len(ids))})",
                    ids,
                ).fetchall()
            yield [(Token(r[0], r[1], json.loads(r[2]), image_sha256=r[4] or ""), r[3]) for r in rows]

    def close(self) -> None:
        self.wait_for_compaction()
        with self._lock:
            self._db.close()
