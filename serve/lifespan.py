"""Start-up and shut-down: the model loads in the background so ``/healthz`` answers at once."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI

from headstart.serve.batcher import MicroBatcher
from headstart.serve.engine import Engine
from headstart.serve.state import ServiceState

__all__ = ["EngineLoader", "lifespan_for"]

log = logging.getLogger(__name__)

# (head directory, index directory or None, device) -> a loaded, warmed-up engine.
EngineLoader = Callable[[str, str | None, str], Engine]


def lifespan_for(
    service: ServiceState, engine_loader: EngineLoader
) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """The app's lifespan: load the model into ``service`` meanwhile, stop its batcher after."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(_load(service, engine_loader))
        yield
        loading.cancel()
        if service.batcher is not None:
            await service.batcher.stop()

    return lifespan


async def _load(service: ServiceState, engine_loader: EngineLoader) -> None:
    settings = service.settings
    try:
        engine = await asyncio.to_thread(
            engine_loader, settings.head_dir, settings.index_dir, settings.device
        )
    except Exception as exc:  # reported by /readyz and the log, not by crashing the server
        log.error("the model failed to load: %s", exc)
        service.load_error = "the model failed to load; see the server log"
        return
    batcher = MicroBatcher(
        engine.embed,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait_ms / 1000,
        on_batch=service.metrics.observe_batch,
    )
    batcher.start()
    service.batcher, service.engine = batcher, engine
