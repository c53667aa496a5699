"""A small Python client for a running ``headstart serve``.

Example:
    >>> client = Client("http://127.0.0.1:8000")  # doctest: +SKIP
    >>> client.classify(["cat.jpg"])[0]["label"]
    'cat'
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import httpx
import numpy as np

__all__ = ["Client", "ServiceError"]


class ServiceError(RuntimeError):
    """The service answered with an error; ``status`` is the HTTP status code."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Client:
    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 120.0) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def info(self) -> dict:
        return self._call("GET", "/v1/info")

    def classify(self, paths: Sequence[str | os.PathLike[str]], top_k: int = 5) -> list[dict]:
        """Per image: its label and the top-k labels with probabilities."""
        return self._call("POST", "/v1/classify", files=_files(paths), params={"top_k": top_k})[
            "results"
        ]

    def embed(self, paths: Sequence[str | os.PathLike[str]]) -> np.ndarray:
        """Embedding vectors, float32 (n, dim)."""
        answer = self._call("POST", "/v1/embed", files=_files(paths))
        return np.asarray(answer["embeddings"], dtype=np.float32)

    def neighbors(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        vector: Sequence[float] | None = None,
        k: int = 10,
    ) -> list[dict]:
        """The k nearest items of the server's index to an image or a vector."""
        if (path is None) == (vector is None):
            raise ValueError("give exactly one of path or vector")
        if vector is not None:
            body = {"vector": [float(v) for v in vector], "k": k}
            return self._call("POST", "/v1/neighbors", json=body)["neighbors"]
        return self._call("POST", "/v1/neighbors", files=_files([path]), params={"k": k})[
            "neighbors"
        ]

    def search(self, text: str, *, k: int = 10) -> list[dict]:
        """The k nearest items of the server's index to a text (an image-text model's index)."""
        return self._call("POST", "/v1/search", json={"text": text, "k": k})["neighbors"]

    def _call(self, method: str, route: str, **kwargs) -> dict:
        response = self._http.request(method, route, **kwargs)
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise ServiceError(response.status_code, message)
        return response.json()


def _files(paths) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (Path(p).name, Path(p).read_bytes())) for p in paths]
