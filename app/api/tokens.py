"""PUT/GET/DELETE /tokens/{collection}/{token_id}: the catalog's records."""

from __future__ import annotations

import hashlib
import json

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ValidationError

from app.api.deps import CollectionPath, TokenPath, get_service, require_api_key
from app.api.uploads import MissingFieldError, image_body_doc, read_upload
from app.catalog import Token
from app.errors import NotFoundError
from app.service import Service

router = APIRouter(tags=["tokens"])


class TokenMetadata(BaseModel):
    name: str | None = None
    image_url: str | None = None
    attributes: dict | list | None = None


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


@router.put(
    "/tokens/{collection}/{token_id}", dependencies=[Depends(require_api_key)], openapi_extra=image_body_doc()
)
async def put_token(
    request: Request,
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    service: Service = Depends(get_service),
) -> dict:
    """Embed the image and store it (image bytes kept for reindexing) with optional JSON metadata."""
    data, fields = await read_upload(request, service.settings.max_upload_bytes)
    try:
        meta = TokenMetadata.model_validate(json.loads(fields.get("metadata") or "{}"))
    except (json.JSONDecodeError, ValidationError) as exc:
        raise MissingFieldError(
            f"`metadata` must be a JSON object with name, image_url, attributes: {exc}"
        ) from exc
    pred = await service.predict(data, fingerprint=True)
    token = Token(collection, token_id, meta.model_dump(exclude_none=True), fingerprint=pred.fingerprint)
    token.image_sha256 = hashlib.sha256(data).hexdigest()
    stored = await service.in_catalog(service.catalog.upsert, token, pred.embedding, data, pred.instance)
    service.metrics.catalog_size.set(await service.in_catalog(service.catalog.count))
    return token_json(stored)  # what was written: no read-back, so a concurrent DELETE cannot race it


@router.get("/tokens/{collection}/{token_id}")
async def get_token(
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    vector: bool = Query(False, description="include the stored embedding"),
    service: Service = Depends(get_service),
) -> dict:
    token = await service.in_catalog(service.catalog.get, collection, token_id, vector)
    if token is None:
        raise NotFoundError(f"no token {collection}/{token_id} in the catalog")
    return token_json(token, vector)


@router.delete("/tokens/{collection}/{token_id}", dependencies=[Depends(require_api_key)])
async def delete_token(
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    service: Service = Depends(get_service),
) -> dict:
    if not await service.in_catalog(service.catalog.delete, collection, token_id):
        raise NotFoundError(f"no token {collection}/{token_id} in the catalog")
    service.metrics.catalog_size.set(await service.in_catalog(service.catalog.count))
    return {"deleted": True, "collection": collection, "token_id": token_id}
