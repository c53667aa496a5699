"""What the model computes: /v1/classify, /v1/embed, /v1/neighbors and /v1/search.

Decoding runs in a thread pool and the backbone in the batcher's inference thread, so the event
loop only routes. The text tower (search by text) is a model of its own: it runs in the thread
pool, never in the batcher's thread, one text at a time.
"""

from __future__ import annotations

import numpy as np
import torch
from fastapi import APIRouter, Depends, HTTPException, Request
from starlette.concurrency import run_in_threadpool

from headstart.models.decode import DecodeError
from headstart.pathnames import printable
from headstart.search.loaded import LoadedIndex
from headstart.serve.dependencies import ReadyEngine, Service, authorised
from headstart.serve.engine import Engine
from headstart.serve.item_routes import thumbnail_url
from headstart.serve.openapi_document import body_doc, json_body_doc
from headstart.serve.parsing import (
    Images,
    ImagesBody,
    NeighborsBody,
    QueryK,
    TextQuery,
    read_images,
    read_query,
    read_text_query,
)
from headstart.serve.schemas import Classification, Embeddings, Neighbors, refusals
from headstart.serve.state import ServiceState

__all__ = ["router"]

router = APIRouter(prefix="/v1", dependencies=[Depends(authorised)])

# What a request carrying images can be refused with.
_IMAGE_REFUSALS = (400, 401, 413, 415, 422, 503)


@router.post(
    "/classify",
    response_model=None,
    responses={200: {"model": Classification}, **refusals(*_IMAGE_REFUSALS)},
    openapi_extra=body_doc(ImagesBody, many=True),
)
async def classify(
    request: Request, engine: ReadyEngine, service: Service, top_k: QueryK = None
) -> dict:
    """One or several images -> the top-k labels of each, with probabilities."""
    images, body_top_k = await read_images(request, service.settings.max_images)
    k = min(top_k or body_top_k, len(engine.head.classes_))
    proba = await run_in_threadpool(engine.classify, await _embed(service, engine, images))
    names = engine.class_names
    results = []
    for number, ((name, _), row) in enumerate(zip(images, proba, strict=True)):
        order = np.argsort(-row)[:k]
        top = [{"label": names[j], "probability": float(row[j])} for j in order]
        results.append({"image": number, "filename": name, "label": top[0]["label"], "top": top})
    return {"fingerprint": engine.fingerprint.id, "results": results}


@router.post(
    "/embed",
    response_model=None,
    responses={200: {"model": Embeddings}, **refusals(*_IMAGE_REFUSALS)},
    openapi_extra=body_doc(ImagesBody, many=True),
)
async def embed_images(request: Request, engine: ReadyEngine, service: Service) -> dict:
    """Images -> embedding vectors (float32), with the fingerprint that made them."""
    images, _ = await read_images(request, service.settings.max_images)
    vectors = await _embed(service, engine, images)
    return {
        "fingerprint": engine.fingerprint.id,
        "dim": engine.dim,
        "embeddings": vectors.astype(np.float32).tolist(),
    }


@router.post(
    "/neighbors",
    response_model=None,
    responses={200: {"model": Neighbors}, **refusals(*_IMAGE_REFUSALS, 404)},
    openapi_extra=body_doc(NeighborsBody, many=False),
)
async def neighbors(
    request: Request, engine: ReadyEngine, service: Service, k: QueryK = None
) -> dict:
    """An image or an embedding vector -> the k nearest items of the index."""
    index = engine.index
    if index is None:
        raise HTTPException(404, "no index is loaded; start the server with --index")
    vector, images, body_k = await read_query(request)
    if images is not None:
        vector = await _embed(service, engine, images)
    elif vector.shape[1] != engine.dim:
        raise HTTPException(
            422, f"the vector has {vector.shape[1]} values; the index expects {engine.dim}"
        )
    similarities, rows = await run_in_threadpool(engine.neighbors, vector, k or body_k)
    found = _items(index, similarities[0], rows[0], service.settings.expose_paths)
    return {"fingerprint": engine.fingerprint.id, "neighbors": found}


@router.post(
    "/search",
    response_model=None,
    responses={
        200: {"model": Neighbors},
        **refusals(
            400,
            401,
            404,
            413,
            415,
            422,
            503,
            reasons={
                400: "The body is empty or not valid JSON.",
                415: "Not application/json.",
                422: "A field is invalid (a blank or over-long text), or the model cannot embed "
                "text (an image-only model): the error says which.",
            },
        ),
    },
    openapi_extra=json_body_doc(TextQuery),
)
async def search(request: Request, engine: ReadyEngine, service: Service) -> dict:
    """A text -> the k nearest items of the index, for a model that embeds text too (an
    image-text model, such as open_clip's); /v1/info's ``text`` says whether it does."""
    index = engine.index
    if index is None:
        raise HTTPException(404, "no index is loaded; start the server with --index")
    query = await read_text_query(request)
    if engine.text_encoder is None:
        raise HTTPException(422, f"this service cannot search by text: {engine.no_text}")
    vector = await run_in_threadpool(engine.embed_text, query.text)
    similarities, rows = await run_in_threadpool(engine.neighbors, vector, query.k)
    found = _items(index, similarities[0], rows[0], service.settings.expose_paths)
    return {"fingerprint": engine.fingerprint.id, "neighbors": found}


def _items(
    index: LoadedIndex, similarities: np.ndarray, rows: np.ndarray, expose_paths: bool
) -> list[dict]:
    """Neighbors as answers show them: ids, labels, keys and thumbnail URLs, no server paths
    unless the service was started with --expose-paths."""
    found = []
    hits = [(float(sim), int(row)) for sim, row in zip(similarities, rows, strict=True) if row >= 0]
    for (similarity, row), entry in zip(hits, index.items.take([r for _, r in hits]), strict=True):
        item = {
            "id": row,
            "label": printable(entry.label) if entry.label is not None else None,
            "key": entry.key,
            "caption": printable(entry.caption) if entry.caption is not None else None,
            "similarity": similarity,
        }
        if index.thumbnails is not None:
            item["thumbnail"] = thumbnail_url(row)
        if expose_paths:
            item["path"] = printable(entry.path)
        found.append(item)
    return found


async def _embed(service: ServiceState, engine: Engine, images: Images) -> np.ndarray:
    """Decode the images off the event loop, then embed them in the batcher's next batch."""

    def decode_all() -> torch.Tensor:
        pixels = []
        for number, (name, data) in enumerate(images):
            try:
                pixels.append(engine.decode(data))
            except DecodeError as exc:
                label = f" ({name})" if name else ""
                raise HTTPException(422, f"image {number}{label}: {exc}") from None
        return torch.stack(pixels)

    # Handed over still decoding, so the batcher knows this request is on its way.
    return await service.batcher.submit(run_in_threadpool(decode_all))
