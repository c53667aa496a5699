"""Saving and loading an index directory.

An index directory holds ``index.faiss``, ``items.sqlite`` (row -> path, label, key: see
:mod:`headstart.search.items`), optionally thumbnails, and ``index.json`` (kind, parameters,
recall, fingerprint, and a stamp of each file: see :mod:`headstart.search.checksum`). Loading
checks each file's size, time and sampled blocks before FAISS parses it; ``verify`` (``headstart
index verify``, ``--verify``) checks every byte. ``index.json`` is written last, so its presence
marks a complete directory. ``index add`` grows an index into a new generation of files (see
:mod:`headstart.search.layout`), which ``index.json`` then names.

Directories written before the item table (format ``headstart-index/1``, with ``items.csv``)
still load: their items are converted into ``items.sqlite`` beside the CSV on first load, and
``index.json`` is rewritten to describe it (each file published by a rename, so an interrupted
conversion leaves the old directory as it was).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from headstart.atomic import atomic_path, write_text_atomic
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import file_key
from headstart.errors import HeadstartError
from headstart.search.checksum import FileStamp, stamp_file
from headstart.search.items import ItemTable, items_from_csv, write_items
from headstart.search.layout import Layout
from headstart.search.loaded import LoadedIndex
from headstart.search.spec import IVF_KINDS, IndexSpec
from headstart.search.thumbnails import ThumbnailStore, ThumbnailSummary
from headstart.search.tune import apply_spec

__all__ = [
    "INDEX_FORMAT",
    "file_record",
    "load_index",
    "save_index",
    "verify_index",
    "write_document",
]

log = logging.getLogger(__name__)

INDEX_FORMAT = "headstart-index/2"
_CSV_FORMAT = "headstart-index/1"  # items.csv: read, converted on first load
_CSV_ITEMS = "items.csv"


def _mmap_flags(spec: IndexSpec) -> int:
    """FAISS's read flags that map ``spec``'s index from its file instead of reading it.

    IVF kinds: IO_FLAG_MMAP makes the inverted lists stored in index.faiss a read-only
    OnDiskInvertedLists over the file's own bytes; the coarse quantizer (nlist centroids) is
    read. Flat and HNSW: IO_FLAG_MMAP_IFC (FAISS 1.10 and later; 1.15.1 here) maps the flat
    codes, the vectors themselves; HNSW's graph is read. FAISS 1.15.1 refuses the two flags
    together on an IVF index (its mapped reader is no file for the inverted lists' hook), and
    IO_FLAG_MMAP alone leaves a flat index's codes in memory, hence one flag per kind.
    """
    import faiss

    if spec.kind in IVF_KINDS:
        return faiss.IO_FLAG_MMAP
    return getattr(faiss, "IO_FLAG_MMAP_IFC", 0)  # an older FAISS: read into memory


def _on_gpu(index, spec: IndexSpec):
    import faiss

    if faiss.get_num_gpus() > 0 and spec.kind in ("flat", "ivf"):
        return faiss.index_cpu_to_all_gpus(index)
    return index


def save_index(
    directory: str | os.PathLike[str],
    index,
    spec: IndexSpec,
    recall: float,
    *,
    fingerprint: Fingerprint,
    paths: Iterable[str] = (),
    labels: Iterable[str | None] = (),
    keys: Iterable[str] = (),
    captions: Iterable[str | None] | None = None,
    items: str | os.PathLike[str] | None = None,
    thumbnails: ThumbnailSummary | None = None,
) -> Path:
    """Write the index, its items and ``index.json`` (last, so it marks completeness).

    The items are ``paths``, ``labels``, ``keys`` and ``captions`` (None: none has one), read
    in step a block at a time, or an item table already written (``items``: see
    :func:`~headstart.search.items.write_items`), moved into place. ``thumbnails`` describes
    the ones already written into ``directory``, if any.
    """
    import faiss

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    layout = Layout()
    with atomic_path(directory / layout.index) as temporary:
        faiss.write_index(index, str(temporary))
    if items is not None:
        os.replace(items, directory / layout.items)
        table = ItemTable(directory / layout.items)
        count = len(table)
        table.close()
    else:
        if captions is None:
            rows = ((*row, None) for row in zip(paths, labels, keys, strict=True))
        else:
            rows = zip(paths, labels, keys, captions, strict=True)
        count = write_items(directory / layout.items, rows)
    if count != index.ntotal:
        raise HeadstartError(f"{count} items for {index.ntotal} vectors")
    document = {
        "format": INDEX_FORMAT,
        "spec": asdict(spec),
        "count": int(index.ntotal),
        "dim": int(index.d),
        "metric": "cosine",
        "recall_at_10": recall,
        "fingerprint": fingerprint.to_dict(),
        **file_record(directory, layout),
        "thumbnails": thumbnails.to_dict() if thumbnails else None,
        "created_unix": time.time(),
    }
    write_document(directory, document)
    return directory


def load_index(
    directory: str | os.PathLike[str], *, verify: bool = False, mmap: bool = True
) -> LoadedIndex:
    """Load a saved index after checking its files are the ones ``index.json`` describes:
    cheaply (size, modification time, sampled blocks), or every byte with ``verify``.

    ``mmap`` (the default) maps the vectors from ``index.faiss`` rather than reading them: the
    process holds only what its searches touch, and processes serving one index share its
    pages through the page cache. Off, the index is read into memory.
    """
    import faiss

    directory = Path(directory)
    document, layout = _current(directory)
    for name in (layout.index, layout.items):
        _check(directory, name, document, full=verify)
    spec = IndexSpec(**document["spec"])
    index = faiss.read_index(str(directory / layout.index), _mmap_flags(spec) if mmap else 0)
    apply_spec(index, spec)
    items = ItemTable(directory / layout.items)
    if len(items) != index.ntotal:
        raise HeadstartError(f"{directory}: {len(items)} items for {index.ntotal} vectors")
    recorded = Fingerprint.recorded_in(document, str(directory / "index.json"))
    return LoadedIndex(
        index=_on_gpu(index, spec),
        cpu_index=index,
        spec=spec,
        fingerprint=recorded,
        items=items,
        document=document,
        thumbnails=(
            ThumbnailStore(directory, len(items), layout.thumbnails)
            if document.get("thumbnails")
            else None
        ),
    )


def _read_document(directory: Path) -> dict[str, Any]:
    try:
        document = json.loads((directory / "index.json").read_text())
    except FileNotFoundError:
        raise HeadstartError(f"{directory} is not a saved index (no index.json)") from None
    except (OSError, ValueError) as exc:
        raise HeadstartError(f"{directory}/index.json cannot be read ({exc})") from None
    if not isinstance(document, dict) or document.get("format") not in (
        INDEX_FORMAT,
        _CSV_FORMAT,
    ):
        raise HeadstartError(f"{directory} holds no {INDEX_FORMAT} index")
    return document


def verify_index(directory: str | os.PathLike[str]) -> list[str]:
    """Check every byte of an index's files against ``index.json``; returns the files whose
    contents agree but whose modification time moved (a copy), after recording the new time so
    that loading accepts them. Raises when a file differs."""
    directory = Path(directory)
    document, layout = _current(directory)
    checked = (layout.index, layout.items)
    for name in checked:
        _check(directory, name, document, full=True)
    moved = [
        name
        for name in checked
        if os.stat(directory / name).st_mtime_ns != document["files"][name]["mtime_ns"]
    ]
    if moved:
        files = dict(document["files"])
        for name in moved:
            files[name] = {**files[name], "mtime_ns": os.stat(directory / name).st_mtime_ns}
        try:
            write_document(directory, {**document, "files": files})
        except OSError as exc:
            raise HeadstartError(
                f"{directory}: every byte matches, but its new modification times cannot be "
                f"recorded ({exc.strerror or exc}); make {directory} writable and verify again"
            ) from None
    return moved


def _current(directory: Path) -> tuple[dict[str, Any], Layout]:
    """``index.json`` (older directories brought up to date first) and the files it names."""
    document = _read_document(directory)
    if document.get("format") == _CSV_FORMAT:
        document = _convert_csv_items(directory, document)
    if not isinstance(document.get("files"), dict):
        document = _stamp_unstamped(directory, document)
    return document, Layout.of(document)


def file_record(directory: str | os.PathLike[str], layout: Layout) -> dict[str, Any]:
    """index.json's record of ``layout``'s files, just written: their generation, a stamp of
    the index and the items each, and (as before stamps) their full digests. Thumbnails check
    their own offsets against their size."""
    directory = Path(directory)
    stamps = {name: stamp_file(directory / name) for name in (layout.index, layout.items)}
    return {
        "generation": layout.generation,
        "files": {name: stamp.to_dict() for name, stamp in stamps.items()},
        "index_sha256": stamps[layout.index].sha256,
        "items_sha256": stamps[layout.items].sha256,
    }


def _check(directory: Path, name: str, document: dict[str, Any], *, full: bool) -> None:
    path = directory / name
    stamp = FileStamp.from_dict(document["files"].get(name))
    if stamp is None:
        raise HeadstartError(f"{directory}/index.json does not describe {name}; rebuild the index")
    why = stamp.full_difference(path) if full else stamp.quick_difference(path)
    if why is None:
        return
    if why.startswith("it was modified"):
        raise HeadstartError(
            f"{path} does not match index.json: {why}; if the index was only copied, "
            f"`headstart index verify {directory}` checks every byte and accepts it"
        )
    raise HeadstartError(
        f"{path} does not match index.json (altered or damaged: {why}); rebuild the index"
    )


def _check_digest(path: Path, digest: str | None) -> None:
    if not path.is_file() or file_key(str(path)) != digest:
        raise HeadstartError(f"{path} does not match index.json (altered or damaged)")


def write_document(directory: str | os.PathLike[str], document: dict[str, Any]) -> None:
    """Replace ``index.json`` by a rename: readers see the old document or the new one."""
    write_text_atomic(Path(directory) / "index.json", json.dumps(document, indent=2) + "\n")


def _stamp_unstamped(directory: Path, document: dict[str, Any]) -> dict[str, Any]:
    """An index saved with digests only: checked in full this once, then stamped (when the
    directory is writable) so later loads are cheap."""
    layout = Layout.of(document)
    for name, digest in ((layout.index, "index_sha256"), (layout.items, "items_sha256")):
        _check_digest(directory / name, document.get(digest))
    stamped = {**document, **file_record(directory, layout)}
    try:
        write_document(directory, stamped)
    except OSError as exc:
        log.info("%s: cannot record its files' stamps (%s); checked in full", directory, exc)
    return stamped


def _convert_csv_items(directory: Path, document: dict[str, Any]) -> dict[str, Any]:
    """An index that keeps ``items.csv``: checked, then its items written as a table beside it
    and ``index.json`` rewritten (last) to describe the table."""
    _check_digest(directory / _CSV_ITEMS, document.get("items_sha256"))
    layout = Layout()
    _check_digest(directory / layout.index, document.get("index_sha256"))
    try:
        items_from_csv(directory / _CSV_ITEMS, directory / layout.items)
        converted = {**document, "format": INDEX_FORMAT, **file_record(directory, layout)}
        write_document(directory, converted)
    except OSError as exc:
        raise HeadstartError(
            f"{directory} keeps its items in the older items.csv, and converting them failed "
            f"({exc}); make the directory writable once, or rebuild with headstart index build"
        ) from None
    log.info("%s: items.csv converted into %s", directory, layout.items)
    return converted
