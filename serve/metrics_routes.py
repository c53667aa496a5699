"""/metrics: the service's Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response

from headstart.serve.dependencies import Service, authorised
from headstart.serve.schemas import PROMETHEUS_TEXT, refusals

__all__ = ["router"]

router = APIRouter()


class PrometheusText(Response):
    media_type = PROMETHEUS_TEXT


@router.get(
    "/metrics",
    dependencies=[Depends(authorised)],
    response_class=PrometheusText,
    responses={
        200: {"content": {PROMETHEUS_TEXT: {"schema": {"type": "string"}}}},
        **refusals(401),
    },
)
async def prometheus(service: Service) -> PrometheusText:
    """Prometheus text format: requests, latency, batch sizes."""
    return PrometheusText(service.metrics.render())
