"""Deterministic, stratified train/val/test splits from a hash of collection + token id."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

SPLITS = ("train", "val", "test")


def split_key(collection: str, token_id: str) -> str:
    """A stable pseudo-random key: the same token lands in the same split on every machine."""
    return hashlib.sha256(f"{collection}/{token_id}".encode()).hexdigest()


def assign_splits(rows: Sequence[dict], val: float = 0.1, test: float = 0.1, key: str = "label") -> list[str]:
    """Split per `key` value (stratified): order each group by hash, take the first share as test, then val.

    Groups of 3+ items get at least one val and one test item, so rare classes (9 alien punks) are
    represented everywhere. Rows sharing collection+token_id (a thumbnail and its hi-res copy) share a split.
    """
    groups: dict[str, list[tuple[str, int]]] = defaultdict(list)
    for i, row in enumerate(rows):
        groups[str(row[key])].append((split_key(str(row["collection"]), str(row["token_id"])), i))
    out = [""] * len(rows)
    for members in groups.values():
        hashes = sorted({h for h, _ in members})
        n = len(hashes)
        n_test = round(n * test)
        n_val = round(n * val)
        if n >= 3:
            n_test, n_val = max(1, n_test), max(1, n_val)
        by_hash = {
            h: ("test" if r < n_test else "val" if r < n_test + n_val else "train")
            for r, h in enumerate(hashes)
        }
        for h, i in members:
            out[i] = by_hash[h]
    return out
