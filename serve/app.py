"""The HTTP service: a FastAPI app built by :func:`create_app` from explicit settings.

The model loads in the background at start-up: ``/healthz`` answers at once, ``/readyz`` once
the model is loaded and warmed up, and the ``/v1`` endpoints answer 503 until then. Images may
come as multipart files or as JSON with base64 strings; decoding runs in a thread pool and
inference in one inference thread fed by the micro-batcher, so the event loop only routes.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import platform
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated

import numpy as np
import torch
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from headstart import __version__
from headstart.extract.decode import DecodeError
from headstart.serve.batcher import MicroBatcher
from headstart.serve.engine import Engine, load_engine, public_model_name
from headstart.serve.limits import BodySizeLimit
from headstart.serve.metrics import ServiceMetrics

__all__ = ["ServeSettings", "create_app"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeSettings:
    head_dir: str
    index_dir: str | None = None
    device: str = "auto"
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_images: int = 64
    api_key: str | None = None
    expose_paths: bool = False


# How many labels or neighbors one answer may hold, asked in the JSON body or the query string.
_MAX_K = 1000
_QueryK = Annotated[int | None, Query(ge=1, le=_MAX_K)]


class ImagesBody(BaseModel):
    """JSON form of a request: base64-encoded image files."""

    model_config = ConfigDict(extra="forbid")
    images: list[str] = Field(min_length=1)
    top_k: int = Field(default=5, ge=1, le=_MAX_K)


class NeighborsBody(BaseModel):
    """JSON form of a neighbors request: one base64 image, or an embedding vector."""

    model_config = ConfigDict(extra="forbid")
    image: str | None = None
    vector: list[float] | None = None
    k: int = Field(default=10, ge=1, le=_MAX_K)


def _body_doc(json_model: type[BaseModel], many: bool) -> dict:
    field = "files" if many else "file"
    schema = (
        {"type": "array", "items": {"type": "string", "format": "binary"}}
        if many
        else {"type": "string", "format": "binary"}
    )
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "properties": {field: schema}}
                },
                "application/json": {"schema": json_model.model_json_schema()},
            },
        }
    }


def create_app(settings: ServeSettings, *, engine_loader=load_engine) -> FastAPI:
    """The service for one head (and optionally one index); nothing global, nothing at import."""
    metrics = ServiceMetrics()
    state: dict = {"engine": None, "batcher": None, "error": None}

    async def load() -> None:
        try:
            engine = await asyncio.to_thread(
                engine_loader, settings.head_dir, settings.index_dir, settings.device
            )
        except Exception as exc:  # reported by /readyz and the log, not by crashing the server
            log.error("the model failed to load: %s", exc)
            state["error"] = "the model failed to load; see the server log"
            return
        batcher = MicroBatcher(
            engine.embed,
            max_batch=settings.max_batch,
            max_wait=settings.max_wait_ms / 1000,
            on_batch=metrics.observe_batch,
        )
        batcher.start()
        state["batcher"], state["engine"] = batcher, engine

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loading = asyncio.create_task(load())
        yield
        loading.cancel()
        if state["batcher"] is not None:
            await state["batcher"].stop()

    app = FastAPI(title="headstart", version=__version__, lifespan=lifespan)

    @app.middleware("http")
    async def observe(request: Request, call_next):
        started = time.perf_counter()
        endpoint = request.url.path if request.url.path in _ROUTES else "other"
        response = await call_next(request)
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(
            {"error": exc.detail},
            status_code=exc.status_code,
            headers=getattr(exc, "headers", None),
        )

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        return JSONResponse({"error": _problems(exc.errors())}, status_code=422)

    def authorised(request: Request) -> None:
        if settings.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token, settings.api_key):
            raise HTTPException(
                401,
                "missing or wrong API key (Authorization: Bearer KEY)",
                headers={"WWW-Authenticate": "Bearer"},
            )

    def ready() -> Engine:
        if state["engine"] is None:
            raise HTTPException(503, state["error"] or "the model is still loading")
        return state["engine"]

    async def embed(engine: Engine, images: list[tuple[str, bytes]]) -> np.ndarray:
        def decode_all() -> torch.Tensor:
            pixels = []
            for number, (name, data) in enumerate(images):
                try:
                    pixels.append(engine.decode(data))
                except DecodeError as exc:
                    label = f" ({name})" if name else ""
                    raise HTTPException(422, f"image {number}{label}: {exc}") from None
            return torch.stack(pixels)

        return await state["batcher"].submit(await run_in_threadpool(decode_all))

    @app.get("/healthz")
    async def healthz() -> dict:
        """Alive (the process answers)."""
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz() -> JSONResponse:
        """Ready: the model is loaded and warmed up."""
        if state["engine"] is None:
            return JSONResponse({"ready": False, "error": state["error"] or "loading"}, 503)
        return JSONResponse({"ready": True})

    @app.get("/metrics")
    async def prometheus(_: None = Depends(authorised)) -> Response:
        """Prometheus text format: requests, latency, batch sizes."""
        return Response(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/info", dependencies=[Depends(authorised)])
    async def info() -> dict:
        """The model fingerprint, classes, embedding width, index size and versions."""
        engine = ready()
        recipe = engine.fingerprint.recipe
        return {
            "fingerprint": engine.fingerprint.id,
            "model": public_model_name(engine.fingerprint),
            "weights": recipe.get("weights"),
            "layer": recipe.get("layer"),
            "precision": recipe.get("precision"),
            "head": engine.head.head_name,
            "classes": np.asarray(engine.head.classes_).astype(str).tolist(),
            "dim": engine.dim,
            "index_size": engine.index.index.ntotal if engine.index is not None else None,
            "max_batch": settings.max_batch,
            "versions": {
                "headstart": __version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
            },
        }

    @app.post(
        "/v1/classify",
        dependencies=[Depends(authorised)],
        openapi_extra=_body_doc(ImagesBody, many=True),
    )
    async def classify(request: Request, top_k: _QueryK = None) -> dict:
        """One or several images -> the top-k labels of each, with probabilities."""
        engine = ready()
        images, body_top_k = await _read_images(request, settings.max_images)
        k = min(top_k or body_top_k, len(engine.head.classes_))
        proba = await run_in_threadpool(engine.classify, await embed(engine, images))
        names = np.asarray(engine.head.classes_).astype(str)
        results = []
        for number, ((name, _), row) in enumerate(zip(images, proba, strict=True)):
            order = np.argsort(-row)[:k]
            top = [{"label": names[j], "probability": float(row[j])} for j in order]
            results.append(
                {"image": number, "filename": name, "label": top[0]["label"], "top": top}
            )
        return {"fingerprint": engine.fingerprint.id, "results": results}

    @app.post(
        "/v1/embed",
        dependencies=[Depends(authorised)],
        openapi_extra=_body_doc(ImagesBody, many=True),
    )
    async def embed_images(request: Request) -> dict:
        """Images -> embedding vectors (float32), with the fingerprint that made them."""
        engine = ready()
        images, _ = await _read_images(request, settings.max_images)
        vectors = await embed(engine, images)
        return {
            "fingerprint": engine.fingerprint.id,
            "dim": engine.dim,
            "embeddings": vectors.astype(np.float32).tolist(),
        }

    @app.post(
        "/v1/neighbors",
        dependencies=[Depends(authorised)],
        openapi_extra=_body_doc(NeighborsBody, many=False),
    )
    async def neighbors(request: Request, k: _QueryK = None) -> dict:
        """An image or an embedding vector -> the k nearest items of the index."""
        engine = ready()
        if engine.index is None:
            raise HTTPException(404, "no index is loaded; start the server with --index")
        vector, images, body_k = await _read_query(request)
        if images is not None:
            vector = await embed(engine, images)
        elif vector.shape[1] != engine.dim:
            raise HTTPException(
                422, f"the vector has {vector.shape[1]} values; the index expects {engine.dim}"
            )
        similarities, rows = await run_in_threadpool(engine.neighbors, vector, k or body_k)
        index = engine.index
        found = []
        for similarity, row in zip(similarities[0], rows[0], strict=True):
            if row < 0:
                continue
            item = {
                "id": int(row),
                "label": index.labels[row],
                "key": index.keys[row],
                "similarity": float(similarity),
            }
            if settings.expose_paths:
                item["path"] = index.paths[row]
            found.append(item)
        return {"fingerprint": engine.fingerprint.id, "neighbors": found}

    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(BodySizeLimit, max_bytes=int(settings.max_upload_mb * 2**20))
    return app


_ROUTES = {
    "/healthz",
    "/readyz",
    "/metrics",
    "/v1/info",
    "/v1/classify",
    "/v1/embed",
    "/v1/neighbors",
    "/docs",
    "/openapi.json",
}


async def _read_images(request: Request, limit: int) -> tuple[list[tuple[str, bytes]], int]:
    """(filename, bytes) of every image in a multipart or JSON request, and its top_k."""
    kind = request.headers.get("content-type", "")
    images: list[tuple[str, bytes]] = []
    top_k = 5
    if kind.startswith("multipart/form-data"):
        form = await request.form(max_files=limit + 1)
        for _, value in form.multi_items():
            if hasattr(value, "read"):
                images.append((value.filename or "", await value.read()))
    elif kind.startswith("application/json"):
        body = _parse(ImagesBody, await _json(request))
        top_k = body.top_k
        images = [("", _base64(text, f"images[{i}]")) for i, text in enumerate(body.images)]
    elif not await request.body():
        raise HTTPException(400, 'empty request: send multipart files or JSON {"images": [...]}')
    else:
        raise HTTPException(415, f"unsupported content type {kind!r}; use multipart or JSON")
    if not images:
        raise HTTPException(400, "no images in the request: send multipart files or JSON images")
    if len(images) > limit:
        raise HTTPException(413, f"{len(images)} images in one request; the limit is {limit}")
    for number, (name, data) in enumerate(images):
        if not data:
            raise HTTPException(422, f"image {number} ({name or 'unnamed'}) is empty")
    return images, top_k


async def _read_query(
    request: Request,
) -> tuple[np.ndarray | None, list[tuple[str, bytes]] | None, int]:
    """A neighbors request: (vector, None, k) or (None, [one image], k)."""
    if not request.headers.get("content-type", "").startswith("application/json"):
        images, _ = await _read_images(request, 1)
        return None, images, 10
    body = _parse(NeighborsBody, await _json(request))
    if (body.vector is None) == (body.image is None):
        raise HTTPException(422, "give exactly one of 'image' (base64) or 'vector'")
    if body.image is not None:
        return None, [("", _base64(body.image, "image"))], body.k
    vector = np.asarray(body.vector, dtype=np.float32)[None]
    if not np.isfinite(vector).all():
        raise HTTPException(422, "the vector must hold finite numbers")
    return vector, None, body.k


async def _json(request: Request):
    try:
        return await request.json()
    except ValueError:
        raise HTTPException(400, "the body is not valid JSON") from None


def _parse(model: type[BaseModel], data) -> BaseModel:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise HTTPException(422, _problems(exc.errors())) from None


def _base64(text: str, where: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise HTTPException(422, f"{where} is not valid base64") from None


def _problems(errors) -> str:
    """Validation errors in one line: 'images: Field required; pictures: Extra inputs ...'."""
    lines = []
    for error in list(errors)[:3]:
        where = ".".join(str(part) for part in error.get("loc", ()) if part != "body")
        message = error.get("msg", "invalid")
        lines.append(f"{where}: {message}" if where else str(message))
    return "; ".join(lines) or "invalid request"
