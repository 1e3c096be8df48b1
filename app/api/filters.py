"""Query-string collection filters shared by /similar and /copies."""

from __future__ import annotations

from app.catalog import SearchFilter


def parse_collections(raw: str | None) -> set[str] | None:
    """`a,b` -> {"a", "b"}; empty or missing -> None (no restriction)."""
    return {c.strip() for c in raw.split(",") if c.strip()} if raw else None


def collection_filter(
    collections: str | None,
    min_score: float | None = None,
    query: tuple[str, str] | None = None,
    same_collection: bool | None = None,
) -> SearchFilter:
    """A SearchFilter from the common query parameters; `query` is the stored token searched from (it is
    excluded, and `same_collection` true/false keeps only/never its collection)."""
    flt = SearchFilter(collections=parse_collections(collections), exclude=query, min_score=min_score)
    if query is not None and same_collection is True:
        flt.collections = (flt.collections or {query[0]}) & {query[0]}
    elif query is not None and same_collection is False:
        flt.exclude_collections = {query[0]}
    return flt
