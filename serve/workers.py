"""``serve --workers N``: N processes, each its own app, sharing one memory-mapped index.

uvicorn starts each worker as a fresh process that imports an app factory; the factory reads
the service's settings from the environment the command set, as JSON (the API key travels the
way it came: in the environment). Each worker loads the model itself. The index's files are
memory-mapped by every worker, so its pages sit once in the page cache however many workers
read them.
"""

from __future__ import annotations

import dataclasses
import json
import os

from fastapi import FastAPI

from headstart.serve.app import create_app
from headstart.serve.settings import ServeSettings

__all__ = ["SETTINGS_ENV", "create_app_from_environment", "settings_for_workers"]

SETTINGS_ENV = "HEADSTART_SERVE_SETTINGS"


def settings_for_workers(settings: ServeSettings) -> dict[str, str]:
    """The environment entry that hands ``settings`` to each worker."""
    return {SETTINGS_ENV: json.dumps(dataclasses.asdict(settings))}


def create_app_from_environment() -> FastAPI:
    """The app of one worker (an app factory for ``uvicorn --factory``)."""
    try:
        settings = ServeSettings(**json.loads(os.environ[SETTINGS_ENV]))
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeError(f"no service settings in {SETTINGS_ENV}: {exc}") from None
    return create_app(settings)
