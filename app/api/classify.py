"""POST /classify and /classify/batch."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.api.deps import MAX_K, get_service
from app.api.encoding import answer
from app.api.filters import collection_filter
from app.api.schemas import IMAGE_ERRORS, BatchClassification, Classification, errors
from app.api.uploads import image_body_doc, images_body_doc, read_upload, read_uploads
from app.errors import NftlensError
from app.service import Prediction, Service

router = APIRouter(tags=["classify"])


def render(service: Service, pred: Prediction, top_k: int, embedding: bool) -> dict:
    m = service.model.manifest
    body = {
        "model": {"name": m.name, "version": m.version},
        "predictions": service.top_k(pred.probabilities, top_k),
        "provider": service.model.provider,
        "timings_ms": pred.timings_ms,
    }
    unknown = service.unknown(pred)
    if unknown is not None:
        body["unknown"] = unknown
    if embedding:
        body["embedding"] = pred.embedding.tolist()
    return body


@router.post(
    "/classify",
    response_model=Classification,
    response_model_exclude_unset=True,
    responses=errors(*IMAGE_ERRORS, 409),
    openapi_extra=image_body_doc(),
)
async def classify(
    request: Request,
    top_k: int = Query(5, ge=1, le=1000, description="how many labels to return"),
    embedding: bool = Query(True, description="include the L2-normalised embedding"),
    copies: bool = Query(False, description="also check the catalog for copies (the `copies` block)"),
    k: int = Query(5, ge=1, le=MAX_K, description="copies: how many matches"),
    collections: str | None = Query(None, description="copies: comma-separated collections to search"),
    service: Service = Depends(get_service),
) -> Response:
    """Calibrated class probabilities (sorted), the unknown-collection verdict and the embedding of one
    image; with `copies=true`, also the copy verdict against the catalog (409 if the model has no copy
    head)."""
    if copies:
        service.require_copies()
    data, _ = await read_upload(request, service.settings.max_upload_bytes)
    pred = await service.predict(data, fingerprint=copies)
    body = render(service, pred, top_k, embedding)
    if copies:
        vectors, fingerprint, rgb = await service.copy_query(data, pred)
        body["copies"] = await service.in_catalog(
            service.copies, vectors, k, collection_filter(collections), fingerprint, rgb
        )
    return answer(Classification, body, exclude_unset=True)


@router.post(
    "/classify/batch",
    response_model=BatchClassification,
    response_model_exclude_unset=True,
    responses=errors(400, 413, 415, 422, 503),
    openapi_extra=images_body_doc(),
)
async def classify_batch(
    request: Request,
    top_k: int = Query(5, ge=1, le=1000),
    embedding: bool = Query(True),
    service: Service = Depends(get_service),
) -> Response:
    """Several images (at most NFTLENS_MAX_BATCH_FILES, their bytes together at most
    NFTLENS_MAX_UPLOAD_BYTES); each item carries its result or its own error, so one bad file fails only
    itself."""
    s = service.settings
    parts, _ = await read_uploads(request, s.max_upload_bytes, s.max_batch_files)

    async def one(name: str, data: bytes | NftlensError) -> dict:
        try:
            if isinstance(data, NftlensError):
                raise data
            return {
                "filename": name,
                "status": 200,
                **render(service, await service.predict(data), top_k, embedding),
            }
        except NftlensError as exc:
            service.metrics.errors.labels(exc.error).inc()
            return {"filename": name, **exc.item()}

    results = await asyncio.gather(*(one(n, d) for n, d in parts))
    return answer(BatchClassification, {"results": results}, exclude_unset=True)
