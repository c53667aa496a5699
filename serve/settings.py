"""What one ``headstart serve`` runs with, and the defaults its command line shows.

Kept free of heavy imports: the ``serve`` command reads its option defaults from here when the
CLI is imported, and ``headstart --help`` must stay instant.
"""

from __future__ import annotations

from dataclasses import dataclass

from headstart.device import AUTO

__all__ = ["ServeSettings"]


@dataclass(frozen=True)
class ServeSettings:
    """What one service runs: its head and index, its device, its batching and its limits."""

    head_dir: str
    index_dir: str | None = None
    device: str = AUTO
    max_batch: int = 32
    max_wait_ms: float = 5.0
    max_upload_mb: float = 20.0
    max_images: int = 64
    api_key: str | None = None
    expose_paths: bool = False
    workers: int = 1  # processes sharing the port and the memory-mapped index
