"""The reader: files in, typed batches of uint8 pixels out, in DataLoader worker processes.

Each file is read once: the same bytes are hashed (the cache key) and decoded. A file that
cannot be read or decoded becomes a :class:`FailureRecord` in the batch instead of an error,
so one bad image in a million costs that image only. When the work is split into parts, a file
whose key another part owns is hashed and passed over without decoding. Decoding is timed
where it happens, in the worker processes, and each batch carries its items' seconds, summed.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import torch
from torch.utils.data import DataLoader, Dataset

from headstart.cache.catalog import FailureRecord, FileRecord, SampleRecord, ShardRecord
from headstart.cache.keys import content_key
from headstart.errors import HeadstartError, first_line
from headstart.extract.files import UnreadableFile, read_file
from headstart.extract.parts import Partition
from headstart.extract.worklist import WorkList
from headstart.models.decode import DecodeError, EncodedJpeg, decode_pixels, jpeg_for_device
from headstart.models.preprocess import Preprocess, to_uint8_tensor
from headstart.workers import loader_workers

__all__ = [
    "DecodedBatch",
    "DecodedItem",
    "DeferredJpeg",
    "ImageFileDataset",
    "decode_item",
    "iter_batches",
    "make_loader",
    "model_pixels",
]


@dataclass
class DecodedItem:
    """One work item after reading: a file (or tar sample) record and pixels, a failure, or
    neither (the file belongs to another part); or the end of a tar shard (``shard``).
    ``streamed``: the item was found while reading a shard rather than listed beforehand.
    ``decode_seconds``: decoding and resizing it took. ``pixels`` is an :class:`EncodedJpeg`
    when JPEGs are decoded on the model's device; ``undecodable`` is then the failure recorded
    if it proves not to decode there or on the CPU."""

    file: FileRecord | None = None
    pixels: torch.Tensor | EncodedJpeg | None = None
    failure: FailureRecord | None = None
    decode_seconds: float = 0.0
    sample: SampleRecord | None = None
    shard: ShardRecord | None = None
    streamed: bool = False
    undecodable: FailureRecord | None = None


@dataclass
class DeferredJpeg:
    """A batch item left encoded: the ``position``-th of its keys, its bytes at
    ``start:stop`` of the batch's ``encoded``, its size, its file and/or sample record, and
    the failure to record if it does not decode."""

    position: int
    start: int
    stop: int
    width: int
    height: int
    file: FileRecord | None
    sample: SampleRecord | None
    undecodable: FailureRecord


@dataclass
class DecodedBatch:
    """``pixels[i]`` has content key ``keys[i]`` and belongs to the i-th of ``files`` then
    ``samples`` in item order, but for the last ``stored`` samples, which the store held
    already (not decoded); ``failures`` are the items that did not decode; ``others``
    counts files left to the part that owns their key; ``shards`` are the tar shards whose last
    items this batch carries; ``streamed`` counts items found by reading shards;
    ``decode_seconds`` is the time its items took to decode and resize, added up.
    ``deferred`` items are JPEGs left encoded for the model's device: ``pixels`` then holds
    the other items only, until :func:`~headstart.extract.deferred.decode_deferred` fills
    them in."""

    pixels: torch.Tensor
    files: list[FileRecord] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    others: int = 0
    decode_seconds: float = 0.0
    samples: list[SampleRecord] = field(default_factory=list)
    shards: list[ShardRecord] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    streamed: int = 0
    stored: int = 0
    paired: int = 0  # table rows of a local file: recorded both as a file and as a sample
    deferred: list[DeferredJpeg] = field(default_factory=list)
    # The deferred JPEGs' bytes end to end: one tensor, so a batch crosses from its worker in
    # one shared-memory segment and is pinned in one allocation, not one per image.
    encoded: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.uint8))

    @property
    def item_count(self) -> int:
        """The work items this batch accounts for: decoded, failed, or left to another part."""
        files_and_samples = len(self.files) + len(self.samples) - self.paired
        return files_and_samples + len(self.failures) + self.others

    def deferred_jpegs(self) -> list[EncodedJpeg]:
        """The deferred items' JPEGs, as views of ``encoded``."""
        return [
            EncodedJpeg(self.encoded[item.start : item.stop], item.width, item.height)
            for item in self.deferred
        ]

    def pin_memory(self) -> DecodedBatch:
        # DataLoader's pin-memory thread calls this on custom batch types.
        return replace(self, pixels=self.pixels.pin_memory(), encoded=self.encoded.pin_memory())


class ImageFileDataset(Dataset):
    """Reads, hashes, decodes and resizes item ``i`` of a :class:`WorkList`.

    With a ``partition``, only files whose content key it owns are decoded; a file that cannot
    be read is reported by the part that owns its path, so exactly one part records it.
    """

    def __init__(
        self,
        work: WorkList,
        preprocess: Preprocess,
        partition: Partition | None = None,
        *,
        defer_jpegs: bool = False,
    ) -> None:
        self.work = work
        self.preprocess = preprocess
        self.partition = partition
        self.defer_jpegs = defer_jpegs

    def __len__(self) -> int:
        return len(self.work)

    def __getitem__(self, index: int) -> DecodedItem:
        item = self.work[index]
        try:
            data, st = read_file(item.path)
        except UnreadableFile as exc:
            if self.partition is not None and not self.partition.owns_path(item.path):
                return DecodedItem()
            return DecodedItem(failure=FailureRecord(item.path, -1, -1, str(exc), item.label))
        # The key is the hash of these very bytes, and the same bytes are decoded below.
        key = content_key(data)
        if self.partition is not None and not self.partition.owns_key(key):
            return DecodedItem()
        record = FileRecord(item.path, st.st_size, st.st_mtime_ns, key, item.label)
        failure = FailureRecord(item.path, st.st_size, st.st_mtime_ns, "", item.label)
        return decode_item(data, self.preprocess, self.defer_jpegs, failure, file=record)


