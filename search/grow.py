"""New vectors join a saved index without a rebuild: ``headstart index add``.

The index's own structure takes them as FAISS does: appended to a flat index's vectors, added
to the lists of an IVF index by its trained quantizer (which is not retrained: vectors far from
the collection it was trained on are found, less well balanced), inserted into HNSW's graph.
Search parameters stay as tuned at build.

Nothing is rewritten in place: the grown index, its items (the old table copied by SQLite,
then the new rows) and thumbnails are written as the next generation's files
(:mod:`headstart.search.layout`), then ``index.json`` is replaced by a rename. ``kill -9`` at any
moment leaves either the previous index or the grown one, each whole. The generation before
the previous is then deleted: a service started on the previous one keeps its files.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.atomic import TEMPORARY_PREFIX, atomic_path
from headstart.errors import HeadstartError
from headstart.search.budget import plan_build
from headstart.search.items import write_items
from headstart.search.layout import Layout
from headstart.search.listing import item_paths
from headstart.search.spec import IndexSpec
from headstart.search.store import file_record, load_index, write_document
from headstart.search.thumbnails import write_thumbnails
from headstart.search.vectors import Vectors

__all__ = ["Added", "add_to_index"]

log = logging.getLogger(__name__)

_LOCK = ".add.lock"


@dataclass(frozen=True)
class Added:
    """What ``add_to_index`` did."""

    added: int
    count: int  # items in the index now
    generation: int


def add_to_index(
    directory: str | os.PathLike[str],
    vectors: np.ndarray | Vectors,
    items: Iterable[tuple[str, str | None, str, str | None]],
    *,
    max_memory: int | None = None,
) -> Added:
    """Add ``vectors`` (one row per item of ``items``: path, label, content key, caption) to
    the index in ``directory``; thumbnails are made for them when the index keeps thumbnails.

    The index is read into memory to grow it (FAISS adds to an index it holds), so
    ``max_memory`` must hold it grown plus a block of new vectors; less is refused before
    anything is written.
    """
    directory = Path(directory)
    if isinstance(vectors, np.ndarray):
        vectors = Vectors(vectors)
    with _only_adder(directory):
        return _add(directory, vectors, items, max_memory)


@contextmanager
def _only_adder(directory: Path) -> Iterator[None]:
    """Hold ``directory``'s add lock: two adds at once would each publish an index lacking
    the other's vectors. Temporary files a killed add left behind are removed under it."""
    try:
        handle = open(directory / _LOCK, "a")  # noqa: SIM115 - held for the block below
    except OSError as exc:
        raise HeadstartError(f"cannot add to {directory}: {exc.strerror or exc}") from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise HeadstartError(f"another index add is running on {directory}") from None
        for stale in directory.glob(f"{TEMPORARY_PREFIX}*"):
            stale.unlink(missing_ok=True)
        yield


def _add(directory: Path, vectors: Vectors, items, max_memory: int | None) -> Added:
    import faiss

    loaded = load_index(directory, mmap=False)
    spec: IndexSpec = loaded.spec
    index = loaded.cpu_index
    if vectors.count and vectors.dim != index.d:
        raise HeadstartError(f"the new vectors have {vectors.dim} dimensions, the index {index.d}")
    before, total = index.ntotal, index.ntotal + vectors.count
    if max_memory is not None:
        vectors.block_rows = plan_build(spec, total, index.d, max_memory).block_rows
    if not vectors.count:
        if next(iter(items), None) is not None:
            raise HeadstartError(f"items for {vectors.count} new vectors")
        return Added(0, index.ntotal, Layout.of(loaded.document).generation)
    for _, block in vectors.blocks():
        index.add(block)
    current = Layout.of(loaded.document)
    grown = current.next()
    with atomic_path(directory / grown.index) as temporary:
        faiss.write_index(index, str(temporary))
    # Rows are read as they are written (a generator is welcome); their count is checked
    # after, before anything names the new files.
    count = write_items(directory / grown.items, items, after=loaded.items.path)
    if count != total:
        raise HeadstartError(f"{count - before} items for {vectors.count} new vectors")
    document = {**loaded.document, "count": int(total), **file_record(directory, grown)}
    if loaded.thumbnails is not None:
        previous = loaded.document["thumbnails"]
        summary = write_thumbnails(
            directory,
            item_paths(directory / grown.items, start=before),
            side=int(previous["side"]),
            stem=grown.thumbnails,
            after=loaded.thumbnails,
            missing=int(previous["missing"]),
        )
        document["thumbnails"] = summary.to_dict()
    document["updated_unix"] = time.time()
    write_document(directory, document)  # the grown index is the index from here on
    loaded.items.close()
    _remove_older_than(directory, current)
    log.info("%s: %d vectors added, %d in all", directory, vectors.count, total)
    return Added(vectors.count, total, grown.generation)


def _remove_older_than(directory: Path, kept: Layout) -> None:
    """Delete the files of generations before ``kept`` (the one just replaced), and of any
    generation an interrupted add left behind."""
    current = kept.next()
    for generation in range(current.generation + 2):
        if generation in (kept.generation, current.generation):
            continue
        for name in Layout(generation).files():
            (directory / name).unlink(missing_ok=True)
