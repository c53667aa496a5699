"""/metrics: the service's Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from headstart.serve.dependencies import Service, authorised

__all__ = ["router"]

router = APIRouter()


@router.get("/metrics", dependencies=[Depends(authorised)])
async def prometheus(service: Service) -> Response:
    """Prometheus text format: requests, latency, batch sizes."""
    return Response(service.metrics.render(), media_type="text/plain; version=0.0.4")
