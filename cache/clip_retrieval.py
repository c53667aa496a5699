"""Export in the layout clip-retrieval writes, which autofaiss and embedding-reader read.

``OUT/img_emb/img_emb_0000.npy``: float16 (n, dim) image embeddings, L2-normalised, as
clip-retrieval's inference writes them (its indexes use inner product as cosine);
``OUT/metadata/metadata_0000.parquet``: the same rows in the same order, with ``image_path``
(a path, a URL, or ``SHARD#MEMBER`` for a tar sample), ``url`` (the object's URL when the image
was read from one, else null), ``caption``, ``label`` and ``key`` (the content key);
``OUT/text_emb/text_emb_0000.npy``: for an image-text model, the captions' embeddings,
float16 and normalised, row-aligned with the images. A row without a caption gets a zero
vector there and ``has_caption`` false in its metadata, so the three files stay aligned and
a zero row never matches a query (its inner product with anything is 0).

Parts hold at most ``rows_per_part`` rows and are written a block at a time, so neither the
export nor a part is ever whole in memory. ``OUT`` may be a local folder or any fsspec URL
(``s3://bucket/prefix``); part files of an earlier, larger export there are removed.
"""

from __future__ import annotations

import io
import logging
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO

import numpy as np

from headstart.cache.export import ExportRow, export_rows
from headstart.cache.store import FingerprintStore
from headstart.errors import HeadstartError
from headstart.pathnames import printable

if TYPE_CHECKING:
    from fsspec import AbstractFileSystem

__all__ = ["ClipRetrievalExport", "export_clip_retrieval"]

log = logging.getLogger(__name__)

ROWS_PER_PART = 100_000
_DTYPE = np.dtype("<f2")
_MEMBER_MARK = "#"


@dataclass
class ClipRetrievalExport:
    """What was written: rows, their width, the part files (URLs or paths), and whether the
    captions' embeddings were (``text``) and for how many rows (``captions``)."""

    rows: int
    dim: int
    files: list[str] = field(default_factory=list)
    text: bool = False
    captions: int = 0


def export_clip_retrieval(
    store: FingerprintStore,
    out: str | os.PathLike[str],
    *,
    rows_per_part: int = ROWS_PER_PART,
    text: bool | None = None,
    device: str = "auto",
) -> ClipRetrievalExport:
    """Write ``store``'s rows under ``out`` in clip-retrieval's layout.

    ``text``: write ``text_emb/`` (None: when the fingerprint's model embeds text and some row
    has a caption; True: insist, failing in one line when the model cannot).

    Example:
        >>> store = EmbeddingCache(".headstart").open()  # doctest: +SKIP
        >>> export_clip_retrieval(store, "s3://bucket/laion-subset").files[:2]
        ['s3://bucket/laion-subset/img_emb/img_emb_0000.npy', '.../metadata_0000.parquet']
    """
    from headstart.extract.text import why_no_text

    if rows_per_part < 1:
        raise HeadstartError(f"rows per part must be positive, got {rows_per_part}")
    if not len(store):
        raise HeadstartError(f"fingerprint {store.fingerprint.id} holds no embeddings yet")
    pa, pq = _pyarrow()
    total = captioned = 0
    for rows in export_rows(store):
        total += len(rows)
        captioned += sum(r.caption is not None for r in rows)
    no_text = why_no_text(store.fingerprint)
    if text and no_text is not None:
        raise HeadstartError(
            f"no text embeddings for fingerprint {store.fingerprint.id}: {no_text}"
        )
    with_text = (bool(captioned) and no_text is None) if text is None else bool(text)
    embed_captions = _caption_encoder(store, device) if with_text else None

    fs, root = _filesystem(out)
    folders = ["img_emb", "metadata", *(["text_emb"] if with_text else [])]
    for folder in folders:
        fs.makedirs(f"{root}/{folder}", exist_ok=True)
    parts = math.ceil(total / rows_per_part)
    width = max(4, len(str(parts - 1)))
    dim = int(store.dim or 0)
    schema = _schema(pa, with_text, store.fingerprint.id)
    result = ClipRetrievalExport(total, dim, text=with_text)
    blocks = _rebatched(export_rows(store), rows_per_part)
    for number in range(parts):
        size = min(rows_per_part, total - number * rows_per_part)
        name = str(number).zfill(width)
        paths = {
            f: f"{root}/{f}/{f}_{name}.{'parquet' if f == 'metadata' else 'npy'}" for f in folders
        }
        with (
            fs.open(paths["img_emb"], "wb") as images,
            fs.open(paths["metadata"], "wb") as meta,
            pq.ParquetWriter(meta, schema) as table,
            fs.open(paths["text_emb"], "wb") if with_text else _Nothing() as texts,
        ):
            _npy_header(images, size, dim)
            if texts is not None:
                _npy_header(texts, size, dim)
            written = 0
            while written < size:
                rows = next(blocks, None)
                if rows is None or written + len(rows) > size:
                    raise HeadstartError("the cache changed during export; run it again")
                vectors = _normalised(store.get([r.key for r in rows]))
                images.write(vectors.astype(_DTYPE).tobytes())
                if texts is not None:
                    text_vectors = embed_captions(rows, dim)
                    texts.write(text_vectors.astype(_DTYPE).tobytes())
                    result.captions += sum(r.caption is not None for r in rows)
                table.write_batch(_batch(pa, schema, rows, with_text))
                written += len(rows)
        result.files.extend(fs.unstrip_protocol(p) if _is_url(out) else p for p in paths.values())
    if next(blocks, None) is not None:
        raise HeadstartError("the cache changed during export; run it again")
    _remove_stale(fs, root, folders, width, parts)
    return result


