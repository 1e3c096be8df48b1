"""POST /copies (an uploaded image) and GET /copies/{collection}/{token_id} (a stored token).

Both search the catalog's instance space and answer with the calibrated verdict: a match is a copy when its
score reaches its collection's threshold (`model.json` -> `copies`), and `is_copy` is true when any match
is one; `threshold` is the best match's.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Query, Request

from app.api.deps import MAX_K, CollectionPath, CollectionsQuery, TokenPath, get_service
from app.api.filters import collection_filter
from app.api.schemas import IMAGE_ERRORS, CopiesAnswer, errors
from app.api.similar import stored_image, stored_token
from app.api.uploads import image_body_doc, read_upload
from app.service import Service

router = APIRouter(tags=["copies"])
K = Query(5, ge=1, le=MAX_K, description=f"how many matches to return, best first (at most {MAX_K})")


@router.post(
    "/copies",
    response_model=CopiesAnswer,
    response_model_exclude_unset=True,
    responses=errors(*IMAGE_ERRORS, 409),
    openapi_extra=image_body_doc(),
)
async def copies_of_image(
    request: Request,
    k: int = K,
    collections: str | None = CollectionsQuery,
    service: Service = Depends(get_service),
) -> dict:
    """Is this image a copy (exact or edited) of a catalogued token? The best matches and the verdict."""
    service.require_copies()
    data, _ = await read_upload(request, service.settings.max_upload_bytes)
    vectors, fingerprint, rgb = await service.copy_query(data)
    flt = collection_filter(collections)
    body = await service.in_catalog(service.copies, vectors, k, flt, fingerprint, rgb)
    return {"model": service.model_label, **body}


@router.get(
    "/copies/{collection}/{token_id}",
    response_model=CopiesAnswer,
    response_model_exclude_unset=True,
    responses=errors(404, 409, 422, 503),
)
async def copies_of_token(
    collection: str = CollectionPath,
    token_id: str = TokenPath,
    k: int = K,
    collections: str | None = CollectionsQuery,
    same_collection: bool | None = Query(
        None, description="true: only the token's collection; false: only others"
    ),
    service: Service = Depends(get_service),
) -> dict:
    """Copies of a stored token among every other catalogued token (the token itself is excluded)."""
    service.require_copies()
    await stored_token(service, collection, token_id)
    image = await stored_image(service, collection, token_id)
    vectors, fingerprint, rgb = await service.copy_query(image)
    flt = collection_filter(collections, None, (collection, token_id), same_collection)
    body = await service.in_catalog(service.copies, vectors, k, flt, fingerprint, rgb)
    return {"query": {"collection": collection, "token_id": token_id}, "model": service.model_label, **body}
