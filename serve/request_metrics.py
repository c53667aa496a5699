"""Counting and timing each request, labelled by the route that answered it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["UNMATCHED", "RequestMetrics"]

# The label of requests no route answers: a label per raw path would let clients grow the
# metrics without bound.
UNMATCHED = "other"


class RequestMetrics:
    """ASGI middleware: one count and one latency sample per answered request, by route.

    Plain ASGI rather than an ``http`` middleware, so it can sit outside the body-size cap (its
    413s are counted too) and a client that leaves mid-upload is simply not counted, instead of
    ending in an error about a response that never came.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        except Exception:
            status = status or 500  # the server answers 500 for what escaped the app
            raise
        finally:
            if status is not None:
                endpoint = _route_template(scope)
                metrics = scope["app"].state.service.metrics
                metrics.requests.labels(endpoint, str(status)).inc()
                metrics.latency.labels(endpoint).observe(time.perf_counter() - started)


def _route_template(scope: Scope) -> str:
    """The path template of the route the router chose ("/v1/embed"), or ``UNMATCHED``."""
    # The router records the route it chose in the scope, but not for every kind of route
    # (FastAPI leaves out /docs and /openapi.json) and not for a request refused before routing
    # (an oversized body): those are matched here.
    route = scope.get("route")
    if route is None:
        route = next(
            (r for r in _flat(scope["app"].routes) if r.matches(scope)[0] is not Match.NONE),
            None,
        )
    return getattr(route, "path", None) or UNMATCHED


def _flat(routes: Iterable) -> Iterator:
    """Every route, those of included routers too (FastAPI keeps those behind a wrapper whose
    own match says nothing of which route matched)."""
    for route in routes:
        included = getattr(route, "original_router", None)
        yield from _flat(included.routes) if included is not None else (route,)
