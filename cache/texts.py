"""Text embeddings in the cache, beside the image embeddings of the same fingerprint.

::

    <cache>/<fingerprint id>/texts/*.h5   immutable files of (key, text, embedding) rows

A row's key is the SHA-256 of the text (UTF-8), so a prompt set is encoded once per
fingerprint. Files are written whole under a temporary name and renamed into place, as image
shards are; each also records the model's logit scale (and bias), which zero-shot scores need.
Once a fingerprint has many small files (one per query), the next write merges them. Rows are
only ever read from the directory of their own fingerprint, and a file that says it belongs to
another is skipped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from headstart import __version__
from headstart.atomic import atomic_path
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KEY_DTYPE
from headstart.cache.shards import SHARD_READ_ERRORS, read_shard_rows, shard_paths
from headstart.errors import first_line

__all__ = ["TEXT_FORMAT", "LogitScale", "TextCache", "text_key"]

log = logging.getLogger(__name__)

TEXT_FORMAT = "headstart-text-embeddings/1"
_MERGE_AT = 16  # files; the write that finds more merges them into one
_SNAPSHOT_TRIES = 5


def text_key(text: str) -> str:
    """The content key of a text: the SHA-256 of its UTF-8 bytes, as 64 hex characters."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class LogitScale:
    """How an image-text model turns cosine similarities into logits:
    ``scale * cos + (bias or 0)`` (``scale`` is ``exp`` of the model's parameter)."""

    scale: float
    bias: float | None = None


