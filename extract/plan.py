"""Planning: decide, from ``stat`` alone, which listed images still need a forward pass.

An image whose (size, mtime_ns) matches the stat index has a known content key; if that key is
already in the fingerprint's store, nothing more is read. Everything else goes on the work list:
new or changed files, and files embedded only under other fingerprints. Files that failed before
and have not changed are skipped unless a retry is asked for.

Tar shards are planned whole: a shard the catalog records as read, at its current signature
and with the label and caption fields given (a field not given takes the recorded one), whose
samples' keys the store all holds, is not opened; any other is read again from its start (the
keys the store holds are not embedded again). Its failures are skipped as a file's are,
unless a retry is asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice

import numpy as np

from headstart.cache.catalog import FailureRecord, FileCatalog, FileRecord
from headstart.cache.keys import KeyMembership
from headstart.extract.files import stat_file
from headstart.extract.parts import Partition
from headstart.extract.remote import listed_stat
from headstart.extract.samples import SampleFields
from headstart.extract.shards import ShardRef
from headstart.extract.sources import ImageItem
from headstart.extract.worklist import WorkList

__all__ = ["PlanCounts", "plan_shards", "plan_work"]

_CHUNK = 2048
# Known files whose keys are looked up in the store at once. The key index reads each of its
# blocks at most once per lookup, and a lookup of scattered keys touches nearly every block:
# at 2,048 keys a lookup, a no-op extract of 8M files read the whole index 3,900 times.
_LOOKUP_ROWS = 1 << 16


@dataclass
class PlanCounts:
    listed: int = 0
    listed_in_shards: int = 0  # of ``listed``: a part counts only its own shards' items
    cached: int = 0
    known_failures: int = 0
    new_failures: int = 0
    pending: int = 0


def plan_work(
    items: Iterable[ImageItem],
    catalog: FileCatalog,
    cached: KeyMembership,
    work: WorkList,
    *,
    retry_failed: bool = False,
    partition: Partition | None = None,
) -> PlanCounts:
    """Append what must be embedded to ``work``; record files that cannot even be stat'ed.

    With a ``partition``, the part plans the known files whose key it owns and every file
    not hashed yet (see :class:`~headstart.extract.reader.ImageFileDataset`). ``listed``
    counts every listed file, the other counts only the part's own, so that each file is
    counted by exactly one part however the parts' runs overlap.
    """
    counts = PlanCounts()
    candidates: list[tuple[ImageItem, FileRecord]] = []
    for chunk in _chunks(items, _CHUNK):
        paths = [item.path for item in chunk]
        known, failed = catalog.lookup(paths), catalog.lookup_failures(paths)
        known_files, unreadable = _sort_chunk(
            chunk, known, failed, work, counts, retry_failed, partition
        )
        candidates.extend(known_files)
        counts.new_failures += len(unreadable)
        if unreadable:
            catalog.record(failures=unreadable)
        if len(candidates) >= _LOOKUP_ROWS:
            _settle_known(candidates, cached, work, counts, catalog)
            candidates = []
    _settle_known(candidates, cached, work, counts, catalog)
    return counts


def _sort_chunk(
    chunk: list[ImageItem],
    known: dict[str, FileRecord],
    failed: dict[str, FailureRecord],
    work: WorkList,
    counts: PlanCounts,
    retry_failed: bool,
    partition: Partition | None,
) -> tuple[list[tuple[ImageItem, FileRecord]], list[FailureRecord]]:
    """Put new and changed files on ``work``; return the files with a known key (to look up in
    the store) and those that cannot even be stat'ed."""
    candidates: list[tuple[ImageItem, FileRecord]] = []
    unreadable: list[FailureRecord] = []
    for item in chunk:
        listed = listed_stat(item)  # a remote listing's signature: no request per object
        st, stat_error = (listed, None) if listed is not None else stat_file(item.path)
        signature = (st.st_size, st.st_mtime_ns) if st is not None else (-1, -1)
        entry = known.get(item.path)
        if entry is not None and (entry.size, entry.mtime_ns) != signature:
            entry = None  # the file changed since its key was recorded
        # A known key decides which part plans the file; a file not hashed yet is read by
        # every part and decoded only by its key's owner (the reader checks). A file with
        # no key to go by (unreadable, or failed before) is its path's owner's to report.
        counts.listed += 1
        if partition is not None and entry is not None and not partition.owns_key(entry.key):
            continue
        counted = entry is not None or partition is None or partition.owns_path(item.path)
        failure = failed.get(item.path)
        if failure is not None and failure.matches(*signature) and not retry_failed:
            counts.known_failures += int(counted)
            continue
        if stat_error is not None:
            if counted:
                size, mtime_ns = signature
                unreadable.append(FailureRecord(item.path, size, mtime_ns, stat_error, item.label))
            continue
        if entry is not None:
            candidates.append((item, entry))
        else:
            work.append(item)
            counts.pending += 1
    return candidates, unreadable


def _settle_known(
    candidates: list[tuple[ImageItem, FileRecord]],
    cached: KeyMembership,
    work: WorkList,
    counts: PlanCounts,
    catalog: FileCatalog,
) -> None:
    """Files with a known key: counted as cached when the store has it, else put on ``work``;
    the cached ones whose label the listing changed are recorded anew."""
    if not candidates:
        return
    relabelled: list[FileRecord] = []
    in_store = cached.contains(np.array([e.key for _, e in candidates], dtype="S64"))
    for (item, entry), hit in zip(candidates, in_store, strict=True):
        if not hit:
            work.append(item)
            counts.pending += 1
            continue
        counts.cached += 1
        if entry.label != item.label:
            relabelled.append(
                FileRecord(entry.path, entry.size, entry.mtime_ns, entry.key, item.label)
            )
    if relabelled:
        catalog.record(relabelled)


def plan_shards(
    shards: Sequence[ShardRef],
    catalog: FileCatalog,
    cached: KeyMembership,
    fields: SampleFields,
    counts: PlanCounts,
    *,
    retry_failed: bool = False,
    partition: Partition | None = None,
) -> list[ShardRef]:
    """The shards to read, in order; the others are counted into ``counts`` from their record.

    With a ``partition``, the part takes every ``count``-th shard of the list (``--part I/N``
    gives every part the same sources, hence the same list), and neither counts nor opens
    the others. What a shard to read had recorded is dropped now: reading it records it anew.
    """
    to_read: list[ShardRef] = []
    for number, ref in enumerate(shards):
        if partition is not None and number % partition.count != partition.index:
            continue
        record = catalog.lookup_shard(ref.path)
        if (
            record is not None
            and (record.size, record.mtime_ns) == (ref.size, ref.mtime_ns)
            and fields.agree_with(record.fields)
            and not (retry_failed and record.failures)
            and _all_stored(catalog.shard_keys(ref.path), cached)
        ):
            counts.listed += record.samples + record.failures
            counts.listed_in_shards += record.samples + record.failures
            counts.cached += record.samples
            counts.known_failures += record.failures
            continue
        # Also what a run killed in the middle of the shard recorded: the shard may have
        # changed since.
        catalog.forget_shard(ref.path)
        to_read.append(ref)
    return to_read


def _all_stored(keys: list[str], cached: KeyMembership) -> bool:
    return not keys or bool(cached.contains(np.array(keys, dtype="S64")).all())


def _chunks(items: Iterable[ImageItem], size: int) -> Iterator[list[ImageItem]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk
