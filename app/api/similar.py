"""GET /similar (by token id) and POST /similar (by uploaded image)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from app.api.deps import MAX_K, CollectionQuery, CollectionsQuery, TokenQuery, get_service
from app.api.filters import collection_filter
from app.api.schemas import IMAGE_ERRORS, SimilarToImage, SimilarToToken, errors
from app.api.uploads import image_body_doc, read_upload
from app.catalog import SearchFilter, Token
from app.errors import ConflictError, NotFoundError
from app.service import Service

router = APIRouter(tags=["similar"])


async def stored_token(service: Service, collection: str, token_id: str) -> Token:
    """A catalog token with its vectors, embedded by the serving model (404 / 409 otherwise)."""
    token = await service.in_catalog(service.catalog.get, collection, token_id, True)
    if token is None:
        raise NotFoundError(
            f"no token {collection}/{token_id} in the catalog; add it with PUT /tokens/{collection}/{token_id}"
        )
    if token.model != service.model_key:
        raise ConflictError(
            f"{collection}/{token_id} was embedded by {token.model_label}, not the serving "
            f"{service.model_label} (sha256 {service.model_key[:12]}…): run `nftlens catalog reindex`"
        )
    return token


async def stored_image(service: Service, collection: str, token_id: str) -> bytes:
    """The image bytes a stored token was PUT with (409 when it was stored without them)."""
    image = await service.in_catalog(service.catalog.image, collection, token_id)
    if image is None:
        raise ConflictError(
            f"{collection}/{token_id} was stored without its image: PUT it again with the image"
        )
    return image


async def _search(service: Service, vector, k: int, flt: SearchFilter) -> list[dict]:
    hits = await service.in_catalog(service.catalog.search, vector, k, flt)
    return [
        {
            "collection": h.collection,
            "token_id": h.token_id,
            "score": round(h.score, 6),
            "metadata": h.metadata,
        }
        for h in hits
    ]


K = Query(10, ge=1, le=MAX_K, description=f"how many neighbours, best first (at most {MAX_K})")


@router.get("/similar", response_model=SimilarToToken, responses=errors(404, 409, 422, 503))
async def similar_by_token(
    collection: str = CollectionQuery,
    token_id: str = TokenQuery,
    k: int = K,
    same_collection: bool | None = Query(
        None, description="true: only the token's collection; false: only others"
    ),
    collections: str | None = CollectionsQuery,
    min_score: float | None = Query(
        None, ge=-1, le=1, description="drop neighbours below this cosine similarity"
    ),
    service: Service = Depends(get_service),
) -> dict:
    """The k tokens most similar to a stored token (cosine similarity), the token itself excluded."""
    token = await stored_token(service, collection, token_id)
    flt = collection_filter(collections, min_score, (collection, token_id), same_collection)
    return {
        "query": {"collection": collection, "token_id": token_id},
        "model": service.model_label,
        "results": await _search(service, token.vector, k, flt),
    }


@router.post(
    "/similar", response_model=SimilarToImage, responses=errors(*IMAGE_ERRORS), openapi_extra=image_body_doc()
)
async def similar_by_image(
    request: Request,
    k: int = K,
    collections: str | None = CollectionsQuery,
    min_score: float | None = Query(None, ge=-1, le=1),
    service: Service = Depends(get_service),
) -> dict:
    """The k stored tokens most similar to an uploaded image."""
    data, _ = await read_upload(request, service.settings.max_upload_bytes)
    pred = await service.predict(data)
    flt = collection_filter(collections, min_score)
    return {
        "model": service.model_label,
        "timings_ms": pred.timings_ms,
        "results": await _search(service, pred.embedding, k, flt),
    }