class TextCache:
    """The text embeddings of one fingerprint.

    Example:
        >>> texts = TextCache(".headstart", fingerprint)  # doctest: +SKIP
        >>> vectors, found = texts.lookup([text_key("a photo of a dog")])
    """

    def __init__(self, root: str | os.PathLike[str], fingerprint: Fingerprint) -> None:
        self.fingerprint = fingerprint
        self.directory = Path(root) / fingerprint.id / "texts"

    def files(self) -> list[Path]:
        """Published files, oldest first."""
        return shard_paths(self.directory)

    def __len__(self) -> int:
        return len(self._snapshot()[0])

    def lookup(self, keys: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """``(vectors, found)``: float32 (n, dim) rows for ``keys`` (zeros where not cached)
        and the mask of those found. ``dim`` is 0 while nothing is cached."""
        wanted = np.asarray(keys, KEY_DTYPE)
        for _ in range(_SNAPSHOT_TRIES - 1):
            try:
                return self._read(wanted, *self._snapshot())
            except FileNotFoundError:
                continue  # a merge replaced files since the listing: list again
        return self._read(wanted, *self._snapshot())

    def logit_scale(self) -> LogitScale | None:
        """The logit scale recorded with the newest readable file, or None when there is none."""
        for path in reversed(self.files()):
            try:
                with h5py.File(path, "r", locking=False) as f:
                    if not self._belongs(f, path):
                        continue
                    bias = float(f.attrs["logit_bias"])
                    return LogitScale(
                        float(f.attrs["logit_scale"]), None if math.isnan(bias) else bias
                    )
            except SHARD_READ_ERRORS:
                continue
        return None

    def add(
        self, texts: Sequence[str], vectors: np.ndarray, logit_scale: LogitScale
    ) -> Path | None:
        """Publish rows (one file, written atomically); merge the files when there are many.
        Returns the new file, or None when ``texts`` is empty."""
        if len(texts) != len(vectors) or np.ndim(vectors) != 2:
            raise ValueError(f"{len(texts)} texts for vectors of shape {np.shape(vectors)}")
        if not len(texts):
            return None
        keys = np.asarray([text_key(t) for t in texts], KEY_DTYPE)
        path = self._publish(keys, list(texts), np.asarray(vectors, np.float32), logit_scale)
        if len(self.files()) > _MERGE_AT:
            self._merge()
        return path

    def _snapshot(self) -> tuple[dict[bytes, tuple[int, int]], list[Path], int]:
        """key -> (file number, row) over the readable files; the newest copy of a key wins."""
        index: dict[bytes, tuple[int, int]] = {}
        paths: list[Path] = []
        dim = 0
        for path in self.files():
            try:
                with h5py.File(path, "r", locking=False) as f:
                    if not self._belongs(f, path):
                        continue
                    file_dim = int(f.attrs["dim"])
                    keys = f["keys"][()]
            except FileNotFoundError:
                continue  # merged away since the listing: its rows are in the merged file
            except SHARD_READ_ERRORS as exc:
                log.warning(
                    "text embeddings %s cannot be read (%s); skipped", path, first_line(exc)
                )
                continue
            if dim and file_dim != dim:
                log.warning("text embeddings %s are %d wide, not %d; skipped", path, file_dim, dim)
                continue
            dim = file_dim
            number = len(paths)
            paths.append(path)
            index.update((key, (number, row)) for row, key in enumerate(keys.tolist()))
        return index, paths, dim

    def _read(
        self, wanted: np.ndarray, index: dict, paths: list[Path], dim: int
    ) -> tuple[np.ndarray, np.ndarray]:
        out = np.zeros((len(wanted), dim), np.float32)
        found = np.zeros(len(wanted), bool)
        by_file: dict[int, tuple[list[int], list[int]]] = {}
        for position, key in enumerate(wanted.tolist()):
            where = index.get(key)
            if where is not None:
                positions, rows = by_file.setdefault(where[0], ([], []))
                positions.append(position)
                rows.append(where[1])
        for number, (positions, rows) in by_file.items():
            out[positions] = read_shard_rows(paths[number], np.asarray(rows)).astype(np.float32)
            found[positions] = True
        return out, found

    def _belongs(self, f: h5py.File, path: Path) -> bool:
        owner = str(f.attrs.get("fingerprint"))
        if f.attrs.get("format") != TEXT_FORMAT or owner != self.fingerprint.id:
            log.warning(
                "%s holds text embeddings of %s, not %s; skipped", path, owner, self.fingerprint.id
            )
            return False
        return True

    def _publish(
        self, keys: np.ndarray, texts: list[str], vectors: np.ndarray, logit_scale: LogitScale
    ) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / f"{time.time_ns():020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.h5"
        with atomic_path(final) as temporary, h5py.File(temporary, "w") as f:
            f.create_dataset("keys", data=keys)
            f.create_dataset("embeddings", data=vectors)
            # Bytes, not str: a lone surrogate (from a file name, say) is kept as it came.
            encoded = [t.encode("utf-8", "surrogatepass") for t in texts]
            f.create_dataset("texts", data=encoded, dtype=h5py.string_dtype())
            f.attrs.update(
                {
                    "format": TEXT_FORMAT,
                    "fingerprint": self.fingerprint.id,
                    "count": len(keys),
                    "dim": vectors.shape[1],
                    "logit_scale": logit_scale.scale,
                    "logit_bias": math.nan if logit_scale.bias is None else logit_scale.bias,
                    "created_unix": time.time(),
                    "headstart_version": __version__,
                }
            )
        return final

    def _merge(self) -> None:
        """One file for all: published before the old ones go, so readers always find every
        row (a reader that lists meanwhile sees both, with the same rows)."""
        scale = self.logit_scale()
        index, paths, _ = self._snapshot()
        if scale is None or len(paths) < 2:
            return
        keys, texts, vectors = [], [], []
        for number, path in enumerate(paths):
            rows = sorted(row for n, row in index.values() if n == number)
            if not rows:
                continue  # every row has a newer copy
            with h5py.File(path, "r", locking=False) as f:
                keys.append(f["keys"][rows])
                texts.extend(t.decode("utf-8", "surrogatepass") for t in f["texts"][rows])
                vectors.append(f["embeddings"][rows])
        self._publish(np.concatenate(keys), texts, np.concatenate(vectors), scale)
        for path in paths:
            path.unlink(missing_ok=True)
