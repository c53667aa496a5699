"""Heads by similarity: k-nearest neighbors (FAISS) and nearest class mean.

Both compare L2-normalised vectors by inner product, that is by cosine similarity. The kNN vote
is either a plain majority or the temperature-weighted vote of the DINO protocol, where each
neighbor counts ``exp(similarity / T)``.

The kNN head keeps its training vectors in a FAISS scalar-quantizer index with float16 codes,
filled a block at a time: 2 bytes a dimension, and no float32 copy of the whole set, in memory
or on disk. Cosines of unit vectors stored in float16 are exact to about 1e-3.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from headstart.classify.heads import Head, HeadOption, register_head
from headstart.device import AUTO, resolve_device
from headstart.errors import HeadstartError
from headstart.search.exact import exact_search, l2_normalize  # re-exported: heads use them

__all__ = ["KNNHead", "NearestClassMeanHead", "exact_search", "knn_votes", "l2_normalize"]

VOTES = ("weighted", "majority")
_QUERY_ROWS = 4096  # queries searched at once: bounds the (queries x k) result buffers


def knn_votes(
    similarities: np.ndarray, labels: np.ndarray, n_classes: int, *, vote: str, temperature: float
) -> np.ndarray:
    """Class scores from neighbor similarities and labels (both (n, k)), rows summing to 1."""
    if vote not in VOTES:
        raise HeadstartError(f"unknown vote {vote!r}; use {' or '.join(VOTES)}")
    valid = labels >= 0  # FAISS pads with -1 when the database is smaller than k
    if vote == "weighted":
        # Shifting by the row maximum leaves the normalised vote unchanged and avoids overflow.
        weights = np.exp((similarities - similarities.max(axis=1, keepdims=True)) / temperature)
    else:
        weights = np.ones_like(similarities)
    weights = np.where(valid, weights, 0.0)
    scores = np.zeros((len(labels), n_classes), dtype=np.float64)
    rows = np.repeat(np.arange(len(labels)), labels.shape[1])
    np.add.at(scores, (rows, np.where(valid, labels, 0).ravel()), weights.ravel())
    return (scores / np.maximum(scores.sum(axis=1, keepdims=True), 1e-300)).astype(np.float32)


# knn's weighted vote and ncm's probabilities soften cosine similarities alike: one option.
_TEMPERATURE = HeadOption(
    "temperature", float, "Softmax temperature of cosines.", minimum=0, above_minimum=True
)


def _fp16_index(d: int):
    import faiss

    return faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)


class _Codes:
    """A FAISS index's code array as NumPy sees it, without a copy; the view keeps the index
    alive (it is the view's base)."""

    def __init__(self, index) -> None:
        self.index = index
        size = index.ntotal * index.code_size
        address = int(index.codes.data()) if size else 0
        self.__array_interface__ = {
            "shape": (size,),
            "typestr": "|u1",
            "data": (address, True),
            "version": 3,
        }


@register_head("knn")
class KNNHead(Head):
    """k-nearest-neighbor vote over the training vectors, by cosine similarity.

    Example:
        >>> KNNHead(k=20, vote="weighted").fit(X, y).predict(X_new)  # doctest: +SKIP
    """

    options = (
        HeadOption("k", int, "Neighbors that vote.", minimum=1, flag="-k"),
        HeadOption("vote", str, "How neighbors vote.", choices=("weighted", "majority")),
        _TEMPERATURE,
    )
    grid = ("k", (10, 20, 100, 200))
    streams = True  # it reads blocks, though what it learns grows with the rows

    def __init__(self, k: int = 20, *, vote: str = "weighted", temperature: float = 0.07) -> None:
        self.k = k
        self.vote = vote
        self.temperature = temperature

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        return n * (2 * d + 4)  # float16 codes and an int32 label a row

    def fit(self, X: np.ndarray, y: np.ndarray) -> KNNHead:
        X, index = self._encode(X, y)
        return self._fill(iter([X]), index)

    def fit_blocks(self, source) -> KNNHead:
        """The training rows' float16 codes, added to the index a block at a time."""
        source = self._encode_blocks(source)
        return self._fill((X for X, _ in source.blocks()), source.codes)

    def _fill(self, blocks: Iterator[np.ndarray], codes: np.ndarray) -> KNNHead:
        if self.k < 1:
            raise HeadstartError(f"k must be positive, got {self.k}")
        self.index_ = _fp16_index(self.n_features_in_)
        for X in blocks:
            self.index_.add(l2_normalize(X))
        self.labels_ = np.asarray(codes, np.int32)
        return self

    @property
    def database_(self) -> np.ndarray:
        """The stored unit vectors, float16 (n, d): a view of the index's codes."""
        codes = np.asarray(_Codes(self.index_))
        return codes.view(np.float16).reshape(self.index_.ntotal, self.n_features_in_)

    def neighbors(self, X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(similarities, class indices) of the ``k`` nearest training vectors of each row."""
        X = self._check_features(X)
        k = min(k, self.index_.ntotal)
        similarities = np.empty((len(X), k), np.float32)
        rows = np.empty((len(X), k), np.int64)
        for start in range(0, len(X), _QUERY_ROWS):
            part = slice(start, start + _QUERY_ROWS)
            similarities[part], rows[part] = self.index_.search(l2_normalize(X[part]), k)
        return similarities, np.where(rows >= 0, self.labels_[np.maximum(rows, 0)], -1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        similarities, labels = self.neighbors(X, self.k)
        return knn_votes(
            similarities, labels, len(self.classes_), vote=self.vote, temperature=self.temperature
        )

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"database": self.database_, "labels": self.labels_.astype(np.int64)}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        database = arrays["database"]
        self.n_features_in_ = database.shape[1]
        self.index_ = _fp16_index(self.n_features_in_)
        if database.dtype == np.float16:  # the codes themselves: no conversion, no copy
            self.index_.add_sa_codes(np.ascontiguousarray(database).view(np.uint8))
        else:  # heads saved before float16 codes: their float32 rows, a block at a time
            for start in range(0, len(database), _QUERY_ROWS):
                part = database[start : start + _QUERY_ROWS]
                self.index_.add(np.ascontiguousarray(part, dtype=np.float32))
        self.labels_ = arrays["labels"].astype(np.int32)


@register_head("ncm")
class NearestClassMeanHead(Head):
    """Nearest class mean by cosine similarity; probabilities are ``softmax(cos / T)``."""

    options = (_TEMPERATURE,)
    streams = True

    def __init__(self, *, temperature: float = 0.07, device: str = AUTO) -> None:
        self.temperature = temperature
        self.device = device

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        return 8 * 2 * n_classes * d

    def fit(self, X: np.ndarray, y: np.ndarray) -> NearestClassMeanHead:
        X, index = self._encode(X, y)
        X = l2_normalize(X)
        sums = np.zeros((len(self.classes_), X.shape[1]), dtype=np.float64)
        np.add.at(sums, index, X)
        self.centroids_ = l2_normalize(sums)
        return self

    def fit_blocks(self, source) -> NearestClassMeanHead:
        """Class sums of the normalised rows, in one pass."""
        from headstart.classify.moments import class_sums

        source = self._encode_blocks(source)
        sums = class_sums(source, len(self.classes_), resolve_device(self.device))
        self.centroids_ = l2_normalize(sums)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        logits = l2_normalize(self._check_features(X)) @ self.centroids_.T / self.temperature
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        return {"centroids": self.centroids_}

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        self.centroids_ = arrays["centroids"].astype(np.float32)
        self.n_features_in_ = self.centroids_.shape[1]
