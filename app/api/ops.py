"""GET /health, /ready, /model, /metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import get_service

router = APIRouter(tags=["ops"])


@router.get("/health")
async def health() -> dict:
    """The process is alive (it may still be loading)."""
    return {"status": "ok"}


@router.get("/ready")
async def ready(request: Request) -> JSONResponse:
    """200 once the model is verified and warm and the catalog is open; 503 before."""
    service = request.app.state.service
    if not service.ready:
        return JSONResponse({"ready": False}, status_code=503)
    catalog = service.catalog
    return JSONResponse(
        {
            "ready": True,
            "model": service.model_label,
            "provider": service.model.provider,
            "catalog": {
                "tokens": await service.in_catalog(catalog.count),
                "stale": await service.in_catalog(catalog.stale_count),
            },
        }
    )


@router.get("/model")
async def model(request: Request) -> dict:
    """The model manifest (labels, preprocessing, metrics), plus the provider it runs on."""
    service = get_service(request)
    return {**service.model.manifest.model_dump(mode="json"), "provider": service.model.provider}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus text format."""
    service = request.app.state.service
    if service.batcher:
        service.metrics.queue_depth.set(service.batcher.queue_depth)
    return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)
