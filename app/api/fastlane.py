"""`POST /classify` without FastAPI's per-request machinery.

A plain classify request (a multipart `file` or a raw image body; query `top_k` and `embedding` only) is
answered here, in front of the FastAPI app: no routing, dependency solving, parameter models or thread
pool hand-offs, but the same body reader (`read_upload`), the same rendering (`render`), the same
serialiser (`answer`) and the same error bodies as the route in `app/api/classify.py`. Anything else
(`copies=true`, a parameter out of range, the service still loading) passes to FastAPI untouched, so the
route stays the reference for the contract and its validation errors; the HTTP tests run both ways.
Measured in `reports/bench/PROFILE.md`.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import parse_qsl

from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from app.api.classify import render, router
from app.api.encoding import answer, error_response
from app.api.schemas import Classification
from app.api.uploads import read_upload
from app.errors import NftlensError
from app.service import Service

log = logging.getLogger("uvicorn.error")
PATH = "/classify"
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}  # FastAPI's bool spellings
_DIGITS = re.compile(r"[0-9]{1,4}")  # ASCII only: str.isdigit also takes digits int() or pydantic refuse


def plain_params(query_string: bytes) -> tuple[int, bool] | None:
    """(top_k, embedding) of a query the fast lane answers, or None to leave it to the route."""
    top_k, embedding = 5, True
    for key, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if key == "top_k" and _DIGITS.fullmatch(value) and 1 <= int(value) <= 1000:
            top_k = int(value)
        elif key == "embedding" and value.lower() in _TRUE | _FALSE:
            embedding = value.lower() in _TRUE
        elif not (key == "copies" and value.lower() in _FALSE):
            return None
    return top_k, embedding


class ClassifyFastLane:
    """ASGI middleware answering plain `POST /classify` requests itself (see the module docstring)."""

    def __init__(self, app: ASGIApp, service: Service):
        self.app, self.service = app, service
        # the route it stands in for: ObserveRequests labels the request with its path
        self.route = next(r for r in router.routes if r.path == PATH and "POST" in r.methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        params = plain_params(scope.get("query_string", b""))
        if params is None or not self.service.ready:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route
        service = self.service
        try:
            data, _ = await read_upload(Request(scope, receive), service.settings.max_upload_bytes)
            body = render(service, await service.predict(data), *params)
            response = answer(Classification, body, exclude_unset=True)
        except NftlensError as exc:
            response = error_response(exc, service.metrics)
        except Exception:
            log.exception("unhandled error")
            response = error_response(None, service.metrics)
        await response(scope, receive, send)
