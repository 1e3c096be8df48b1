"""Bulk (re-)embedding into the catalog with batched inference, outside the HTTP path."""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from app.catalog import Catalog, Token
from app.errors import NftlensError
from app.fingerprint import pixel_fingerprint
from app.imaging import IMAGE_SUFFIXES
from app.inference import OnnxModel
from app.preprocessing import decode_and_preprocess
from app.views import ViewSet

_BASE = {"path", "collection", "token_id", "label", "split"}


def items_from_source(source: Path, collection: str | None = None) -> list[tuple[Token, Path]]:
    """Tokens to index from a standard dataset folder / manifest.csv, or a plain folder of images.

    From a manifest, metadata keeps the label and the non-empty, non-zero attribute columns.
    """
    source = Path(source)
    manifest = source if source.suffix == ".csv" else source / "manifest.csv"
    if manifest.is_file():
        out = []
        with open(manifest, newline="") as fh:
            for r in csv.DictReader(fh):
                attrs = {k: v for k, v in r.items() if k not in _BASE and v not in ("", "0", None)}
                meta = {"label": r.get("label", ""), "attributes": attrs}
                out.append(
                    (Token(collection or r["collection"], r["token_id"], meta), manifest.parent / r["path"])
                )
        return out
    if not source.is_dir():
        raise FileNotFoundError(
            f"{source}: neither a dataset folder with manifest.csv nor a folder of images"
        )
    if not collection:
        raise ValueError("indexing a plain folder of images needs --collection")
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    return [(Token(collection, p.stem, {}), p) for p in files]


def embed_into_catalog(
    model: OnnxModel,
    catalog: Catalog,
    items: Iterable[tuple[Token, bytes]],
    total: int,
    batch: int = 64,
    desc: str = "index",
    threads: int = 4,
) -> dict[str, int]:
    """Embed (token, image bytes) pairs in batches and upsert them; undecodable images are counted, skipped."""
    cfg = model.manifest.preprocessing
    done = failed = 0
    pending: list[tuple[Token, bytes]] = []

    def flush(pool: ThreadPoolExecutor) -> None:
        nonlocal done, failed
        prepared = list(pool.map(lambda it: safe_prepare(it[1], cfg), pending))
        ok = [(it, p) for it, p in zip(pending, prepared, strict=True) if p is not None]
        failed += len(pending) - len(ok)
        if ok:
            out = model.run(np.stack([t for _, (t, _, _) in ok]))
            emb, inst = out["embedding"], out.get("instance")
            catalog.upsert_many(
                [
                    (
                        replace(
                            tok,
                            fingerprint=fp,
                            image_sha256=tok.image_sha256 or hashlib.sha256(data).hexdigest(),
                        ),
                        emb[i],
                        data,
                        inst[i] if inst is not None else None,
                    )
                    for i, ((tok, data), (_, fp, _)) in enumerate(ok)
                ]
            )
            done += len(ok)
        bar.update(len(pending))
        pending.clear()

    with ThreadPoolExecutor(threads) as pool, tqdm(total=total, desc=desc, unit="img") as bar:
        for item in items:
            pending.append(item)
            if len(pending) >= batch:
                flush(pool)
        if pending:
            flush(pool)
    return {"indexed": done, "failed": failed}


def safe_prepare(data: bytes, cfg, views: ViewSet | None = None) -> tuple[np.ndarray, str, np.ndarray] | None:
    """(network input, pixel fingerprint, decoded RGB) for image bytes, or None when they cannot be
    decoded; with `views`, the inputs of those views [V, 3, S, S] instead of the one input."""
    try:
        rgb, tensor = decode_and_preprocess(data, cfg)
    except NftlensError:
        return None
    return (tensor if views is None else views.inputs(rgb, tensor, cfg)), pixel_fingerprint(rgb), rgb


def index_source(
    model: OnnxModel, catalog: Catalog, source: Path, collection: str | None = None, batch: int = 64
) -> dict[str, int]:
    """Embed a dataset folder or image folder into the catalog, resuming: a token already stored by this
    model from the same image bytes (sha256) is skipped. Returns indexed/skipped/failed counts."""
    items = items_from_source(source, collection)
    stored = catalog.stored_hashes()
    todo: list[tuple[Token, bytes]] = []
    for token, path in tqdm(items, desc="check", unit="img", leave=False):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if stored.get((token.collection, token.token_id)) != (catalog.model_key, digest):
            todo.append((replace(token, image_sha256=digest), path))  # hashed once: embedding keeps it
    result = embed_into_catalog(model, catalog, ((t, p.read_bytes()) for t, p in todo), len(todo), batch)
    return {**result, "skipped": len(items) - len(todo), "catalog": catalog.count()}


def reindex(model: OnnxModel, catalog: Catalog, everything: bool = False, batch: int = 64) -> dict[str, int]:
    """Re-embed, in place, stored images embedded by another model (or all, with `everything`)."""
    total = catalog.count() if everything else catalog.stale_count()

    def rows():
        for chunk in catalog.iter_images(only_stale=not everything, batch=batch):
            yield from chunk

    result = embed_into_catalog(model, catalog, rows(), total, batch, desc="reindex")
    catalog.drop_superseded()  # Milvus: other models' rows of the migrated tokens
    return result
