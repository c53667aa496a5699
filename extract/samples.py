"""A tar shard as a stream of samples, grouped the way webdataset groups them.

A webdataset shard is a plain tar: the members of one sample sit next to each other and share a
key, the member's path up to the first dot of its file name (``dir/000123.jpg``,
``dir/000123.cls`` and ``dir/000123.json`` are sample ``dir/000123``). The tar is read as a
stream (:mod:`.tar_members`): one pass, nothing unpacked to disk, one sample's members in
memory at a time.

What goes wrong in a shard is yielded as a :class:`SampleFault` in the stream, never raised: the
caller's handler decides what it costs (the reader records it in the failure ledger and goes
on). A shard that ends early, in a member or between members, ends the stream with a
:class:`ShardEnd` that names the damage; the samples before it are yielded as usual.

Our own reader rather than the ``webdataset`` package: its pipeline brings its own worker
splitting, shuffling and exception handlers, while the reader here needs one shard per call
inside our own DataLoader workers, every fault as a ledger row, and a check that the archive
really ended (a tar cut at a member boundary otherwise passes for a whole one).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from headstart.extract.sources import IMAGE_EXTENSIONS
from headstart.extract.tar_members import TarDamage, iter_tar_members

__all__ = [
    "SampleFault",
    "SampleFields",
    "ShardEnd",
    "TarSample",
    "iter_tar_samples",
    "label_and_caption",
    "split_member_name",
]

# A member larger than this is not read into memory (an image this size is a fault anyway).
MAX_MEMBER_BYTES = 1 << 28


@dataclass(frozen=True)
class SampleFields:
    """Where a sample's label and caption come from: a field of its ``.json``, or (None) its
    ``.cls`` and ``.txt`` members. For tables (:mod:`.tables`) each field names a column,
    None its default name: ``path``, ``url``, ``label``, ``caption``, ``id``."""

    label_field: str | None = None
    caption_field: str | None = None
    path_field: str | None = None
    url_field: str | None = None
    id_field: str | None = None

    def describe(self) -> str:
        """A stable text of the choice, recorded with each shard read under it (the table
        columns play no part in reading a shard)."""
        return json.dumps([self.label_field, self.caption_field])

    def agree_with(self, recorded: str) -> bool:
        """Whether a shard read under ``recorded`` (a :meth:`describe` text) holds what these
        fields would read: each field given is the one it was read under; a field not given
        takes what was recorded, so ``train`` without ``--caption-field`` neither reads a
        shard again nor drops the captions ``extract --caption-field`` kept."""
        try:
            label, caption = json.loads(recorded)
        except (TypeError, ValueError):
            return False
        return self.label_field in (None, label) and self.caption_field in (None, caption)


@dataclass
class TarSample:
    """One sample: its key and its members, extension (lower case) -> bytes and -> name."""

    key: str
    data: dict[str, bytes] = field(default_factory=dict)
    names: dict[str, str] = field(default_factory=dict)

    def image(self) -> str | None:
        """The extension of the sample's image member (the first one in the tar), or None."""
        for extension in self.data:
            if "." + extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS:
                return extension
        return None


@dataclass(frozen=True)
class SampleFault:
    """A member that cannot be used: its name in the tar, and why."""

    member: str
    reason: str


@dataclass(frozen=True)
class ShardEnd:
    """The end of a shard's stream: ``damage`` says why it ended early (None: it did not)."""

    damage: str | None = None


def split_member_name(name: str) -> tuple[str, str] | None:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``); None without an extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, extension = base.partition(".")
    if not dot or not stem or not extension:
        return None
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def iter_tar_samples(stream: BinaryIO) -> Iterator[TarSample | SampleFault | ShardEnd]:
    """The samples of the tar (plain, .gz, .bz2 or .xz) read from ``stream``, in tar order,
    then one :class:`ShardEnd`.

    A sample whose key an earlier sample of the shard already had is not yielded: a
    :class:`SampleFault` names it instead, since two samples with one key cannot both be
    addressed as ``SHARD#KEY``.

    Example:
        >>> with open("shard-000.tar", "rb") as f:  # doctest: +SKIP
        ...     [s.key for s in iter_tar_samples(f) if isinstance(s, TarSample)]
        ['000000', '000001']
    """
    seen: set[str] = set()  # one shard's keys: bounded by the shard, dropped with it
    current: TarSample | None = None
    damage: str | None = None
    try:
        for member in iter_tar_members(_decompressed(stream), MAX_MEMBER_BYTES):
            parts = split_member_name(member.name)
            if parts is None:
                continue
            key, extension = parts
            if current is None or key != current.key or extension in current.data:
                yield from _finished(current, seen)
                current = TarSample(key)
            if member.data is None:
                yield SampleFault(member.name, member.unread or "not read")
                continue
            current.data[extension] = member.data
            current.names[extension] = member.name
    except TarDamage as exc:
        # The members read whole before the damage are still good; so is the sample that
        # holds them (a label member cut off leaves it unlabelled).
        damage = str(exc)
    except (OSError, ValueError) as exc:
        # Only peeking at the magic number raises these: every later read is
        # iter_tar_members', which turns its failures into TarDamage.
        damage = f"damaged tar after 0 members: {exc or type(exc).__name__}"
    yield from _finished(current, seen)
    yield ShardEnd(damage)


def _finished(sample: TarSample | None, seen: set[str]) -> Iterator[TarSample | SampleFault]:
    if sample is None or not sample.data:
        return
    if sample.key in seen:
        extension = sample.image() or next(iter(sample.names))
        yield SampleFault(
            sample.names[extension],
            f"duplicate sample key {sample.key!r} in this shard: its first sample is used",
        )
        return
    seen.add(sample.key)
    yield sample


def _decompressed(stream: BinaryIO) -> BinaryIO:
    """The tar bytes of ``stream``, decompressed by its magic number. Decompressors raise on a
    cut-off stream, so a shard cut short is told from a whole one."""
    buffered = stream if hasattr(stream, "peek") else io.BufferedReader(stream)  # type: ignore[arg-type]
    magic = buffered.peek(6)[:6]
    if magic.startswith(b"\x1f\x8b"):
        return gzip.GzipFile(fileobj=buffered)  # type: ignore[return-value]
    if magic.startswith(b"BZh"):
        return bz2.BZ2File(buffered)  # type: ignore[return-value]
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.LZMAFile(buffered)  # type: ignore[return-value]
    return buffered  # type: ignore[return-value]


def label_and_caption(sample: TarSample, fields: SampleFields) -> tuple[str | None, str | None]:
    """The sample's label (``.cls``: a class index or name) and caption (``.txt``), or the
    named fields of its ``.json``. A missing member or field leaves it None."""
    record = _json(sample) if fields.label_field or fields.caption_field else None
    if fields.label_field:
        label = _field(record, fields.label_field)
    else:
        label = _text(sample.data.get("cls"))
    if fields.caption_field:
        caption = _field(record, fields.caption_field)
    else:
        caption = _text(sample.data.get("txt"))
    return label, caption


def _text(data: bytes | None) -> str | None:
    if data is None:
        return None
    return data.decode("utf-8", "replace").strip() or None


def _json(sample: TarSample) -> dict | None:
    data = sample.data.get("json")
    if data is None:
        return None
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _field(record: dict | None, name: str) -> str | None:
    value = None if record is None else record.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return value if isinstance(value, str) else json.dumps(value)
