"""Which evaluation images a head was trained on, by content key: copies and renames count.

``train`` records the first 64 bits of every training image's content key (SHA-256 of the file
bytes) as one sorted ``uint64`` array in the head's ``arrays.npz``: 8 bytes a training image,
collected a block of keys at a time from the training view (nothing else of the images is
held). ``evaluate`` and ``report`` look the evaluation images' prefixes up in it and score the
images the head never saw apart from those it did.

A 64-bit prefix is a match with a false-positive rate of about ``n_train / 2**64`` per image:
one in a hundred billion evaluation images for a training set of a hundred million.

Example:
    >>> prefixes = key_prefixes(np.array([b"0f" * 32, b"a1" * 32], dtype="S64"))
    >>> prefixes.tolist() == [0x0f0f0f0f0f0f0f0f, 0xa1a1a1a1a1a1a1a1]
    True
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from headstart.classify.blocks import Blocks, CachedBlocks, ChainedBlocks
from headstart.classify.metrics import Metrics, score
from headstart.pathnames import printable

__all__ = [
    "UNRECORDED",
    "Overlap",
    "key_prefixes",
    "matched_in",
    "split_scores",
    "training_key_prefixes",
]

_PREFIX_BLOCK = 65536
# Why a head may have no record of its training images.
UNRECORDED = "saved before heads recorded them, or fine-tuned"
_HEX_DIGITS = 16  # 64 bits of the hex SHA-256 key


def key_prefixes(keys: np.ndarray) -> np.ndarray:
    """The first 64 bits of hex content keys (``S64``), as uint64, a block at a time."""
    keys = np.ascontiguousarray(keys, dtype="S64")
    out = np.empty(len(keys), dtype=np.uint64)
    shifts = np.arange(4 * (_HEX_DIGITS - 1), -1, -4, dtype=np.uint64)
    for start in range(0, len(keys), _PREFIX_BLOCK):
        block = keys[start : start + _PREFIX_BLOCK]
        chars = block.view(np.uint8).reshape(len(block), 64)[:, :_HEX_DIGITS].astype(np.uint64)
        # '0'-'9' are 48-57 and 'a'-'f' 97-102 in ASCII; anything else only spoils a prefix.
        nibbles = np.where(chars < 58, chars - 48, chars - 87) & np.uint64(15)
        out[start : start + len(block)] = (nibbles << shifts).sum(axis=1, dtype=np.uint64)
    return out


def _key_blocks(source: Blocks) -> Iterator[np.ndarray]:
    if isinstance(source, ChainedBlocks):
        for part in source.parts:
            yield from _key_blocks(part)
        return
    if not isinstance(source, CachedBlocks):
        raise TypeError(f"{type(source).__name__} rows have no content keys")
    for start in range(0, len(source), _PREFIX_BLOCK):
        yield source.keys_of(start, min(start + _PREFIX_BLOCK, len(source)))


def training_key_prefixes(source: Blocks) -> np.ndarray | None:
    """The sorted, distinct key prefixes of the rows of ``source`` (a view of the cache),
    read a block of keys at a time; None for rows that carry no keys (arrays)."""
    if not _has_keys(source):
        return None
    # One array of 8 bytes a row, filled a block at a time and sorted in place.
    prefixes = np.empty(len(source), dtype=np.uint64)
    filled = 0
    for keys in _key_blocks(source):
        prefixes[filled : filled + len(keys)] = key_prefixes(keys)
        filled += len(keys)
    prefixes.sort()
    distinct = np.ones(len(prefixes), dtype=bool)
    distinct[1:] = prefixes[1:] != prefixes[:-1]
    return prefixes[distinct]


def _has_keys(source: Blocks) -> bool:
    if isinstance(source, ChainedBlocks):
        return all(_has_keys(part) for part in source.parts)
    return isinstance(source, CachedBlocks)


def matched_in(keys: np.ndarray, trained: np.ndarray) -> np.ndarray:
    """Which of ``keys`` (``S64``) have their prefix among ``trained`` (sorted uint64)."""
    prefixes = key_prefixes(keys)
    if not len(trained):
        return np.zeros(len(prefixes), dtype=bool)
    where = np.searchsorted(trained, prefixes).clip(max=len(trained) - 1)
    return trained[where] == prefixes


@dataclass(frozen=True)
class Overlap:
    """How many evaluation images the head was trained on, and the metrics on the others.

    ``known`` is False for heads saved before training images were recorded (or trained on
    arrays): then ``matched`` is 0 and ``rest`` None, and nothing can be said."""

    known: bool
    matched: int = 0
    total: int = 0
    rest: Metrics | None = None  # on the images the head was not trained on; None if none
    examples: tuple[str, ...] = ()  # a few matched paths, in source order

    def as_dict(self) -> dict:
        return {
            "known": self.known,
            "matched": self.matched,
            "total": self.total,
            "rest": self.rest.as_dict() if self.rest is not None else None,
            "examples": [printable(path) for path in self.examples],
        }

    def sentence(self) -> str:
        """For people: what matched and, on a second line, the metrics on the rest."""
        if not self.known:
            return (
                "whether these images were in the head's training data is unknown: the head "
                f"does not record its training images ({UNRECORDED}); train it again to check"
            )
        if not self.matched:
            return "none of these images were in the head's training data (matched by content)"
        if self.rest is None:
            return (
                f"all {self.total} of these images were in the head's training data (the same "
                "bytes: copies and renames count); these figures say nothing about new images"
            )
        r = self.rest
        loss = f"  log-loss {r.log_loss:.4f}" if r.log_loss is not None else ""
        return (
            f"{self.matched} of {self.total} images were in the head's training data (the same "
            f"bytes: copies and renames count)\n  on the other {r.n}: accuracy {r.accuracy:.4f}  "
            f"balanced accuracy {r.balanced_accuracy:.4f}  macro-F1 {r.macro_f1:.4f}{loss}"
        )


_EXAMPLES = 10


def split_scores(
    trained: np.ndarray | None,
    keys: np.ndarray,
    labels: np.ndarray,
    proba: np.ndarray,
    classes: np.ndarray,
    paths: list[str],
    *,
    probabilistic: bool = True,
) -> Overlap:
    """The :class:`Overlap` of evaluation images (their ``keys``, ``labels``, the head's
    ``proba`` and ``paths``) with the training prefixes ``trained`` (None: not recorded)."""
    if trained is None:
        return Overlap(known=False, total=len(keys))
    seen = matched_in(keys, trained)
    matched = int(seen.sum())
    rest = None
    if matched < len(keys):
        unseen = ~seen
        rest = score(labels[unseen], proba[unseen], classes, probabilistic=probabilistic)
    examples = tuple(paths[i] for i in np.flatnonzero(seen)[:_EXAMPLES].tolist())
    return Overlap(True, matched, len(keys), rest, examples)
