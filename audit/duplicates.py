"""Exact duplicates (the same bytes: copies and renames) by content key, within and across
sources, and the same content under different labels.

Grouping sorts a compact row per image (the key's first 64 bits, the source, the row: 14 bytes)
rather than building a dictionary of every key; only rows whose prefixes collide are looked at
again, and their full keys decide.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from headstart.audit.findings import ExactGroup
from headstart.audit.sources import AuditSource
from headstart.classify.overlap import key_prefixes

__all__ = ["exact_duplicates", "key_prefixes", "label_conflicts"]


def exact_duplicates(sources: Sequence[AuditSource]) -> list[ExactGroup]:
    """Every set of two or more images with the same content key, ranked: groups that span
    several sources first (a copy of a training image in a test set inflates its score), then
    larger groups."""
    prefixes = np.concatenate([key_prefixes(s.data.keys) for s in sources])
    source_of = np.concatenate([np.full(len(s), i, dtype=np.int16) for i, s in enumerate(sources)])
    row_of = np.concatenate([np.arange(len(s), dtype=np.int32) for s in sources])
    order = np.argsort(prefixes, kind="stable")
    sorted_prefixes = prefixes[order]
    del prefixes
    repeated = np.flatnonzero(sorted_prefixes[1:] == sorted_prefixes[:-1])
    # Start and end (in sorted order) of every run of equal prefixes.
    starts = np.flatnonzero(np.concatenate([[True], sorted_prefixes[1:] != sorted_prefixes[:-1]]))
    groups: list[ExactGroup] = []
    if len(repeated):
        bounds = np.append(starts, len(sorted_prefixes))
        runs = np.searchsorted(starts, repeated, side="right") - 1
        for run in np.unique(runs):
            members = order[bounds[run] : bounds[run + 1]]
            groups.extend(_by_full_key(sources, source_of[members], row_of[members]))
    groups.sort(key=lambda g: (-len(g.sources), -len(g.items), g.key))
    return groups


def label_conflicts(groups: Sequence[ExactGroup]) -> list[ExactGroup]:
    """The exact-duplicate groups whose copies carry different labels, most labels first."""
    conflicting = [group for group in groups if group.conflicting]
    return sorted(conflicting, key=lambda g: (-len(g.labels), -len(g.items), g.key))


def _by_full_key(
    sources: Sequence[AuditSource], source_ids: np.ndarray, rows: np.ndarray
) -> list[ExactGroup]:
    by_key: dict[bytes, list[tuple[int, int]]] = {}
    for source_id, row in zip(source_ids.tolist(), rows.tolist(), strict=True):
        by_key.setdefault(bytes(sources[source_id].data.keys[row]), []).append((source_id, row))
    return [
        ExactGroup(key.decode(), tuple(sources[s].item(r) for s, r in sorted(members)))
        for key, members in by_key.items()
        if len(members) > 1
    ]
