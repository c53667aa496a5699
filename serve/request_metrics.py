"""Counting and timing each request, labelled by the route that answered it."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Match

__all__ = ["UNMATCHED", "observe_requests"]

# The label of requests no route answers: a label per raw path would let clients grow the
# metrics without bound.
UNMATCHED = "other"


async def observe_requests(
    request: Request, call_next: Callable[[Request], Awaitable[Response]]
) -> Response:
    """HTTP middleware: one count and one latency sample per request, by route template."""
    started = time.perf_counter()
    response = await call_next(request)
    endpoint = _route_template(request)
    metrics = request.app.state.service.metrics
    metrics.requests.labels(endpoint, str(response.status_code)).inc()
    metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
    return response


def _route_template(request: Request) -> str:
    """The path template of the route the router chose ("/v1/embed"), or ``UNMATCHED``."""
    # The router records the route it chose in the scope this middleware shares, but not for
    # every kind of route (FastAPI leaves out /docs and /openapi.json): those are matched again.
    route = request.scope.get("route")
    if route is None:
        route = next(
            (r for r in request.app.routes if r.matches(request.scope)[0] is not Match.NONE),
            None,
        )
    return getattr(route, "path", None) or UNMATCHED
