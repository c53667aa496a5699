"""The sources of an audit, each kept apart under the name the user gave it."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from headstart.audit.findings import Item
from headstart.classify.data import Embedded, embed_sources, read_embedded
from headstart.extract import ExtractOptions

__all__ = ["AuditSource", "embed_audit_sources", "iter_vector_blocks"]

BLOCK_ROWS = 16384  # vectors read from the store at a time (32 MB at 512 dimensions, float32)


@dataclass(frozen=True)
class AuditSource:
    """One source as given (``data/val``) and its usable images, keys and labels."""

    name: str
    data: Embedded

    def __len__(self) -> int:
        return len(self.data.keys)

    @property
    def labelled(self) -> bool:
        """Whether any of its images has a label (a folder of class folders, a labelled list)."""
        return any(label is not None for label in self.data.labels)

    def item(self, row: int) -> Item:
        label = self.data.labels[row]
        return Item(self.name, self.data.paths[row], None if label is None else str(label))


def embed_audit_sources(
    sources: Sequence[str],
    options: ExtractOptions,
    cache_dir: str | os.PathLike[str],
    *,
    progress: bool = False,
) -> list[AuditSource]:
    """Embed what the cache lacks (one extract over every source, as ``train`` does), then read
    each source back on its own so findings can say which source an image came from."""
    together = embed_sources(sources, options, cache_dir, progress=progress)
    cache, fingerprint = together.store.cache, together.fingerprint
    found = []
    for name in dict.fromkeys(sources):  # a source named twice is audited once
        found.append(
            AuditSource(name, read_embedded([name], cache, fingerprint, fields=options.fields))
        )
    return found


def iter_vector_blocks(
    data: Embedded, rows: np.ndarray | None = None, block_rows: int = BLOCK_ROWS
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(row numbers, float32 vectors) of ``rows`` (default: all), ``block_rows`` at a time,
    read from the store so no source's vectors sit in memory at once."""
    if rows is None:
        rows = np.arange(len(data.keys))
    for start in range(0, len(rows), block_rows):
        chunk = rows[start : start + block_rows]
        yield chunk, data.store.get(data.keys[chunk])
