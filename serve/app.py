"""The HTTP service: a FastAPI app built by :func:`create_app` from explicit settings.

The model loads in the background at start-up: ``/healthz`` answers at once, ``/readyz`` once
the model is loaded and warmed up, and the ``/v1`` endpoints answer 503 until then. Images may
come as multipart files or as JSON with base64 strings. The routes live in one router per
concern (``*_routes.py``) and reach the service's state through ``dependencies.py``.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from headstart import __version__
from headstart.cache.fingerprint import Fingerprint
from headstart.errors import HeadstartError
from headstart.serve import (
    inference_routes,
    item_routes,
    metrics_routes,
    page_routes,
    status_routes,
)
from headstart.serve.engine import load_engine
from headstart.serve.error_handlers import add_error_handlers
from headstart.serve.lifespan import EngineLoader, lifespan_for
from headstart.serve.limits import BodySizeLimit
from headstart.serve.metrics import ServiceMetrics
from headstart.serve.openapi_document import finish_document
from headstart.serve.request_metrics import RequestMetrics
from headstart.serve.settings import ServeSettings
from headstart.serve.state import ServiceState

__all__ = ["ServeSettings", "create_app"]


def create_app(settings: ServeSettings, *, engine_loader: EngineLoader = load_engine) -> FastAPI:
    """The service for one head (and optionally one index); nothing global, nothing at import."""
    service = ServiceState(settings=settings, metrics=ServiceMetrics())
    lifespan = lifespan_for(service, engine_loader)
    app = FastAPI(title="headstart", version=__version__, lifespan=lifespan)
    app.state.service = service
    add_error_handlers(app)
    # No prefix here: each router declares its own, so a route's path is its full template,
    # which is what /metrics labels it by.
    for routes in (status_routes, metrics_routes, inference_routes, item_routes, page_routes):
        app.include_router(routes.router)
    app.openapi = functools.partial(_openapi, app, settings)
    # The last added runs first. Oversized bodies are refused before anything reads them, and
    # the count wraps even that, so /metrics sees the 413s too.
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.max_upload_mb * 2**20))
    app.add_middleware(RequestMetrics)
    return app


def _openapi(app: FastAPI, settings: ServeSettings) -> dict:
    """The OpenAPI document, with this service's limits in it; made once."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        app.openapi_schema = finish_document(
            document,
            settings.max_images,
            settings.max_upload_mb,
            vector_width=_index_width(settings.index_dir),
            text=_embeds_text(settings.head_dir),
        )
    return app.openapi_schema


def _index_width(index_dir: str | None) -> int | None:
    """The vector width ``index.json`` records (read, not the index: the document may be asked
    for before the engine has loaded); None without an index or a readable record."""
    if index_dir is None:
        return None
    try:
        width = json.loads((Path(index_dir) / "index.json").read_text())["dim"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return width if isinstance(width, int) and width > 0 else None


def _embeds_text(head_dir: str) -> bool:
    """Whether the head's model can embed text, from its recorded fingerprint. A head that
    cannot be read leaves search documented: the service refuses to become ready anyway."""
    from headstart.classify.persist import HEAD_DOCUMENT
    from headstart.extract.text import why_no_text

    path = Path(head_dir) / HEAD_DOCUMENT
    try:
        fingerprint = Fingerprint.recorded_in(json.loads(path.read_text()), str(path))
    except (OSError, ValueError, HeadstartError):
        return True
    return why_no_text(fingerprint) is None
