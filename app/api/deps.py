"""Shared request dependencies."""

from __future__ import annotations

from fastapi import Header, Path, Request

from app.errors import NftlensError, UnauthorizedError
from app.service import Service

NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"
CollectionPath = Path(..., pattern=NAME_PATTERN, description="collection slug")
TokenPath = Path(..., pattern=NAME_PATTERN, description="token id")


class NotReadyError(NftlensError):
    status_code = 503
    error = "not_ready"


def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    if not service.ready:
        raise NotReadyError("the model or catalog is still loading")
    return service


def require_api_key(request: Request, x_api_key: str | None = Header(None)) -> None:
    expected = request.app.state.service.settings.api_key
    if expected and x_api_key != expected:
        raise UnauthorizedError("this write needs a valid X-API-Key header")
