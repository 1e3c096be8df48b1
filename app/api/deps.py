"""Shared request dependencies and parameters."""

from __future__ import annotations

from fastapi import Path, Query, Request, Security
from fastapi.security import APIKeyHeader

from app.api.schemas import NAME_PATTERN, NAME_RULE
from app.errors import NotReadyError, UnauthorizedError
from app.service import Service

COLLECTION = {
    "pattern": NAME_PATTERN,
    "description": f"collection slug ({NAME_RULE})",
    "examples": ["cryptopunks"],
}
TOKEN = {"pattern": NAME_PATTERN, "description": f"token id ({NAME_RULE})", "examples": ["7804"]}
CollectionPath, TokenPath = Path(..., **COLLECTION), Path(..., **TOKEN)
CollectionQuery, TokenQuery = Query(..., **COLLECTION), Query(..., **TOKEN)
CollectionsQuery = Query(None, description="comma-separated collections to search in")
MAX_K = 100  # largest `k` of /similar and /copies: responses stay bounded (k x the metadata cap)

api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    description="needed by writes when the service has NFTLENS_API_KEY set",
)


async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    if not service.ready:
        raise NotReadyError("the model or catalog is still loading, or the batching loop is restarting")
    return service


async def require_api_key(request: Request, x_api_key: str | None = Security(api_key_header)) -> None:
    expected = request.app.state.service.settings.api_key
    if expected and x_api_key != expected:
        raise UnauthorizedError("this write needs a valid X-API-Key header")
