"""The images still to embed, kept on disk so the list costs no memory as it grows.

Planning appends items; decoding workers read item ``i`` by seeking to its offset. The offsets
(8 bytes an item) are written beside the items and memory-mapped once sealed, so neither the
planner nor a worker holds them, and a worker started from a fork server receives two paths.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from headstart.extract.sources import ImageItem

__all__ = ["WorkList"]

_OFFSET = np.dtype("<i8")


class WorkList:
    """An append-then-read list of :class:`ImageItem` in ``directory/worklist.jsonl``, with
    each item's byte offset in ``directory/worklist.offsets``.

    Example:
        >>> work = WorkList(Path(tmp))  # doctest: +SKIP
        >>> work.append(ImageItem("/data/cat.jpg", "cat")); work.seal(); work[0].label
        'cat'
    """

    def __init__(self, directory: Path) -> None:
        self.path = directory / "worklist.jsonl"
        self.offsets_path = directory / "worklist.offsets"
        self._count = 0
        self._writer = open(self.path, "wb")  # noqa: SIM115 - closed by seal()
        self._offset_writer = open(self.offsets_path, "wb")  # noqa: SIM115 - closed by seal()
        self._offsets: np.ndarray | None = None
        self._reader = None
        self._reader_pid: int | None = None

    def append(self, item: ImageItem) -> None:
        self._offset_writer.write(self._writer.tell().to_bytes(8, "little", signed=True))
        self._writer.write(json.dumps([item.path, item.label]).encode() + b"\n")
        self._count += 1

    def seal(self) -> None:
        """Finish appending; the list becomes readable (also from worker processes)."""
        if self._writer is not None:
            self._writer.close()
            self._offset_writer.close()
            self._writer = self._offset_writer = None

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, index: int) -> ImageItem:
        if self._writer is not None:
            raise RuntimeError("seal() the work list before reading it")
        if not 0 <= index < self._count:
            raise IndexError(index)
        # Each process opens its own handle: a handle inherited through fork shares its offset.
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open(self.path, "rb")  # noqa: SIM115 - lives as long as the list
            self._reader_pid = os.getpid()
        if self._offsets is None:
            self._offsets = np.memmap(self.offsets_path, _OFFSET, mode="r", shape=(self._count,))
        self._reader.seek(int(self._offsets[index]))
        path, label = json.loads(self._reader.readline())
        return ImageItem(path, label)

    def __getstate__(self) -> dict:
        if self._writer is not None:
            raise RuntimeError("seal() the work list before sending it to workers")
        return {"path": self.path, "offsets_path": self.offsets_path, "_count": self._count}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(
            state, _writer=None, _offset_writer=None, _offsets=None, _reader=None, _reader_pid=None
        )

    def close(self) -> None:
        self.seal()
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._offsets = None
