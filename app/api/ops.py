"""GET /health, /ready, /model, /metrics."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST

from app.api.deps import get_service
from app.api.schemas import Health, ModelInfo, Readiness, errors

router = APIRouter(tags=["ops"])


@router.get("/health", response_model=Health)
async def health() -> dict:
    """The process is alive (it may still be loading)."""
    return {"status": "ok"}


@router.get(
    "/ready",
    response_model=Readiness,
    response_model_exclude_none=True,
    responses={503: {"model": Readiness, "description": "still loading, or the batching loop is restarting"}},
)
async def ready(request: Request) -> Response:
    """200 once the model is verified and warm, the catalog is open and the batching loop runs; 503 before."""
    service = request.app.state.service
    if not service.ready:
        return JSONResponse(
            {
                "ready": False,
                "detail": "the model or catalog is still loading, or the batching loop is restarting",
            },
            status_code=503,
        )
    catalog = service.catalog
    return JSONResponse(
        {
            "ready": True,
            "pid": os.getpid(),
            "model": service.model_label,
            "provider": service.model.provider,
            "catalog": {
                "tokens": await service.in_catalog(catalog.count),
                "stale": await service.in_catalog(catalog.stale_count),
            },
        }
    )


@router.get("/model", response_model=ModelInfo, responses=errors(503))
async def model(request: Request) -> dict:
    """The model manifest (labels, preprocessing, metrics), plus the provider it runs on."""
    service = await get_service(request)
    return {**service.model.manifest.model_dump(mode="json"), "provider": service.model.provider}


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus text exposition format", "content": {"text/plain": {}}}},
)
async def metrics(request: Request) -> Response:
    """Prometheus metrics: requests, latency, batch sizes, queue depth, catalog size, errors by code (summed
    over the worker processes)."""
    service = request.app.state.service
    if service.batcher:
        service.metrics.queue_depth.set(service.batcher.queue_depth)
    return Response(service.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)
