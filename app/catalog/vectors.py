"""One vector space held in memory: exact per-collection shards, HNSW graphs where they pay, no tombstone
growth.

- **Shards**: one exact `IndexFlatIP` per collection (FAISS `IndexIDMap2`, ids = catalog row ids). They
  hold every live vector, answer searches restricted to small collections exactly, and are what graphs
  are rebuilt from.
- **Graphs** (`Graph`): vectors at positions of one FAISS index, flat or HNSW. One global graph answers
  unfiltered searches; with HNSW, every collection larger than `exact_limit` also gets its own graph, so a
  search restricted to collections (`same_collection`, `collections=`, or all but some) searches each
  allowed collection's own index and merges: the filter is applied *inside* the search, never by
  fetching extra results, and recall does not depend on how much of the graph the filter hides. Only a
  filter allowing more than `max_shards` collections uses the global graph with an `IDSelectorBitmap`.
- A replaced or deleted vector leaves a tombstone in a graph, masked out by the same bitmap. When
  tombstones pass `compact_fraction` of a graph it is rebuilt from the shards (on a thread for HNSW,
  then caught up with what changed meanwhile), so search cost never grows with churn.

Scores are inner products of L2-normalised vectors (cosine similarity). Not thread-safe: the owner locks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Literal

import faiss
import numpy as np

IndexKind = Literal["auto", "flat", "hnsw"]


class Graph:
    """Vectors at positions of one FAISS index (flat or HNSW); dead positions are masked in the search."""

    def __init__(self, dim: int, hnsw: bool, m: int = 32, ef_construction: int = 100):
        self.dim, self.hnsw, self.m, self.ef_construction = dim, hnsw, m, ef_construction
        self.index = self._new_index()
        self.pos_row = np.empty(0, np.int64)
        self.pos_code = np.empty(0, np.int32)  # collection code per position (global graph filters)
        self.live = np.empty(0, bool)
        self.row_pos: dict[int, int] = {}
        self._bitmap: np.ndarray | None = None
        self.touched: set[int] | None = None  # rows changed while a rebuild is building

    def _new_index(self) -> faiss.Index:
        if not self.hnsw:
            return faiss.IndexFlatIP(self.dim)
        index = faiss.IndexHNSWFlat(self.dim, self.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = self.ef_construction
        return index

    def __len__(self) -> int:
        return len(self.row_pos)

    @property
    def tombstones(self) -> int:
        return int(self.index.ntotal) - len(self.row_pos)

    def add(self, rows: list[int], vecs: np.ndarray, codes: np.ndarray) -> None:
        """Add rows that are not in the graph (remove them first to replace)."""
        start = int(self.index.ntotal)
        for s in range(0, len(rows), 65_536):
            self.index.add(np.ascontiguousarray(vecs[s : s + 65_536], dtype=np.float32))
        self.pos_row = np.concatenate([self.pos_row, np.asarray(rows, dtype=np.int64)])
        self.pos_code = np.concatenate([self.pos_code, np.asarray(codes, dtype=np.int32)])
        self.live = np.concatenate([self.live, np.ones(len(rows), bool)])
        self.row_pos.update((int(r), start + i) for i, r in enumerate(rows))
        self._bitmap = None
        if self.touched is not None:
            self.touched.update(int(r) for r in rows)

    def remove(self, rows: Iterable[int]) -> None:
        for row in rows:
            pos = self.row_pos.pop(row, None)
            if pos is not None:
                self.live[pos] = False
                self._bitmap = None
            if self.touched is not None:
                self.touched.add(row)

    def needs_compaction(self, fraction: float) -> bool:
        return self.touched is None and self.tombstones > max(256, fraction * int(self.index.ntotal))

    def search(
        self, q: np.ndarray, k: int, ef_search: int, codes: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Up to k (row, score) among live positions (and, with `codes`, positions of those collections)."""
        if codes is None:
            n = len(self.row_pos)
            bitmap = None
            if self.tombstones:
                if self._bitmap is None:
                    self._bitmap = np.packbits(self.live, bitorder="little")
                bitmap = self._bitmap
        else:
            mask = self.live & np.isin(self.pos_code, codes)
            bitmap, n = np.packbits(mask, bitorder="little"), int(mask.sum())
        k = min(k, n)
        if k <= 0:
            return []
        params = faiss.SearchParametersHNSW() if self.hnsw else faiss.SearchParameters()
        if self.hnsw:  # a filter keeps a fraction of the graph: widen the walk to match
            params.efSearch = int(min(4096, max(ef_search, k) * max(1.0, len(self.row_pos) / n)))
        if bitmap is not None:
            params.sel = faiss.IDSelectorBitmap(len(self.live), faiss.swig_ptr(bitmap))
        scores, pos = self.index.search(q, k, params=params)
        return [(int(self.pos_row[p]), float(s)) for p, s in zip(pos[0], scores[0], strict=True) if p >= 0]

    @classmethod
    def over(cls, dim: int, hnsw: bool, m: int, ef_construction: int, snapshot: tuple) -> Graph:
        """A fresh graph over a (rows, vectors, codes) snapshot (slow for HNSW; touches no shared state)."""
        graph = cls(dim, hnsw, m, ef_construction)
        graph.add(*snapshot)
        return graph


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
        exact_limit: int = 4_096,
        max_shards: int = 64,
        compact_fraction: float = 0.2,
    ):
        self.dim, self.kind = dim, kind
        self.ef_search, self.m, self.ef_construction = ef_search, m, ef_construction
        self.hnsw_above, self.exact_limit, self.max_shards = hnsw_above, exact_limit, max_shards
        self.compact_fraction = compact_fraction
        self._shards: dict[str, faiss.IndexIDMap2] = {}
        self._row_coll: dict[int, str] = {}  # live row -> collection
        self._codes: dict[str, int] = {}  # collection -> small int stored per global position
        self.graph = Graph(dim, self._wants_hnsw(0), m, ef_construction)  # every live vector
        self._own: dict[str, Graph] = {}  # HNSW graphs of the collections above exact_limit
        self._building: set[str | None] = set()  # graphs being rebuilt (None: the global one)

    # -- state -------------------------------------------------------------------------------------
    def _wants_hnsw(self, live: int) -> bool:
        return self.kind == "hnsw" or (self.kind == "auto" and live > self.hnsw_above)

    def __len__(self) -> int:
        return len(self._row_coll)

    @property
    def is_hnsw(self) -> bool:
        return self.graph.hnsw

    @property
    def tombstones(self) -> int:
        return self.graph.tombstones + sum(g.tombstones for g in self._own.values())

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
            if coll is not None:
                by_shard.setdefault(coll, []).append(row)
        for coll, ids in by_shard.items():
            shard = self._shards[coll]
            shard.remove_ids(np.asarray(ids, dtype=np.int64))
            if coll in self._own:
                self._own[coll].remove(ids)
                if shard.ntotal < self.exact_limit // 2 and coll not in self._building:
                    del self._own[coll]  # small again: the exact shard answers
        self.graph.remove(r for ids in by_shard.values() for r in ids)

    def put(self, rows: list[int], collections: list[str], vectors: np.ndarray) -> None:
        """Add rows, replacing any vector a row already has."""
        if not rows:
            return
        self.remove(rows)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(len(rows), self.dim)
        by_shard: dict[str, list[int]] = {}
        for i, coll in enumerate(collections):
            by_shard.setdefault(coll, []).append(i)
            self._row_coll[rows[i]] = coll
        for coll, idx in by_shard.items():
            ids = [rows[i] for i in idx]
            shard = self._shards.get(coll)
            if shard is None:
                shard = self._shards[coll] = faiss.IndexIDMap2(faiss.IndexFlatIP(self.dim))
            shard.add_with_ids(vectors[idx], np.asarray(ids, dtype=np.int64))
            if coll in self._own:
                self._own[coll].add(ids, vectors[idx], np.zeros(len(idx), np.int32))
        self.graph.add(rows, vectors, np.asarray([self._code(c) for c in collections], dtype=np.int32))

    # -- compaction --------------------------------------------------------------------------------
    def _due(self) -> list[str | None]:
        """Graphs to (re)build: None is the global one, a name is a collection's own graph."""
        due: list[str | None] = []
        if None not in self._building and (
            self.graph.needs_compaction(self.compact_fraction)
            or self._wants_hnsw(len(self)) != self.graph.hnsw
        ):
            due.append(None)
        for coll, shard in self._shards.items():
            if coll in self._building:
                continue
            own = self._own.get(coll)
            first = own is None and self.graph.hnsw and shard.ntotal > self.exact_limit
            churned = own is not None and own.needs_compaction(self.compact_fraction)
            if first or churned:
                due.append(coll)
        return due

    def _snapshot(self, scope: str | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, vectors, codes) of every live vector of a collection, or of all (scope None)."""
        rows, vecs, codes = [np.empty(0, np.int64)], [np.empty((0, self.dim), np.float32)], []
        for coll, shard in self._shards.items():
            n = int(shard.ntotal)
            if n and scope in (None, coll):
                rows.append(faiss.vector_to_array(shard.id_map).copy())
                vecs.append(faiss.downcast_index(shard.index).reconstruct_n(0, n))
                codes.append(np.full(n, self._code(coll) if scope is None else 0, np.int32))
        return np.concatenate(rows), np.concatenate(vecs), np.concatenate(codes or [np.empty(0, np.int32)])

    def _graph_of(self, scope: str | None) -> Graph | None:
        return self.graph if scope is None else self._own.get(scope)

    def compact(self, lock: threading.RLock, in_background: bool) -> threading.Thread | None:
        """Rebuild every graph that is due from the shards: inline, or (with `in_background`, for HNSW
        builds, which take tens of seconds at 100k vectors) on a thread; writes made meanwhile are
        replayed onto the new graph. Returns the thread, if one was started."""
        with lock:
            jobs = []
            for scope in self._due():
                hnsw = self._wants_hnsw(len(self)) if scope is None else True  # own graphs are HNSW
                current = self._graph_of(scope)
                if current is None:  # a collection's first graph: empty, collecting writes until built
                    current = self._own[scope] = Graph(self.dim, True, self.m, self.ef_construction)
                current.touched = set()
                self._building.add(scope)
                jobs.append((scope, hnsw, self._snapshot(scope)))
        if not jobs:
            return None

        def run() -> None:
            built = [
                (scope, Graph.over(self.dim, hnsw, self.m, self.ef_construction, snap))
                for scope, hnsw, snap in jobs
            ]
            with lock:
                for scope, graph in built:
                    self._install(scope, graph)

        if not (in_background and any(hnsw for _, hnsw, _ in jobs)):
            run()
            return None
        thread = threading.Thread(target=run, name="compact", daemon=True)
        thread.start()
        return thread

    def _install(self, scope: str | None, graph: Graph) -> None:
        self._building.discard(scope)
        old = self._graph_of(scope)
        touched = (old.touched if old is not None else None) or set()
        if scope is not None and scope not in self._own:
            return  # dropped while building
        if scope is None:
            self.graph = graph
            if not graph.hnsw:
                self._own.clear()  # a flat global graph is exact: collections need no graphs of their own
        else:
            self._own[scope] = graph
        graph.remove(touched)  # the snapshot's copies of rows changed since are stale or gone
        again = [r for r in touched if r in self._row_coll and scope in (None, self._row_coll[r])]
        if again:
            colls = [self._row_coll[r] for r in again]
            vecs = np.stack([self._shards[c].reconstruct(r) for r, c in zip(again, colls, strict=True)])
            codes = [self._code(c) if scope is None else 0 for c in colls]
            graph.add(again, vecs, np.asarray(codes, dtype=np.int32))

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
        if k <= 0:
            return []
        allowed = self._allowed(collections, exclude_collections)
        if allowed is None:
            return self.graph.search(q, k, self.ef_search)
        if len(allowed) > self.max_shards:
            codes = np.asarray([self._codes[c] for c in allowed], dtype=np.int32)
            return self.graph.search(q, k, self.ef_search, codes)
        hits: list[tuple[int, float]] = []
        # a query far from a collection walks its graph less well: merged searches walk twice as wide
        ef = self.ef_search * (2 if len(allowed) > 1 else 1)
        for coll in allowed:
            own = self._own.get(coll)
            if own is not None and coll not in self._building:
                hits += own.search(q, k, ef)
                continue
            shard = self._shards[coll]
            scores, ids = shard.search(q, min(k, int(shard.ntotal)))
            hits += [(int(i), float(s)) for i, s in zip(ids[0], scores[0], strict=True) if i >= 0]
        hits.sort(key=lambda h: -h[1])
        return hits[:k]

    def vectors_of(self, rows: list[int]) -> dict[int, np.ndarray]:
        """Stored vectors of live rows (for tests and diagnostics)."""
        return {r: self._shards[self._row_coll[r]].reconstruct(r) for r in rows if r in self._row_coll}
