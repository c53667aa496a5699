"""Liveness, readiness and what the service runs: /healthz, /readyz, /v1/info."""

from __future__ import annotations

import platform

import torch
from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from headstart import __version__
from headstart.serve.dependencies import ReadyEngine, Service, authorised
from headstart.serve.engine import public_model_name
from headstart.serve.schemas import Health, Info, Readiness, refusals

__all__ = ["router"]

router = APIRouter()


@router.get("/healthz", response_model=Health)
async def healthz() -> dict:
    """Alive (the process answers)."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Loading, or the model failed to load."}},
)
async def readyz(service: Service) -> JSONResponse:
    """Ready: the model is loaded and warmed up."""
    if service.engine is None:
        return JSONResponse({"ready": False, "error": service.load_error or "loading"}, 503)
    return JSONResponse({"ready": True})


@router.get(
    "/v1/info",
    dependencies=[Depends(authorised)],
    response_model=Info,
    responses=refusals(401, 503),
)
async def info(engine: ReadyEngine, service: Service) -> dict:
    """The model fingerprint, classes, embedding width, index size, whether the model embeds
    text (search by text), and versions."""
    recipe = engine.fingerprint.recipe
    return {
        "fingerprint": engine.fingerprint.id,
        "model": public_model_name(engine.fingerprint),
        "weights": recipe.get("weights"),
        "layer": recipe.get("layer"),
        "precision": recipe.get("precision"),
        "head": engine.head.head_name,
        "classes": engine.class_names,
        "dim": engine.dim,
        "index_size": engine.index.index.ntotal if engine.index is not None else None,
        "text": engine.text_encoder is not None,
        "max_batch": service.settings.max_batch,
        "versions": {
            "headstart": __version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
    }
