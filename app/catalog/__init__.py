"""Token catalogs behind one interface: `open_catalog` picks the backend from a URL or path."""

from __future__ import annotations

from app.catalog.base import Catalog, Neighbour, SearchFilter, Token, best_per_token
from app.catalog.sqlite_faiss import SqliteFaissCatalog

__all__ = [
    "Catalog",
    "Neighbour",
    "SearchFilter",
    "Token",
    "SqliteFaissCatalog",
    "best_per_token",
    "open_catalog",
]


def open_catalog(
    url: str,
    dim: int,
    model_key: str,
    index: str = "auto",
    instance_dim: int = 0,
    model_label: str = "",
    ef_search: int = 64,
) -> Catalog:
    """Pick the backend from the URL. `model_key` is the model file's sha256; `model_label` its name@version.

    - `path/to/catalog.db` or `sqlite:///path`: SQLite + FAISS, embedded (the default)
    - `milvus://host:19530[/collection]`: a Milvus server shared by several replicas
    - `milvus-lite:///path/to/file.db`: Milvus Lite, a local file (tests, laptops)
    """
    if url.startswith(("milvus://", "milvus-lite://")):
        from app.catalog.milvus import MilvusCatalog

        if url.startswith("milvus-lite://"):
            return MilvusCatalog(
                url.removeprefix("milvus-lite://"),
                dim,
                model_key,
                instance_dim=instance_dim,
                model_label=model_label,
            )
        hostport, _, name = url.removeprefix("milvus://").partition("/")
        return MilvusCatalog(
            f"http://{hostport}",
            dim,
            model_key,
            name or "nftlens_tokens",
            instance_dim=instance_dim,
            model_label=model_label,
        )
    return SqliteFaissCatalog(
        url.removeprefix("sqlite:///"), dim, model_key, index, instance_dim, model_label, ef_search
    )
