"""Which files of an index directory make up the index now.

``index build`` writes ``index.faiss``, ``items.sqlite`` and ``thumbnails.{bin,npy}``
(generation 0). ``index add`` never rewrites a file in place: it writes generation G's files
(``index.G.faiss``, ``items.G.sqlite``, ``thumbnails.G.*``) beside the current ones and then
replaces ``index.json``, which names them, by a rename. A process killed at any point leaves an
``index.json`` that names complete files: the previous index, or the new one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Layout"]


@dataclass(frozen=True)
class Layout:
    """The files of one generation of an index."""

    generation: int = 0

    def _name(self, stem: str, suffix: str) -> str:
        return f"{stem}{suffix}" if self.generation == 0 else f"{stem}.{self.generation}{suffix}"

    @property
    def index(self) -> str:
        return self._name("index", ".faiss")

    @property
    def items(self) -> str:
        return self._name("items", ".sqlite")

    @property
    def thumbnails(self) -> str:
        """The stem of the thumbnails' two files (``.bin`` and ``.npy``)."""
        return self._name("thumbnails", "")

    def files(self) -> list[str]:
        stem = self.thumbnails
        return [self.index, self.items, f"{stem}.bin", f"{stem}.npy"]

    def next(self) -> Layout:
        return Layout(self.generation + 1)

    @classmethod
    def of(cls, document: dict[str, Any]) -> Layout:
        """The layout ``index.json`` records (generation 0 when it records none)."""
        generation = document.get("generation", 0)
        return cls(generation if isinstance(generation, int) and generation >= 0 else 0)
