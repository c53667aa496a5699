"""What the routes ask FastAPI for: the service's state, a ready engine, a valid API key."""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from headstart.serve.engine import Engine
from headstart.serve.state import ServiceState

__all__ = ["ReadyEngine", "Service", "authorised", "ready_engine", "service_state"]


def service_state(request: Request) -> ServiceState:
    """The state of the app that received the request (set by ``create_app``)."""
    return request.app.state.service


Service = Annotated[ServiceState, Depends(service_state)]


def ready_engine(service: Service) -> Engine:
    """The loaded engine, or 503 while the model loads (or after it failed to)."""
    if service.engine is None:
        raise HTTPException(503, service.load_error or "the model is still loading")
    return service.engine


ReadyEngine = Annotated[Engine, Depends(ready_engine)]


def authorised(request: Request, service: Service) -> None:
    """401 unless the request carries the API key, when the service has one."""
    api_key = service.settings.api_key
    if api_key is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secrets.compare_digest(token, api_key):
        raise HTTPException(
            401,
            "missing or wrong API key (Authorization: Bearer KEY)",
            headers={"WWW-Authenticate": "Bearer"},
        )
