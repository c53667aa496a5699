"""What the service shows of its index's items: /v1/items/{item_id}/thumbnail.

Only the small JPEG ``index build`` kept, looked up by row: a neighbour can be shown without the
service exposing (or reading) the server's image paths.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from headstart.serve.dependencies import ReadyEngine, authorised
from headstart.serve.schemas import refusals

__all__ = ["router", "thumbnail_url"]

router = APIRouter(prefix="/v1/items", dependencies=[Depends(authorised)])

# Thumbnails of an index never change while it is served; a day lets a page reuse them.
_CACHE_CONTROL = "private, max-age=86400"


def thumbnail_url(item_id: int) -> str:
    return f"/v1/items/{item_id}/thumbnail"


@router.get(
    "/{item_id}/thumbnail",
    response_class=Response,
    responses={
        200: {"content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
        **refusals(401, 404, 422, 503),
    },
)
async def thumbnail(engine: ReadyEngine, item_id: Annotated[int, Path(ge=0, le=2**62)]) -> Response:
    """The small JPEG of an indexed item (404 if the index keeps none, or has no such item)."""
    index = engine.index
    if index is None:
        raise HTTPException(404, "no index is loaded; start the server with --index")
    if index.thumbnails is None:
        raise HTTPException(404, "this index keeps no thumbnails (built with --no-thumbnails)")
    if item_id >= len(index.thumbnails):
        raise HTTPException(404, f"no item {item_id}; the index holds {len(index.thumbnails)}")
    jpeg = await run_in_threadpool(index.thumbnails.get, item_id)
    if jpeg is None:
        raise HTTPException(404, f"item {item_id} has no thumbnail (unreadable when indexed)")
    return Response(jpeg, media_type="image/jpeg", headers={"Cache-Control": _CACHE_CONTROL})
