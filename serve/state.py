"""What one running service holds: its settings, its metrics, and the model once it has loaded."""

from __future__ import annotations

from dataclasses import dataclass

from headstart.serve.batcher import MicroBatcher
from headstart.serve.engine import Engine
from headstart.serve.metrics import ServiceMetrics
from headstart.serve.settings import ServeSettings

__all__ = ["ServiceState"]


@dataclass
class ServiceState:
    """Kept on ``app.state.service``; routes reach it through :func:`dependencies.service_state`.

    ``engine`` and ``batcher`` stay None until the model has loaded; ``load_error`` says why
    they never will.
    """

    settings: ServeSettings
    metrics: ServiceMetrics
    engine: Engine | None = None
    batcher: MicroBatcher | None = None
    load_error: str | None = None
