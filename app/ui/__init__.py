"""The review page: `GET /` serves a static single page (HTML, CSS, JS shipped in this package, no CDN and no
build step) that calls the public API: /classify, /similar, /explain, /tokens/.../image, /model."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
async def review_page() -> FileResponse:
    """The review page."""
    return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The page's assets, mounted at /ui."""
    return StaticFiles(directory=STATIC)
