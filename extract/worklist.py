"""The images still to embed, kept on disk so the list costs no memory as it grows.

Planning appends items; decoding workers read item ``i`` by seeking to its offset. Only the
offsets (8 bytes an item) live in memory, and they travel to each worker once.
"""

from __future__ import annotations

import json
import os
from array import array
from pathlib import Path

from headstart.extract.sources import ImageItem

__all__ = ["WorkList"]


class WorkList:
    """An append-then-read list of :class:`ImageItem` in ``directory/worklist.jsonl``.

    Example:
        >>> work = WorkList(Path(tmp))  # doctest: +SKIP
        >>> work.append(ImageItem("/data/cat.jpg", "cat")); work.seal(); work[0].label
        'cat'
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "worklist.jsonl"
        self._offsets = array("q")
        self._writer = open(self.path, "wb")  # noqa: SIM115 - closed by seal()
        self._reader = None
        self._reader_pid: int | None = None

    def append(self, item: ImageItem) -> None:
        self._offsets.append(self._writer.tell())
        self._writer.write(json.dumps([item.path, item.label]).encode() + b"\n")

    def seal(self) -> None:
        """Finish appending; the list becomes readable (also from worker processes)."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def __len__(self) -> int:
        return len(self._offsets)

    def __getitem__(self, index: int) -> ImageItem:
        if self._writer is not None:
            raise RuntimeError("seal() the work list before reading it")
        # Each process opens its own handle: a handle inherited through fork shares its offset.
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open(self.path, "rb")  # noqa: SIM115 - lives as long as the list
            self._reader_pid = os.getpid()
        self._reader.seek(self._offsets[index])
        path, label = json.loads(self._reader.readline())
        return ImageItem(path, label)

    def __getstate__(self) -> dict:
        if self._writer is not None:
            raise RuntimeError("seal() the work list before sending it to workers")
        return {"path": self.path, "_offsets": self._offsets}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._offsets = state["_offsets"]
        self._writer = None
        self._reader = None
        self._reader_pid = None

    def close(self) -> None:
        self.seal()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
