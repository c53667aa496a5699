"""Heads: scikit-learn compatible classifiers over embeddings, found by name in a registry.

Every head follows the estimator contract: ``__init__`` only stores its arguments, ``fit`` sets
attributes ending in ``_`` and returns ``self``, ``predict``/``predict_proba`` check the head is
fitted and the feature count matches. Every head also says how to save itself as plain arrays
(:meth:`Head.fitted_arrays`) and how to come back from them (:meth:`Head.from_arrays`), which is
what lets a head be stored and loaded without pickle.

The registry is the one place a head is declared: each class says which of its parameters users
may set (:class:`HeadOption`, from which the command line builds its options and help) and what
``--sweep`` tries (``grid``). Adding a head is writing its class and registering it.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data

from headstart.errors import HeadstartError

__all__ = [
    "Head",
    "HeadOption",
    "LogitHead",
    "get_head",
    "head_options",
    "list_heads",
    "register_head",
]


@dataclass(frozen=True)
class HeadOption:
    """A hyper-parameter a head lets users set by name (``--C``, ``-k``, ``--vote``...).

    Heads that share a parameter name share one option, so their declarations must agree.
    """

    param: str  # the ``__init__`` argument it sets
    kind: type  # float, int or str
    help: str
    minimum: float | None = None  # inclusive unless ``above_minimum``
    above_minimum: bool = False
    choices: tuple[str, ...] = ()
    flag: str | None = None  # the option's spelling [default: --param]

    @property
    def spelling(self) -> str:
        return self.flag or f"--{self.param.replace('_', '-')}"


class Head(ClassifierMixin, BaseEstimator):
    """Shared checks and the array round trip; subclasses implement fit and scoring."""

    #: Whether ``predict_proba`` gives calibrated probabilities (log-loss is meaningful).
    probabilistic = True
    #: The registry name (``--head NAME``), set by :func:`register_head`.
    head_name: ClassVar[str]
    #: The parameters users may set by name, on the command line among others.
    options: ClassVar[tuple[HeadOption, ...]] = ()
    #: (parameter, values) that ``--sweep`` scores on validation; None: nothing to tune.
    grid: ClassVar[tuple[str, tuple] | None] = None
    #: Whether ``fit`` learns from labelled embeddings; False for a head built another way
    #: (``zeroshot``, from class names), which ``--sweep`` scores as built and never refits.
    learns_from_images: ClassVar[bool] = True
    #: Whether :meth:`fit_blocks` streams: memory independent of the number of rows. Heads
    #: that do not read every vector into memory first, after the budget allowed it.
    streams: ClassVar[bool] = False

    @classmethod
    def fit_bytes(cls, n: int, d: int, n_classes: int, n_values: int = 1) -> int:
        """Bytes fitting holds besides one block in flight, for ``n`` rows of width ``d``
        (``n_values``: grid values a sweep fits together). By default: every row as float32,
        plus a standardised copy."""
        return 2 * 4 * n * d

    @classmethod
    def block_row_bytes(cls, d: int, n_classes: int, n_values: int = 1) -> int:
        """Bytes each row of a block costs while it is in flight (read, widened, scaled)."""
        return 14 * d

    def fit_blocks(self, source) -> Head:
        """Fit on a :class:`~headstart.classify.blocks.Blocks` source. Heads that stream
        override this; the others read every row into memory first (the caller checked the
        budget allows it) and fit on arrays."""
        source = self._encode_blocks(source)
        return self.fit(source.read_all(), source.classes[source.codes])

    @classmethod
    def accepts(cls, param: str) -> bool:
        """Whether ``param`` is one of this head's constructor arguments (``device``...)."""
        return param in inspect.signature(cls.__init__).parameters

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Most likely class of each row."""
        proba = self.predict_proba(X)  # checks the head is fitted first
        return self.classes_[np.argmax(proba, axis=1)]

    def _check_features(self, X: np.ndarray) -> np.ndarray:
        check_is_fitted(self)
        with _user_error():
            return validate_data(self, X, reset=False, dtype=np.float32)

    def _encode(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Validate training data, set ``classes_``/``n_features_in_``, return (X, class index)."""
        with _user_error():
            X, y = validate_data(self, X, y, dtype=np.float32, ensure_min_samples=2)
            check_classification_targets(y)
        self.classes_, index = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            found = ", ".join(map(str, self.classes_)) or "none"
            raise HeadstartError(f"need at least two classes to train, got only: {found}")
        return X, index.astype(np.int64)

    def _encode_blocks(self, source):
        """Check a block source's labels, set ``classes_``/``n_features_in_`` (the classes
        present, sorted, as ``fit`` on arrays would), and return it coded against them."""
        codes = source.codes
        if len(codes) < 2:
            raise HeadstartError(f"need at least 2 samples to train, got {len(codes)}")
        if (codes < 0).any():
            raise HeadstartError(f"{int((codes < 0).sum())} training rows have no label")
        present = np.flatnonzero(np.bincount(codes, minlength=len(source.classes)))
        self.classes_ = np.asarray(source.classes)[present]
        self.n_features_in_ = source.dim
        if len(self.classes_) < 2:
            found = ", ".join(map(str, self.classes_)) or "none"
            raise HeadstartError(f"need at least two classes to train, got only: {found}")
        return source if len(present) == len(source.classes) else source.relabel(self.classes_)

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


class LogitHead(Head):
    """A head whose ``class_scores`` are logits: its decision function and its probabilities
    (their softmax) follow from them. The linear heads and the zero-shot head are such."""

    def class_scores(self, X: np.ndarray) -> np.ndarray:
        """One score per class (the logits), shape (n, n_classes), also for two classes."""
        raise NotImplementedError

    def decision_function(self, X: np.ndarray) -> np.ndarray:
        """scikit-learn's convention: one column per class, one score for two classes."""
        scores = self.class_scores(X)
        return scores[:, 1] - scores[:, 0] if scores.shape[1] == 2 else scores

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        import torch  # torch's softmax is stable and uses every core; heads.py stays light

        scores = torch.from_numpy(np.ascontiguousarray(self.class_scores(X), np.float32))
        return scores.softmax(dim=1).numpy()


@contextlib.contextmanager
def _user_error() -> Iterator[None]:
    """scikit-learn's input checks, as the one-line errors the command line reports."""
    try:
        yield
    except HeadstartError:
        raise
    except ValueError as exc:
        # One line, with its advice ("Reshape your data ...") but without the array it dumps.
        lines = [line for line in str(exc).splitlines() if not line.startswith("array=")]
        raise HeadstartError(" ".join(lines)) from None


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
    """Every registered head's name, in registration order."""
    _load_builtin_heads()
    return list(_HEADS)


def head_options() -> list[tuple[HeadOption, tuple[str, ...]]]:
    """Every option the registered heads declare, once, with the names of the heads taking it."""
    merged: dict[str, tuple[HeadOption, tuple[str, ...]]] = {}
    for name in list_heads():
        for option in _HEADS[name].options:
            if not _HEADS[name].accepts(option.param):
                raise TypeError(f"head {name!r} declares {option.param!r}, not an argument of it")
            known, takers = merged.get(option.param, (option, ()))
            if known != option:
                raise TypeError(f"heads {takers} and {name!r} declare {option.param!r} differently")
            merged[option.param] = (known, (*takers, name))
    return list(merged.values())


def _load_builtin_heads() -> None:
    # Each module registers its heads when imported; after the first call this is a no-op.
    from headstart.classify import linear, neighbors, mlp, zeroshot  # noqa: F401, I001 - registration order
