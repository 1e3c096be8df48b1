"""Token catalogs behind one interface: `open_catalog` picks the backend from a URL or path."""

from __future__ import annotations

from app.catalog.base import Catalog, Neighbour, SearchFilter, Token
from app.catalog.sqlite_faiss import SqliteFaissCatalog

__all__ = ["Catalog", "Neighbour", "SearchFilter", "Token", "SqliteFaissCatalog", "open_catalog"]


def open_catalog(url: str, dim: int, model_key: str, index: str = "flat") -> Catalog:
    """`path/to/catalog.db` (or `sqlite:///path`) -> SQLite + FAISS."""
    if url.startswith("milvus://"):
        raise ValueError("the Milvus catalog is not available in this build; use a SQLite path")
    return SqliteFaissCatalog(url.removeprefix("sqlite:///"), dim, model_key, index)
