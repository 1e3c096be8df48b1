"""The catalog interface: a durable record of tokens and a cosine-similarity search over their vectors."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np


def utc_now() -> str:
    """Timestamp stored on catalog rows (UTC, ISO 8601, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class Token:
    collection: str
    token_id: str
    metadata: dict = field(default_factory=dict)
    model: str = ""  # sha256 of the ONNX file that made the vectors (the catalog's model key)
    created_at: str = ""
    updated_at: str = ""
    vector: np.ndarray | None = None  # the collection embedding (with_vector reads)
    instance: np.ndarray | None = None  # the instance embedding, when the model has one
    fingerprint: str = ""  # app.fingerprint.pixel_fingerprint of the image (exact-copy lookup)
    model_label: str = ""  # "name@version" of that model, for people
    image_sha256: str = ""  # sha256 of the stored image bytes (bulk indexing resumes by it)


def as_written(token: Token, model_key: str, model_label: str, created_at: str, updated_at: str) -> Token:
    """The record a catalog answers a write with: what the caller sent, stamped with model and times."""
    return Token(
        token.collection,
        token.token_id,
        token.metadata,
        model_key,
        created_at,
        updated_at,
        fingerprint=token.fingerprint,
        model_label=model_label,
        image_sha256=token.image_sha256,
    )


@dataclass
class Neighbour:
    collection: str
    token_id: str
    score: float
    metadata: dict


def best_per_token(hits: Iterable[Neighbour]) -> list[Neighbour]:
    """Each token's best hit (searches over several query views meet), best score first."""
    best: dict[tuple[str, str], Neighbour] = {}
    for h in hits:
        key = (h.collection, h.token_id)
        if key not in best or h.score > best[key].score:
            best[key] = h
    return sorted(best.values(), key=lambda h: -h.score)


@dataclass
class SearchFilter:
    """Which tokens a search may return."""

    collections: set[str] | None = None  # only these collections
    exclude_collections: set[str] | None = None  # never these
    exclude: tuple[str, str] | None = None  # the query token itself
    min_score: float | None = None

    def allows(self, collection: str, token_id: str, score: float) -> bool:
        if self.exclude == (collection, token_id):
            return False
        if self.collections is not None and collection not in self.collections:
            return False
        if self.exclude_collections and collection in self.exclude_collections:
            return False
        return self.min_score is None or score >= self.min_score


class Catalog(Protocol):
    """What the service needs from a token index. Vectors are L2-normalised; score = cosine similarity.

    Each token carries a collection vector and, when the model has an instance head, an instance vector;
    each kind has its own index.
    """

    model_key: str  # sha256 of the serving model's ONNX file: vectors of other models are never searched

    def upsert(
        self, token: Token, vector: np.ndarray, image: bytes | None = None, instance: np.ndarray | None = None
    ) -> Token: ...
    def upsert_many(self, items: list[tuple]) -> list[Token]:
        """Items: (token, collection vector, image bytes or None[, instance vector or None]); returns the
        tokens as written (callers never read back)."""

    def get(self, collection: str, token_id: str, with_vector: bool = False) -> Token | None: ...
    def delete(self, collection: str, token_id: str) -> bool: ...
    def delete_collection(self, collection: str) -> int: ...
    def list_tokens(
        self, collection: str | None = None, cursor: str | None = None, limit: int = 100
    ) -> tuple[list[Token], str | None]:
        """A page ordered by (collection, token_id) and the next page's cursor (None at the end)."""

    def collections(self) -> dict[str, int]: ...
    def stored_hashes(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(collection, token_id) -> (model key, image sha256) of every stored token."""

    def drop_superseded(self) -> int:
        """Delete other models' rows of tokens the serving model has embedded (after a reindex)."""

    def sync(self) -> int:
        """Make other processes' committed writes searchable here; returns rows applied."""

    def search(
        self, vector: np.ndarray, k: int, flt: SearchFilter | None = None, space: str = "collection"
    ) -> list[Neighbour]:
        """Best-first neighbours in `space`: "collection" (/similar) or "instance" (/copies)."""

    def count(self) -> int: ...
    def stale_count(self) -> int: ...
    def find_exact(self, fingerprint: str, flt: SearchFilter | None = None) -> list[Neighbour]:
        """Tokens whose stored pixel fingerprint equals `fingerprint` (score 1.0), whatever the model."""

    def image(self, collection: str, token_id: str) -> bytes | None: ...
    def iter_images(self, only_stale: bool = True, batch: int = 256): ...
    def close(self) -> None: ...
