"""`create_app()`: the lifespan wires model, batcher and catalog; errors become `{error, detail}` JSON."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from app import __version__
from app.api import classify, copies, ops, similar, tokens
from app.config import Settings
from app.errors import NftlensError
from app.service import Service

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one, so start-up lines are shown


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        log.info("ready: %s on %s, catalog %s", service.model_key, service.model.provider, settings.catalog)
        yield
        await service.stop()

    app = FastAPI(
        title="nftlens",
        version=__version__,
        lifespan=lifespan,
        description="Classify NFT images, find visually similar tokens and catch copies of catalogued ones.",
    )
    app.state.service = service
    for router in (classify.router, similar.router, copies.router, tokens.router, ops.router):
        app.include_router(router)

    def error(status: int, code: str, detail) -> JSONResponse:
        service.metrics.errors.labels(code).inc()
        return JSONResponse({"error": code, "detail": detail}, status_code=status)

    @app.exception_handler(NftlensError)
    async def _typed(_: Request, exc: NftlensError) -> JSONResponse:
        return error(exc.status_code, exc.error, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return error(422, "invalid_parameters", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(
            exc.status_code, "http_error"
        )
        return error(exc.status_code, code, exc.detail)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error(500, "internal", "unexpected server error; see the service log")

    @app.middleware("http")
    async def _observe(request: Request, call_next):
        t0 = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        service.metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        service.metrics.latency.labels(path).observe(time.perf_counter() - t0)
        return response

    return app
