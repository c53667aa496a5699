"""The content-addressed embedding cache.

Vectors are keyed by the SHA-256 of the image file's bytes and grouped by model fingerprint;
they live in immutable HDF5 shards. See :mod:`headstart.cache.store` for the layout.

Example:
    >>> from headstart.cache import EmbeddingCache  # doctest: +SKIP
    >>> store = EmbeddingCache(".headstart").open()     # the only fingerprint, or pass an id prefix
    >>> for chunk in store.iter_chunks():               # bounded memory: one shard at a time
    ...     print(chunk.keys.shape, chunk.embeddings.shape)
"""

from headstart.cache.catalog import FailureRecord, FileCatalog, FileRecord
from headstart.cache.fingerprint import Fingerprint
from headstart.cache.keys import KeySet, content_key, file_key
from headstart.cache.store import EmbeddingCache, EmbeddingChunk, FingerprintStore
from headstart.cache.writer import ShardWriter

__all__ = [
    "EmbeddingCache",
    "EmbeddingChunk",
    "FailureRecord",
    "FileCatalog",
    "FileRecord",
    "Fingerprint",
    "FingerprintStore",
    "KeySet",
    "ShardWriter",
    "content_key",
    "file_key",
]
