"""The service's web page: ``GET /`` and its script and style, shipped in the package.

No build step and no CDN: three static files under ``serve/page``. The page calls the same
``/v1`` endpoints any client does, so it needs nothing of its own from the service.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, HTTPException
from fastapi.responses import Response

__all__ = ["router"]

router = APIRouter(include_in_schema=False)

_ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "icon.svg": "image/svg+xml",
}
# The page runs only its own script and loads only from this service (thumbnails arrive as
# blob: URLs because they are fetched with the API key).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-cache",
}


def _asset(name: str) -> bytes:
    return files("headstart.serve").joinpath("page", name).read_bytes()


@router.get("/")
async def index_page() -> Response:
    return Response(_asset("index.html"), media_type="text/html; charset=utf-8", headers=_HEADERS)


@router.get("/page/{name}")
async def page_asset(name: str) -> Response:
    if name not in _ASSETS:
        raise HTTPException(404, f"the page has no file {name!r}")
    return Response(_asset(name), media_type=_ASSETS[name], headers=_HEADERS)