def _pyarrow():
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise HeadstartError(
            "the clip-retrieval export writes Parquet metadata: pip install 'headstart[parquet]'"
        ) from None
    return pa, pq


def _is_url(out: str | os.PathLike[str]) -> bool:
    from headstart.extract.remote import is_url

    return is_url(str(out))


def _filesystem(out: str | os.PathLike[str]) -> tuple[AbstractFileSystem, str]:
    if _is_url(out):
        from headstart.extract.remote import filesystem

        fs, root = filesystem(str(out))
        return fs, root.rstrip("/")
    from fsspec.implementations.local import LocalFileSystem

    return LocalFileSystem(), os.path.abspath(os.fspath(out))


def _schema(pa, with_text: bool, fingerprint: str):
    fields = [
        ("image_path", pa.string()),
        ("url", pa.string()),
        ("caption", pa.string()),
        ("label", pa.string()),
        ("key", pa.string()),
    ]
    if with_text:
        fields.append(("has_caption", pa.bool_()))
    return pa.schema(fields, metadata={"fingerprint": fingerprint})


def _batch(pa, schema, rows: list[ExportRow], with_text: bool):
    def text(values):
        return pa.array([None if v is None else printable(v) for v in values], pa.string())

    columns = [
        text([r.path for r in rows]),
        text([_url(r.path) for r in rows]),
        text([r.caption for r in rows]),
        text([r.label for r in rows]),
        pa.array([r.key for r in rows], pa.string()),
    ]
    if with_text:
        columns.append(pa.array([r.caption is not None for r in rows], pa.bool_()))
    return pa.record_batch(columns, schema=schema)


def _url(path: str) -> str | None:
    """The URL an image was read from (an object of a remote folder); None for files and for
    tar samples, which have no URL of their own."""
    return path if _is_url(path) and _MEMBER_MARK not in path else None


def _caption_encoder(
    store: FingerprintStore, device: str
) -> Callable[[list[ExportRow], int], np.ndarray]:
    """Embeds a block's captions (through the text cache: each caption once per fingerprint),
    normalised, with a zero row where a row has none."""
    from headstart.extract.text import TextEncoder, encode_texts

    encoder: list[TextEncoder] = []

    def embed(rows: list[ExportRow], dim: int) -> np.ndarray:
        out = np.zeros((len(rows), dim), np.float32)
        where = [i for i, r in enumerate(rows) if r.caption is not None]
        if where:
            if not encoder:
                encoder.append(TextEncoder.from_fingerprint(store.fingerprint, device=device))
            captions = [rows[i].caption for i in where]
            vectors = encode_texts(
                captions, store.fingerprint, store.cache.root, encoder=encoder[0]
            )
            if vectors.shape[1] != dim:
                raise HeadstartError(
                    f"the model's text embeddings are {vectors.shape[1]} wide, its image "
                    f"embeddings {dim}: they cannot share one index"
                )
            out[where] = _normalised(vectors)
        return out

    return embed


def _normalised(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def _npy_header(f: BinaryIO, rows: int, dim: int) -> None:
    """The .npy header of a (rows, dim) float16 array, whose data is then appended."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": _DTYPE.str, "fortran_order": False, "shape": (rows, dim)}
    )
    f.write(header.getvalue())


def _rebatched(blocks: Iterator[list[ExportRow]], size: int) -> Iterator[list[ExportRow]]:
    """Blocks cut so that none straddles a part boundary (every ``size`` rows)."""
    room = size
    for rows in blocks:
        while rows:
            head, rows = rows[:room], rows[room:]
            yield head
            room -= len(head)
            if room == 0:
                room = size


def _remove_stale(
    fs: AbstractFileSystem, root: str, folders: list[str], width: int, parts: int
) -> None:
    """Part files an earlier export left beyond this one's: readers take every file."""
    for folder in ("img_emb", "metadata", "text_emb"):
        try:
            names = fs.ls(f"{root}/{folder}", detail=False)
        except FileNotFoundError:
            continue
        keep = (
            {
                f"{folder}_{str(n).zfill(width)}.{'parquet' if folder == 'metadata' else 'npy'}"
                for n in range(parts)
            }
            if folder in folders
            else set()
        )
        for name in names:
            base = name.rstrip("/").rsplit("/", 1)[-1]
            if base.startswith(f"{folder}_") and base not in keep:
                log.info("removing %s, left by an earlier export", name)
                fs.rm_file(name)


class _Nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None
