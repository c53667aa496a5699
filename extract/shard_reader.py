"""The reader for tar shards: shards in, the same typed batches as for files out.

Each DataLoader worker streams whole shards of its own (shard ``i`` goes to worker
``i % workers``), one sample in memory at a time: the image member is hashed (its content key,
exactly as for a file, so the same bytes from a folder and from a shard are one cache entry)
and decoded (unless the store holds that key already: a shard read again after a crash, or
for other label fields, costs its reading and hashing only), its label and caption taken from
the sample's other members. Every fault
(a member that does not decode, a duplicate sample key, a damaged tar) becomes a
:class:`FailureRecord` named ``SHARD#MEMBER`` (or ``SHARD`` for the tar itself) and the
stream goes on. After a shard's last item comes one item that carries its
:class:`ShardRecord`, so the catalog marks it read only once everything it held is recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence

import numpy as np
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from headstart.cache.catalog import FailureRecord, SampleRecord, ShardRecord, member_name
from headstart.cache.keys import KEY_DTYPE, content_key
from headstart.cache.store import FingerprintStore
from headstart.extract.reader import DecodedItem, decode_item, make_loader
from headstart.extract.samples import (
    SampleFault,
    SampleFields,
    ShardEnd,
    TarSample,
    iter_tar_samples,
    label_and_caption,
)
from headstart.extract.shards import ShardRef, open_shard, shard_signature
from headstart.models.preprocess import Preprocess

__all__ = ["ShardDataset", "StoreProbe", "make_shard_loader"]

log = logging.getLogger(__name__)


class StoreProbe:
    """Asks a fingerprint's store whether it holds a key, from any process: each process opens
    its own view of the store (as of its first question), so the probe travels to the
    DataLoader's workers as two small values."""

    def __init__(self, store: FingerprintStore) -> None:
        self._cache, self._fingerprint = store.cache, store.fingerprint
        self._store: FingerprintStore | None = None
        self._pid: int | None = None

    def __contains__(self, key: str) -> bool:
        if self._store is None or self._pid != os.getpid():
            self._store, self._pid = self._cache.open(self._fingerprint), os.getpid()
        # The view is fixed at the first question: an empty one (a first run) holds nothing,
        # and the lookup it would make for every sample is skipped.
        if not len(self._store):
            return False
        return bool(self._store.contains(np.asarray([key], KEY_DTYPE))[0])

    def __getstate__(self) -> dict:
        return {"_cache": self._cache, "_fingerprint": self._fingerprint}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _store=None, _pid=None)


class ShardDataset(IterableDataset):
    """Streams ``shards`` into :class:`DecodedItem`, each worker its own share of shards.

    Example:
        >>> items = list(ShardDataset([ref], preprocess, SampleFields()))  # doctest: +SKIP
        >>> items[-1].shard.samples
        1000
    """

    def __init__(
        self,
        shards: Sequence[ShardRef],
        preprocess: Preprocess,
        fields: SampleFields,
        stored: StoreProbe | None = None,
        *,
        defer_jpegs: bool = False,
    ) -> None:
        self.shards = list(shards)
        self.preprocess = preprocess
        self.fields = fields
        self.stored = stored
        self.defer_jpegs = defer_jpegs

    def __iter__(self) -> Iterator[DecodedItem]:
        worker = get_worker_info()
        mine = self.shards if worker is None else self.shards[worker.id :: worker.num_workers]
        for ref in mine:
            yield from self.read_shard(ref)

    def read_shard(self, ref: ShardRef) -> Iterator[DecodedItem]:
        """The items of one shard, then the item that carries its :class:`ShardRecord`."""
        samples = failures = 0
        damage: str | None = None
        try:
            if ref.problem is not None:  # a remote shard that answered 404 or access denied
                raise OSError(ref.problem)
            stream = open_shard(ref.path, ref.size)
        except OSError as exc:
            damage = f"cannot read shard: {exc.strerror or exc}"
        else:
            with stream:
                for event in iter_tar_samples(stream):
                    if isinstance(event, ShardEnd):
                        damage = event.damage
                        break
                    item = self._item(ref, event)
                    if item is not None:
                        samples += item.sample is not None
                        failures += item.failure is not None
                        yield item
        if damage is not None:
            failures += 1
            yield DecodedItem(
                failure=FailureRecord(ref.path, ref.size, ref.mtime_ns, damage), streamed=True
            )
        if shard_signature(ref.path) != (ref.size, ref.mtime_ns):
            # Replaced or still being written while read: not marked read, so the next run
            # reads it again.
            log.warning("shard %s changed while it was read", ref.path)
            return
        fields = self.fields.describe()
        record = ShardRecord(ref.path, ref.size, ref.mtime_ns, samples, failures, damage, fields)
        yield DecodedItem(shard=record)

    def _item(self, ref: ShardRef, event: TarSample | SampleFault) -> DecodedItem | None:
        """A sample decoded (or its failure), a fault as a failure; None for a sample that
        holds no image (metadata only)."""
        if isinstance(event, SampleFault):
            name = member_name(ref.path, event.member)
            failure = FailureRecord(name, ref.size, ref.mtime_ns, event.reason)
            return DecodedItem(failure=failure, streamed=True)
        extension = event.image()
        if extension is None:
            return None
        data = event.data[extension]
        label, caption = label_and_caption(event, self.fields)
        record = SampleRecord(
            ref.path, event.key, event.names[extension], content_key(data), label, caption
        )
        if self.stored is not None and record.key in self.stored:
            return DecodedItem(sample=record, streamed=True)  # recorded, not embedded again
        failure = FailureRecord(record.name, ref.size, ref.mtime_ns, "", label)
        return decode_item(
            data, self.preprocess, self.defer_jpegs, failure, sample=record, streamed=True
        )


def make_shard_loader(
    shards: Sequence[ShardRef],
    preprocess: Preprocess,
    fields: SampleFields,
    *,
    store: FingerprintStore,
    batch_size: int,
    workers: int,
    pin_memory: bool,
    defer_jpegs: bool = False,
) -> DataLoader:
    """Batches of the shards' samples, decoded by up to ``workers`` processes (no more than
    there are shards: a worker streams whole shards); what ``store`` holds is not decoded."""
    return make_loader(
        ShardDataset(shards, preprocess, fields, StoreProbe(store), defer_jpegs=defer_jpegs),
        batch_size=batch_size,
        workers=min(workers, len(shards)),
        pin_memory=pin_memory,
    )
