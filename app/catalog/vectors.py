"""One vector space held in memory: a global FAISS index for wide searches plus exact per-collection shards.

- The **graph** holds every live vector at a position (flat inner product, or HNSW for large catalogs).
  A replaced or deleted vector leaves a tombstone at its old position; a bitmap of live positions is
  passed to FAISS as an `IDSelectorBitmap`, so tombstones and collection filters are applied *inside*
  the search, never by fetching extra results. When tombstones pass `compact_fraction` of the graph, it
  is rebuilt from the live vectors (off the caller's thread for HNSW), so search cost never grows with
  churn.
- The **shards** are one exact `IndexFlatIP` per collection. A search restricted to collections holding
  at most `exact_limit` vectors in all runs on their shards: exact, and cheaper than a filtered graph walk.

Scores are inner products of L2-normalised vectors (cosine similarity). Not thread-safe: the owner locks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["auto", "flat", "hnsw"]


def _graph(dim: int, hnsw: bool, m: int, ef_construction: int) -> faiss.Index:
    if not hnsw:
        return faiss.IndexFlatIP(dim)
    index = faiss.IndexHNSWFlat(dim, m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = ef_construction
    return index


class VectorSpace:
    """Live vectors keyed by catalog row id, searchable globally or per collection."""

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "auto",
        *,
        ef_search: int = 64,
        m: int = 32,
        ef_construction: int = 100,
        hnsw_above: int = 50_000,
        exact_limit: int = 20_000,
        compact_fraction: float = 0.2,
    ):
        self.dim, self.kind = dim, kind
        self.ef_search, self.m, self.ef_construction = ef_search, m, ef_construction
        self.hnsw_above, self.exact_limit, self.compact_fraction = hnsw_above, exact_limit, compact_fraction
        self._shards: dict[str, faiss.IndexIDMap2] = {}
        self._row_coll: dict[int, str] = {}  # live row -> collection
        self._row_pos: dict[int, int] = {}  # live row -> graph position
        self._codes: dict[str, int] = {}  # collection -> small int stored per position
        self._reset_graph(self._wants_hnsw(0))
        self._touched: set[int] | None = None  # rows changed while a compaction builds

    # -- state -------------------------------------------------------------------------------------
    def _wants_hnsw(self, live: int) -> bool:
        return self.kind == "hnsw" or (self.kind == "auto" and live > self.hnsw_above)

    def _reset_graph(self, hnsw: bool) -> None:
        self.graph = _graph(self.dim, hnsw, self.m, self.ef_construction)
        self.is_hnsw = hnsw
        self._pos_row = np.empty(0, np.int64)
        self._pos_code = np.empty(0, np.int32)
        self._live = np.empty(0, bool)
        self._bitmap: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self._row_coll)

    @property
    def tombstones(self) -> int:
        return int(self.graph.ntotal) - len(self._row_pos)

    def sizes(self) -> dict[str, int]:
        """Live vectors per collection."""
        return {c: int(s.ntotal) for c, s in self._shards.items() if s.ntotal}

    def _code(self, collection: str) -> int:
        return self._codes.setdefault(collection, len(self._codes))

    # -- writes ------------------------------------------------------------------------------------
    def remove(self, rows: Iterable[int]) -> None:
        """Drop rows (absent ones are ignored); their graph positions become tombstones."""
        by_shard: dict[str, list[int]] = {}
        for row in rows:
            coll = self._row_coll.pop(row, None)
            if coll is None:
                continue
            by_shard.setdefault(coll, []).append(row)
            pos = self._row_pos.pop(row, None)
            if pos is not None:
                self._live[pos] = False
            if self._touched is not None:
                self._touched.add(row)
        for coll, ids in by_shard.items():
            self._shards[coll].remove_ids(np.asarray(ids, dtype=np.int64))
        if by_shard:
            self._bitmap = None

    def put(self, rows: list[int], collections: list[str], vectors: np.ndarray) -> None:
        """Add rows, replacing any vector a row already has."""
        if not rows:
            return
        self.remove(rows)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(rows), self.dim)
        by_shard: dict[str, list[int]] = {}
        for i, coll in enumerate(collections):
            by_shard.setdefault(coll, []).append(i)
        for coll, idx in by_shard.items():
            shard = self._shards.get(coll)
            if shard is None:
                shard = self._shards[coll] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            shard.add_with_ids(vectors[idx], np.asarray([rows[i] for i in idx], dtype=np.int64))
        start = int(self.graph.ntotal)
        self.graph.add(vectors)
        self._pos_row = np.concatenate([self._pos_row, np.asarray(rows, dtype=np.int64)])
        self._pos_code = np.concatenate(
            [self._pos_code, np.asarray([self._code(c) for c in collections], dtype=np.int32)]
        )
        self._live = np.concatenate([self._live, np.ones(len(rows), bool)])
        for i, (row, coll) in enumerate(zip(rows, collections, strict=True)):
            self._row_coll[row] = coll
            self._row_pos[row] = start + i
            if self._touched is not None:
                self._touched.add(row)
        self._bitmap = None

    # -- compaction --------------------------------------------------------------------------------
    def needs_compaction(self) -> bool:
        """True when tombstones pass the fraction, or the catalog grew past the auto HNSW size."""
        if self._touched is not None:
            return False  # one build at a time
        total = int(self.graph.ntotal)
        churn = self.tombstones > max(256, self.compact_fraction * total)
        return churn or self._wants_hnsw(len(self)) != self.is_hnsw

    def snapshot(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """(rows, collections, vectors) of every live vector, read from the shards; starts recording the
        rows changed from now on, which `install` replays."""
        rows, colls, vecs = [], [], []
        for coll, shard in self._shards.items():
            n = int(shard.ntotal)
            if not n:
                continue
            rows.append(faiss.vector_to_array(shard.id_map).copy())
            vecs.append(faiss.downcast_index(shard.index).reconstruct_n(0, n))
            colls += [coll] * n
        self._touched = set()
        if not rows:
            return np.empty(0, np.int64), [], np.empty((0, self.dim), np.float32)
        return np.concatenate(rows), colls, np.concatenate(vecs)

    def build(self, rows: np.ndarray, colls: list[str], vecs: np.ndarray) -> faiss.Index:
        """A fresh graph over a snapshot: slow for HNSW, needs no lock (touches no shared state)."""
        graph = _graph(self.dim, self._wants_hnsw(len(rows)), self.m, self.ef_construction)
        for start in range(0, len(rows), 65_536):
            graph.add(vecs[start : start + 65_536])
        return graph

    def install(self, graph: faiss.Index, rows: np.ndarray, colls: list[str]) -> None:
        """Swap in a graph built from `snapshot`, then re-add what changed since (under the owner's lock)."""
        touched, self._touched = self._touched or set(), None
        self.graph, self.is_hnsw = graph, isinstance(graph, faiss.IndexHNSW)
        self._pos_row = np.asarray(rows, dtype=np.int64)
        self._pos_code = np.asarray([self._code(c) for c in colls], dtype=np.int32)
        self._live = np.ones(len(rows), bool)
        self._row_pos = {int(r): i for i, r in enumerate(self._pos_row)}
        self._bitmap = None
        for row in touched:  # changed during the build: the snapshot's copy is stale or gone
            pos = self._row_pos.pop(row, None)
            if pos is not None:
                self._live[pos] = False
        again = [r for r in touched if r in self._row_coll]
        if again:
            colls_again = [self._row_coll[r] for r in again]
            vecs = np.stack([self._shards[c].reconstruct(r) for r, c in zip(again, colls_again, strict=True)])
            self.put(again, colls_again, vecs)

    def compact(self, lock: threading.RLock, in_background: bool) -> threading.Thread | None:
        """Rebuild the graph from live vectors: inline, or on a thread (HNSW builds take seconds at 100k)."""

        def run() -> None:
            with lock:
                snap = self.snapshot()
            graph = self.build(*snap)
            with lock:
                self.install(graph, snap[0], snap[1])

        if not in_background:
            run()
            return None
        thread = threading.Thread(target=run, name="compact", daemon=True)
        thread.start()
        return thread

    # -- search ------------------------------------------------------------------------------------
    def _allowed(self, collections: set[str] | None, exclude: set[str] | None) -> list[str] | None:
        if collections is None and not exclude:
            return None
        names = self._shards.keys() if collections is None else collections & self._shards.keys()
        return [c for c in names if not (exclude and c in exclude) and self._shards[c].ntotal]

    def search(
        self,
        query: np.ndarray,
        k: int,
        collections: set[str] | None = None,
        exclude_collections: set[str] | None = None,
    ) -> list[tuple[int, float]]:
        """Up to k (row, score), best first, among live vectors of the allowed collections."""
        q = np.ascontiguousarray(query, dtype=np.float32).reshape(1, self.dim)
        allowed = self._allowed(collections, exclude_collections)
        if allowed is not None:
            n_allowed = sum(int(self._shards[c].ntotal) for c in allowed)
            if n_allowed == 0 or k <= 0:
                return []
            if not self.is_hnsw or n_allowed <= self.exact_limit:
                return self._search_shards(q, k, allowed)
        if k <= 0 or not self._row_pos:
            return []
        return self._search_graph(q, k, allowed)

    def _search_shards(self, q: np.ndarray, k: int, allowed: list[str]) -> list[tuple[int, float]]:
        hits: list[tuple[int, float]] = []
        for coll in allowed:
            shard = self._shards[coll]
            scores, ids = shard.search(q, min(k, int(shard.ntotal)))
            hits += [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        hits.sort(key=lambda h: -h[1])
        return hits[:k]

    def _live_bitmap(self) -> np.ndarray:
        if self._bitmap is None:
            self._bitmap = np.packbits(self._live, bitorder="little")
        return self._bitmap

    def _search_graph(self, q: np.ndarray, k: int, allowed: list[str] | None) -> list[tuple[int, float]]:
        live = len(self._row_pos)
        if allowed is None:
            bitmap, n = (self._live_bitmap() if self.tombstones else None), live
        else:
            codes = np.asarray([self._codes[c] for c in allowed], dtype=np.int32)
            mask = self._live & np.isin(self._pos_code, codes)
            bitmap, n = np.packbits(mask, bitorder="little"), int(mask.sum())
        k = min(k, n)
        if k <= 0:
            return []
        params = faiss.SearchParametersHNSW() if self.is_hnsw else faiss.SearchParameters()
        if self.is_hnsw:  # a filter keeps a fraction of the graph: widen the walk to match
            params.efSearch = int(min(4096, max(self.ef_search, k) * max(1.0, live / max(n, 1))))
        if bitmap is not None:
            selector = faiss.IDSelectorBitmap(len(self._live), faiss.swig_ptr(bitmap))
            params.sel = selector
        scores, pos = self.graph.search(q, k, params=params)
        return [(int(self._pos_row[p]), float(s)) for p, s in zip(pos[0], scores[0], strict=True) if p >= 0]

    def vectors_of(self, rows: list[int]) -> dict[int, np.ndarray]:
        """Stored vectors of live rows (for tests and diagnostics)."""
        return {r: self._shards[self._row_coll[r]].reconstruct(r) for r in rows if r in self._row_coll}
