"""Search an index by text: ``headstart knn INDEX --text "a dog on a beach"``.

An index built from an image-text model (``open_clip:...``) holds image embeddings in the
model's joint space; a text embedded by the same model's text tower is a query like any image.
Texts are embedded through the cache (:func:`headstart.extract.text.encode_texts`), so a query
asked again is read back, not encoded. Any other index refuses in one line saying why.

Example:
    >>> loaded = load_index("index")  # doctest: +SKIP
    >>> found = text_neighbors(loaded, ["a red circle"], ".headstart", k=5)
    >>> found[0].query, found[0].rank
    ('text:a red circle', 1)
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from headstart.device import AUTO
from headstart.errors import HeadstartError
from headstart.search.loaded import LoadedIndex
from headstart.search.query import Neighbor, ranked_neighbors
from headstart.search.settings import NEIGHBORS

__all__ = ["refuse_text", "text_neighbors"]


def refuse_text(loaded: LoadedIndex) -> None:
    """Raise, in one line, when the index's embeddings cannot be compared with texts."""
    from headstart.extract.text import why_no_text

    reason = why_no_text(loaded.fingerprint)
    if reason is not None:
        raise HeadstartError(f"this index cannot be searched by text: {reason}")


def text_neighbors(
    loaded: LoadedIndex,
    texts: Sequence[str],
    cache_dir: str | os.PathLike[str],
    *,
    k: int = NEIGHBORS,
    device: str = AUTO,
) -> list[Neighbor]:
    """The ``k`` nearest items of each text, ranked as :func:`query_index` ranks images'.

    Each query is named ``text:TEXT``. Texts the cache holds for the index's fingerprint are
    read back; only the others are encoded (building the text tower once), then cached.
    """
    from headstart.extract.text import encode_texts

    if isinstance(texts, str):
        raise TypeError("text_neighbors takes a list of strings, not one string")
    refuse_text(loaded)
    blank = [t for t in texts if not t.strip()]
    if blank:
        raise HeadstartError("a --text query is empty; give some words to search for")
    if not texts:
        return []
    vectors = encode_texts(list(texts), loaded.fingerprint, cache_dir, device=device)
    similarities, rows = loaded.search(vectors, k)
    return ranked_neighbors(loaded, [f"text:{text}" for text in texts], similarities, rows)