def decode_item(
    data: bytes,
    preprocess: Preprocess,
    defer_jpegs: bool,
    failure: FailureRecord,
    *,
    file: FileRecord | None = None,
    sample: SampleRecord | None = None,
    streamed: bool = False,
) -> DecodedItem:
    """The item of a file and/or sample record with ``data`` decoded, timed; if it does not
    decode, ``failure`` with the reason. Every reader makes its items here."""
    began = time.perf_counter()
    try:
        pixels = model_pixels(data, preprocess, defer_jpegs)
    except DecodeError as exc:
        failed = failure._replace(reason=str(exc))
        seconds = time.perf_counter() - began
        return DecodedItem(failure=failed, decode_seconds=seconds, streamed=streamed)
    seconds = time.perf_counter() - began
    return DecodedItem(
        file=file,
        sample=sample,
        pixels=pixels,
        decode_seconds=seconds,
        streamed=streamed,
        undecodable=failure,
    )


def model_pixels(
    data: bytes, preprocess: Preprocess, defer_jpegs: bool = False
) -> torch.Tensor | EncodedJpeg:
    """Image bytes as the uint8 pixels the model is given, however they were read (a file or
    a tar member): the same bytes, the same key, the same pixels. Raises DecodeError.

    With ``defer_jpegs``, a JPEG the model's device decodes comes back still encoded."""
    if defer_jpegs and (jpeg := jpeg_for_device(data)) is not None:
        return jpeg
    return to_uint8_tensor(decode_pixels(data, min_side=preprocess.resize_size), preprocess)


def collate(items: list[DecodedItem]) -> DecodedBatch:
    good = [item for item in items if item.pixels is not None]
    failures = [item.failure for item in items if item.failure is not None]
    decoded = [item.pixels for item in good if isinstance(item.pixels, torch.Tensor)]
    pixels = torch.stack(decoded) if decoded else torch.empty((0, 3, 0, 0), dtype=torch.uint8)
    deferred, encoded, offset = [], [], 0
    for position, item in enumerate(good):
        if isinstance(item.pixels, EncodedJpeg):
            jpeg, stop = item.pixels, offset + len(item.pixels.data)
            deferred.append(
                DeferredJpeg(
                    position,
                    offset,
                    stop,
                    jpeg.width,
                    jpeg.height,
                    item.file,
                    item.sample,
                    item.undecodable,
                )
            )
            encoded.append(jpeg.data)
            offset = stop
    others = sum(
        item.file is None and item.sample is None and item.failure is None and item.shard is None
        for item in items
    )
    return DecodedBatch(
        pixels,
        files=[item.file for item in good if item.file is not None],
        failures=failures,
        others=others,
        decode_seconds=sum(item.decode_seconds for item in items),
        samples=[item.sample for item in good if item.sample is not None]
        + [item.sample for item in items if item.sample is not None and item.pixels is None],
        shards=[item.shard for item in items if item.shard is not None],
        keys=[item.file.key if item.file is not None else item.sample.key for item in good],
        streamed=sum(item.streamed for item in items),
        stored=sum(item.sample is not None and item.pixels is None for item in items),
        paired=sum(item.file is not None and item.sample is not None for item in good),
        deferred=deferred,
        encoded=torch.cat(encoded) if encoded else torch.empty(0, dtype=torch.uint8),
    )


def make_loader(dataset: Dataset, *, batch_size: int, workers: int, pin_memory: bool) -> DataLoader:
    """Batches in order, decoded by ``workers`` processes (0: in this process)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate,
        pin_memory=pin_memory,
        prefetch_factor=4 if workers else None,
        persistent_workers=False,
        **loader_workers(workers),
    )


def iter_batches(
    loader: DataLoader, kept: str = "everything embedded so far is saved: rerun to continue"
) -> Iterator:
    """The loader's batches; a worker process that dies (killed for memory, or by a signal
    sent to the whole process group) ends them with one :class:`HeadstartError`, raised here
    where the next batch is awaited; ``kept`` says what the user keeps.

    torch reports a dead worker from a SIGCHLD handler, which raises inside whatever runs at
    that moment: the model (so the error blamed the model), or the code publishing the last
    rows after Ctrl-C or a scheduler's SIGTERM. Without that handler the loader notices the
    death itself while waiting, and a stopping run never waits again.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGCHLD) if main_thread else None
    batches = iter(loader)
    if main_thread and loader.num_workers:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL if previous is None else previous)
    try:
        yield from batches
    except (RuntimeError, ConnectionResetError, EOFError) as exc:
        # A worker killed in the middle of sending a batch can also break the pipe the batch
        # travels through, before torch has noticed the death.
        dead_worker = "DataLoader worker" in str(exc) or (
            loader.num_workers and not isinstance(exc, RuntimeError)
        )
        if not dead_worker:
            raise
        raise HeadstartError(
            f"a data loading worker process stopped ({first_line(exc).strip()}); {kept} "
            "(--workers 0 loads images in the main process)"
        ) from None
