"""`create_app()`: the lifespan wires model, batcher and catalog; errors become `{error, detail}` JSON."""

from __future__ import annotations

import logging
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from app import __version__, ui
from app.api import classify, copies, explain, ops, similar, tokens
from app.api.encoding import error_json, error_response
from app.api.fastlane import ClassifyFastLane
from app.config import Settings
from app.errors import NftlensError
from app.metrics import ObserveRequests
from app.service import Service

log = logging.getLogger("uvicorn.error")  # uvicorn configures this one, so start-up lines are shown
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}


def allowed_methods(routes: list[BaseRoute], scope: dict) -> str:
    """The methods the routes at this request's path answer, for a 405's Allow header."""
    methods: set[str] = set()
    for route in routes:
        if route.matches(scope)[0] is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return ", ".join(sorted(methods))


def for_settings(schema: dict, settings: Settings) -> dict:
    """The OpenAPI document with what depends on the settings: files per request (`maxItems`), and, without
    NFTLENS_API_KEY, open writes (no security and no 401 promised)."""
    for operation in (op for path in schema["paths"].values() for op in path.values()):
        form = operation.get("requestBody", {}).get("content", {}).get("multipart/form-data", {})
        for field in form.get("schema", {}).get("properties", {}).values():
            if field.get("type") == "array":
                field["maxItems"] = settings.max_batch_files
        if not settings.api_key:
            operation.pop("security", None)
            operation.get("responses", {}).pop("401", None)
    if not settings.api_key:
        schema.get("components", {}).pop("securitySchemes", None)
    return schema


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    service = Service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await service.start()
        log.info(
            "ready: %s (sha256 %s…) on %s, catalog %s",
            service.model_label,
            service.model_key[:12],
            service.model.provider,
            settings.catalog,
        )
        log.info(
            "pid %d: %d ONNX Runtime thread(s), %d decode thread(s), %d BLAS thread(s); workers=%s",
            os.getpid(),
            settings.per_worker(settings.intra_op_threads),
            settings.per_worker(settings.preprocess_threads),
            settings.blas_threads,
            settings.workers or "auto",
        )
        yield
        await service.stop()

    # /docs and /redoc with Swagger UI and ReDoc served from the installed package, not a CDN
    app = FastAPIOffline(
        title="nftlens",
        version=__version__,
        lifespan=lifespan,
        description="Classify NFT images, find visually similar tokens and catch copies of catalogued ones. "
        "Every error answers `{error, detail}` JSON; the codes are listed in the README.",
    )
    app.state.service = service
    app.mount("/ui", ui.static_files(), name="ui")
    routers = (
        classify.router,
        similar.router,
        copies.router,
        explain.router,
        tokens.router,
        ops.router,
        ui.router,
    )
    for router in routers:
        app.include_router(router)
    # FastAPI wraps included routers, so the endpoints are listed from the routers themselves
    endpoints = [r for r in app.router.routes if hasattr(r, "methods")] + [
        r for rt in routers for r in rt.routes
    ]

    build_openapi = app.openapi  # FastAPI's, which caches the document

    def openapi() -> dict:
        schema = for_settings(build_openapi(), settings)
        if service.model is not None:  # the labels /explain accepts as `target` are the served model's
            params = schema["paths"]["/explain"]["post"]["parameters"]
            target = next(p for p in params if p["name"] == "target")
            target["schema"] = {"anyOf": [{"enum": service.model.labels}, {"type": "null"}]}
        return schema

    app.openapi = openapi

    def error(status: int, body: dict, headers: dict[str, str] | None = None) -> JSONResponse:
        return error_json(status, body, service.metrics, headers)

    @app.exception_handler(NftlensError)
    async def _typed(_: Request, exc: NftlensError) -> JSONResponse:
        return error_response(exc, service.metrics)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        return error(422, {"error": "invalid_parameters", "detail": detail})

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = allowed_methods(endpoints, request.scope)
        code = HTTP_CODES.get(exc.status_code, "http_error")
        return error(exc.status_code, {"error": code, "detail": exc.detail}, headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(None, service.metrics)

    if settings.fast_lane:  # plain POST /classify answered in front of FastAPI (app/api/fastlane.py)
        app.add_middleware(ClassifyFastLane, service=service)
    app.add_middleware(ObserveRequests, metrics=service.metrics)  # outermost: it counts the fast lane too

    return app
