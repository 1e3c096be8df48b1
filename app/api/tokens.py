"""The catalog's records: PUT/GET/DELETE /tokens/{collection}/{token_id}, GET /tokens (cursor pages), bulk
PUT /tokens, GET /collections and DELETE /collections/{collection}. Writes answer with what they wrote."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response
from pydantic import TypeAdapter, ValidationError

from app.api.deps import CollectionPath, TokenPath, get_service, require_api_key
from app.api.schemas import (
    IMAGE_ERRORS,
    NAME_PATTERN,
    BulkPut,
    BulkTokenSpec,
    CollectionDeleted,
    Collections,
    TokenDeleted,
    TokenMetadata,
    TokenOut,
    TokenPage,
    errors,
    inline_schema,
)
from app.api.uploads import image_body_doc, images_body_doc, read_upload, read_uploads
from app.catalog import Token
from app.errors import (
    ImageTooLargeError,
    InvalidCursorError,
    InvalidParametersError,
    NftlensError,
    NotFoundError,
)
from app.imaging import media_type
from app.service import Prediction, Service

router = APIRouter(tags=["tokens"])
WRITE = [Depends(require_api_key)]
METADATA = TypeAdapter(TokenMetadata)
BULK_SPECS = TypeAdapter(list[BulkTokenSpec])
METADATA_DOC = {
    **inline_schema(TokenMetadata),
    "description": "JSON object: name, image_url, attributes (other keys are ignored); at most "
    "NFTLENS_MAX_METADATA_BYTES (16 KiB) as compact JSON",
}
BULK_TOKENS_DOC = {
    "type": "array",
    "minItems": 1,
    "description": "one {collection, token_id, metadata} per `files` part, in the same order",
    "items": inline_schema(BulkTokenSpec),
}


def token_json(t: Token, with_vector: bool = False) -> dict:
    body = {
        "collection": t.collection,
        "token_id": t.token_id,
        "metadata": t.metadata,
        "model": t.model_label or t.model,
        "model_sha256": t.model,
        "created_at": t.created_at,
        "updated_at": t.updated_at,
    }
    if with_vector and t.vector is not None:
        body["vector"] = t.vector.tolist()
    return body


def form_json(fields: dict[str, str], name: str, adapter: TypeAdapter, default: Any = None) -> Any:
    """A form field holding JSON, validated by `adapter` (`default` when absent or empty; 422 when it does
    not fit its schema)."""
    raw = fields.get(name)
    if not raw:
        return default
    try:
        return adapter.validate_json(raw)
    except ValidationError as exc:
        raise InvalidParametersError(f"`{name}` does not fit its schema (see /openapi.json): {exc}") from exc


def metadata_json(meta: TokenMetadata, limit: int) -> dict:
    """The metadata to store, at most `limit` bytes as compact JSON (413 above)."""
    out = meta.stored()
    size = len(json.dumps(out, separators=(",", ":"), ensure_ascii=False).encode())
    if size > limit:
        raise ImageTooLargeError(f"metadata is {size} bytes as JSON; the limit is {limit} bytes")
    return out


def bulk_entry(
    index: int,
    part: tuple[str, bytes | NftlensError] | None,
    spec: BulkTokenSpec | None,
    seen: set,
    limit: int,
) -> tuple[dict, tuple[str, str, dict, bytes] | None]:
    """One bulk item (a `files` part and its `tokens` entry, either may be missing) checked before anything
    is embedded: its response item, and (collection, token_id, metadata, image bytes) to embed, or None
    when the item already failed."""
    item: dict[str, Any] = {"index": index}
    if part is not None:
        item["filename"] = part[0]
    if spec is not None:
        item.update(collection=spec.collection, token_id=spec.token_id)
    try:
        if spec is None:
            raise InvalidParametersError(f"file {index} has no `tokens` entry")
        if part is None:
            raise InvalidParametersError(f"`tokens` entry {index} has no `files` part")
        if (spec.collection, spec.token_id) in seen:
            raise InvalidParametersError(
                f"{spec.collection}/{spec.token_id} appears more than once in this request"
            )
        seen.add((spec.collection, spec.token_id))
        meta = metadata_json(spec.metadata, limit)
        if isinstance(part[1], NftlensError):
            raise part[1]
        return item, (spec.collection, spec.token_id, meta, part[1])
    except NftlensError as exc:
        return {**item, **exc.item()}, None


def new_token(collection: str, token_id: str, metadata: dict, data: bytes, pred: Prediction) -> Token:
    return Token(
        collection,
        token_id,
        metadata,
        fingerprint=pred.fingerprint,
        image_sha256=hashlib.sha256(data).hexdigest(),
    )


async def write(service: Service, items: list[tuple[Token, Prediction, bytes]]) -> list[Token]:
    """Store embedded tokens in one catalog transaction; returns what was written (never read back, so a
    concurrent DELETE cannot turn an acknowledged write into an error)."""
    rows = [(token, pred.embedding, data, pred.instance) for token, pred, data in items]
    written = await service.in_catalog(service.catalog.upsert_many, rows)
    await refresh_size(service)
    return written


async def refresh_size(service: Service) -> None:
    service.metrics.catalog_size.set(await service.in_catalog(service.catalog.count))


@router.put(
    "/tokens/{collection}/{token_id}",
    dependencies=WRITE,
    response_model=TokenOut,
    response_model_exclude_unset=True,
    responses=errors(*IMAGE_ERRORS, 401),
    openapi_extra=image_body_doc({"metadata": METADATA_DOC}),
)
async def put_token(
    request: Request,
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    service: Service = Depends(get_service),
) -> dict:
    """Embed the image and store it (image bytes kept for reindexing) with optional JSON `metadata`."""
    limit = service.settings.max_metadata_bytes
    data, fields = await read_upload(request, service.settings.max_upload_bytes, limit)
    meta = metadata_json(form_json(fields, "metadata", METADATA, TokenMetadata()), limit)
    pred = await service.predict(data, fingerprint=True)
    [stored] = await write(service, [(new_token(collection, token_id, meta, data, pred), pred, data)])
    return token_json(stored)


@router.put(
    "/tokens",
    dependencies=WRITE,
    response_model=BulkPut,
    response_model_exclude_unset=True,
    responses=errors(400, 401, 413, 415, 422, 503),
    openapi_extra=images_body_doc({"tokens": BULK_TOKENS_DOC}, required=("tokens",)),
)
async def put_tokens(request: Request, service: Service = Depends(get_service)) -> dict:
    """Store several tokens in one request: multipart `files` (the images, at most NFTLENS_MAX_BATCH_FILES,
    together at most NFTLENS_MAX_UPLOAD_BYTES) and `tokens`, a JSON array with one `{collection, token_id,
    metadata}` per file, in the same order. A `tokens` field that does not fit its schema fails the request
    (422). Otherwise each item (the file and the entry at one index) answers with its own status: a bad
    image, metadata over the cap, a repeated token, or a file without an entry (or an entry without a file)
    fails only that item, and every good item is written in one catalog transaction."""
    s = service.settings
    parts, fields = await read_uploads(
        request, s.max_upload_bytes, s.max_batch_files, s.max_batch_files * (s.max_metadata_bytes + 256)
    )
    specs = form_json(fields, "tokens", BULK_SPECS)
    if specs is None:
        raise InvalidParametersError(
            "multipart body needs a `tokens` field: a JSON array, one entry per file"
        )
    if len(specs) > s.max_batch_files:
        raise InvalidParametersError(f"`tokens` has {len(specs)} entries; the limit is {s.max_batch_files}")
    seen: set[tuple[str, str]] = set()
    checked = [
        bulk_entry(i, part, spec, seen, s.max_metadata_bytes)
        for i, (part, spec) in enumerate(itertools.zip_longest(parts, specs))
    ]

    async def embed(item: dict, work: tuple | None) -> Prediction | None:
        if work is not None:
            try:
                return await service.predict(work[3], fingerprint=True)
            except NftlensError as exc:
                item.update(exc.item())
        return None

    preds = await asyncio.gather(*(embed(item, work) for item, work in checked))
    todo = [
        (item, new_token(*work, pred), pred, work[3])
        for (item, work), pred in zip(checked, preds, strict=True)
        if pred is not None
    ]
    written = await write(service, [(token, pred, data) for _, token, pred, data in todo]) if todo else []
    for (item, *_), token in zip(todo, written, strict=True):
        item.update(status=200, token=token_json(token))
    for item, _ in checked:
        if item["status"] != 200:
            service.metrics.errors.labels(item["error"]).inc()
    return {"written": len(written), "results": [item for item, _ in checked]}


@router.get(
    "/tokens", response_model=TokenPage, response_model_exclude_unset=True, responses=errors(400, 422, 503)
)
async def list_tokens(
    collection: str | None = Query(None, pattern=NAME_PATTERN, description="only this collection"),
    cursor: str | None = Query(
        None, description="`next_cursor` of the previous page; absent: the first page"
    ),
    limit: int = Query(100, ge=1, le=1000, description="tokens per page"),
    service: Service = Depends(get_service),
) -> dict:
    """The catalog's tokens ordered by (collection, token_id), one page at a time. Pages are stable under
    concurrent writes: a page starts strictly after the previous page's last token, so a walk never repeats
    a token (tokens added behind the cursor meanwhile are not visited)."""
    try:
        tokens, next_cursor = await service.in_catalog(service.catalog.list_tokens, collection, cursor, limit)
    except ValueError as exc:
        raise InvalidCursorError(str(exc)) from exc
    return {"tokens": [token_json(t) for t in tokens], "next_cursor": next_cursor}


@router.get(
    "/tokens/{collection}/{token_id}",
    response_model=TokenOut,
    response_model_exclude_unset=True,
    responses=errors(404, 422, 503),
)
async def get_token(
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    vector: bool = Query(False, description="include the stored embedding"),
    service: Service = Depends(get_service),
) -> dict:
    """One stored token."""
    token = await service.in_catalog(service.catalog.get, collection, token_id, vector)
    if token is None:
        raise NotFoundError(f"no token {collection}/{token_id} in the catalog")
    return token_json(token, vector)


@router.get(
    "/tokens/{collection}/{token_id}/image",
    response_class=Response,
    responses={
        200: {"content": {"image/*": {}}, "description": "the stored image bytes, as they were uploaded"},
        **errors(404, 422, 503),
    },
)
async def get_token_image(
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    service: Service = Depends(get_service),
) -> Response:
    """The image a token was stored with (what the review page shows as thumbnails); cacheable, since a
    re-PUT image changes its ETag."""
    image = await service.in_catalog(service.catalog.image, collection, token_id)
    if image is None:
        raise NotFoundError(f"no image for {collection}/{token_id}: no such token, or stored without one")
    headers = {"Cache-Control": "public, max-age=60", "ETag": f'"{hashlib.sha256(image).hexdigest()[:32]}"'}
    return Response(image, media_type=media_type(image), headers=headers)


@router.delete(
    "/tokens/{collection}/{token_id}",
    dependencies=WRITE,
    response_model=TokenDeleted,
    responses=errors(401, 404, 422, 503),
)
async def delete_token(
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    service: Service = Depends(get_service),
) -> dict:
    """Remove one token (404 if there is none)."""
    if not await service.in_catalog(service.catalog.delete, collection, token_id):
        raise NotFoundError(f"no token {collection}/{token_id} in the catalog")
    await refresh_size(service)
    return {"deleted": True, "collection": collection, "token_id": token_id}


@router.get("/collections", response_model=Collections, responses=errors(503))
async def collections(service: Service = Depends(get_service)) -> dict:
    """Every collection in the catalog with its token count, by name."""
    counts = await service.in_catalog(service.catalog.collections)
    return {"collections": [{"name": name, "tokens": n} for name, n in sorted(counts.items())]}


@router.delete(
    "/collections/{collection}",
    dependencies=WRITE,
    response_model=CollectionDeleted,
    responses=errors(401, 404, 422, 503),
)
async def delete_collection(
    collection: str = CollectionPath, service: Service = Depends(get_service)
) -> dict:
    """Remove every token of a collection; answers how many (404 if it had none)."""
    deleted = await service.in_catalog(service.catalog.delete_collection, collection)
    if not deleted:
        raise NotFoundError(f"no tokens in collection {collection}")
    await refresh_size(service)
    return {"collection": collection, "deleted": deleted}
