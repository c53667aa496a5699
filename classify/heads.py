"""Heads: scikit-learn compatible classifiers over embeddings, found by name in a registry.

Every head follows the estimator contract: ``__init__`` only stores its arguments, ``fit`` sets
attributes ending in ``_`` and returns ``self``, ``predict``/``predict_proba`` check the head is
fitted and the feature count matches. Every head also says how to save itself as plain arrays
(:meth:`Head.fitted_arrays`) and how to come back from them (:meth:`Head.from_arrays`), which is
what lets a head be stored and loaded without pickle.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.validation import check_is_fitted

from headstart.errors import HeadstartError

__all__ = ["Head", "get_head", "list_heads", "register_head"]


class Head(ClassifierMixin, BaseEstimator):
    """Shared checks and the array round trip; subclasses implement fit and scoring."""

    #: Whether ``predict_proba`` gives calibrated probabilities (log-loss is meaningful).
    probabilistic = True

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most likely class of each row."""
        proba = self.predict_proba(X)  # checks the head is fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    def _check_features(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise HeadstartError(
                f"{type(self).__name__} was fitted on {self.n_features_in_} features, "
                f"got an array of shape {X.shape}"
            )
        return X

    def _encode(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate training data, set ``classes_``/``n_features_in_``, return (X, class index)."""
        X = np.asarray(X, dtype=np.float32)
        y = np.asarray(y)
        if X.ndim != 2 or len(X) != len(y):
            raise HeadstartError(
                f"expected X of shape (n, d) and n labels, got {X.shape}, {y.shape}"
            )
        if not np.isfinite(X).all():
            raise HeadstartError("embeddings contain NaN or infinite values")
        self.classes_, index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            found = ", ".join(map(str, self.classes_)) or "none"
            raise HeadstartError(f"need at least two classes to train, got only: {found}")
        self.n_features_in_ = X.shape[1]
        return X, index.astype(np.int64)

    def fitted_arrays(self) -> dict[str, np.ndarray]:
        """Everything ``fit`` learned, as named NumPy arrays (classes excluded)."""
        raise NotImplementedError

    @classmethod
    def from_arrays(cls, params: dict, classes: np.ndarray, arrays: dict[str, np.ndarray]) -> Head:
        """Rebuild a fitted head from its hyper-parameters, classes and arrays."""
        head = cls(**params)
        head.classes_ = classes
        head._restore(arrays)
        return head

    def _restore(self, arrays: dict[str, np.ndarray]) -> None:
        raise NotImplementedError


_HEADS: dict[str, type[Head]] = {}


def register_head(name: str) -> Callable[[type[Head]], type[Head]]:
    """Class decorator: make a head reachable as ``--head NAME``."""

    def register(cls: type[Head]) -> type[Head]:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered")
        _HEADS[name] = cls
        cls.head_name = name
        return cls

    return register


def get_head(name: str) -> type[Head]:
    """The head class registered as ``name``."""
    _load_builtin_heads()
    if name not in _HEADS:
        raise HeadstartError(f"unknown head {name!r}; choose from {', '.join(list_heads())}")
    return _HEADS[name]


def list_heads() -> list[str]:
    _load_builtin_heads()
    return list(_HEADS)


def _load_builtin_heads() -> None:
    # Each module registers its heads when imported; after the first call this is a no-op.
    from headstart.classify import linear, neighbors, mlp  # noqa: F401, I001 - registration order
