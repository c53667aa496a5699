"""Saving and loading an index directory.

An index directory holds ``index.faiss``, ``items.csv`` (row, path, label, key) and
``index.json`` (kind, parameters, recall, fingerprint, and the SHA-256 of ``index.faiss``, checked
before FAISS parses the file).
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

from headstart.atomic import atomic_path, write_text_atomic
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import file_key
from headstart.errors import HeadstartError
from headstart.search.loaded import LoadedIndex
from headstart.search.spec import IndexSpec
from headstart.search.thumbnails import ThumbnailStore, ThumbnailSummary
from headstart.search.tune import apply_spec

__all__ = ["INDEX_FORMAT", "load_index", "save_index"]

INDEX_FORMAT = "headstart-index/1"


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
    paths: list[str],
    labels: list[str | None],
    keys: list[str],
    thumbnails: ThumbnailSummary | None = None,
) -> Path:
    """Write the index, its items and ``index.json`` (last, so it marks completeness).

    ``thumbnails`` describes the ones already written into ``directory``, if any.
    """
    import faiss

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "index.faiss") as temporary:
        faiss.write_index(index, str(temporary))
    # Exact bytes for file names that are not UTF-8, read back the same way by load_index.
    with (
        atomic_path(directory / "items.csv") as temporary,
        open(temporary, "w", newline="", encoding="utf-8", errors="surrogateescape") as f,
    ):
        table = csv.writer(f)
        table.writerow(["row", "path", "label", "key"])
        table.writerows(
            [i, p, lab or "", k]
            for i, (p, lab, k) in enumerate(zip(paths, labels, keys, strict=True))
        )
    document = {
        "format": INDEX_FORMAT,
        "spec": asdict(spec),
        "count": int(index.ntotal),
        "dim": int(index.d),
        "metric": "cosine",
        "recall_at_10": recall,
        "fingerprint": fingerprint.to_dict(),
        "index_sha256": file_key(str(directory / "index.faiss")),
        "items_sha256": file_key(str(directory / "items.csv")),
        "thumbnails": thumbnails.to_dict() if thumbnails else None,
        "created_unix": time.time(),
    }
    write_text_atomic(directory / "index.json", json.dumps(document, indent=2) + "\n")
    return directory


def load_index(directory: str | os.PathLike[str]) -> LoadedIndex:
    """Load a saved index after checking its files are the ones ``index.json`` describes."""
    import faiss

    directory = Path(directory)
    try:
        document = json.loads((directory / "index.json").read_text())
    except FileNotFoundError:
        raise HeadstartError(f"{directory} is not a saved index (no index.json)") from None
    if document.get("format") != INDEX_FORMAT:
        raise HeadstartError(f"{directory} holds no {INDEX_FORMAT} index")
    for name, digest in (("index.faiss", "index_sha256"), ("items.csv", "items_sha256")):
        path = directory / name
        if not path.is_file() or file_key(str(path)) != document.get(digest):
            raise HeadstartError(f"{path} does not match index.json (altered or damaged)")
    spec = IndexSpec(**document["spec"])
    index = faiss.read_index(str(directory / "index.faiss"))
    apply_spec(index, spec)
    with open(directory / "items.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.DictReader(f))
    if len(rows) != index.ntotal:
        raise HeadstartError(f"{directory}: {len(rows)} items for {index.ntotal} vectors")
    recorded = Fingerprint.recorded_in(document, str(directory / "index.json"))
    return LoadedIndex(
        index=_on_gpu(index, spec),
        cpu_index=index,
        spec=spec,
        fingerprint=recorded,
        paths=[r["path"] for r in rows],
        labels=[r["label"] or None for r in rows],
        keys=[r["key"] for r in rows],
        document=document,
        thumbnails=ThumbnailStore(directory, len(rows)) if document.get("thumbnails") else None,
    )
