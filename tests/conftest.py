"""Shared fixtures (helpers live in helpers.py, importable from every test module)."""

from __future__ import annotations

from pathlib import Path

import pytest

# The real-browser fixtures, for the service page and the report.
from browser import browser, page  # noqa: F401
from helpers import make_folder


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    make_folder(root, {"cat": 5, "dog": 4})
    return root


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def forward_count(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the images that reach the model (every forward pass goes through submit)."""
    from headstart.models.embedder import Embedder

    seen = [0]
    original = Embedder.submit

    def counting(self, pixels):
        seen[0] += len(pixels)
        return original(self, pixels)

    monkeypatch.setattr(Embedder, "submit", counting)
    return seen


@pytest.fixture(scope="session")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    """A tiny image-text model trained here on captioned shapes (tests/tiny_clip.py), once a
    session, its config registered with open_clip: the offline stand-in for real CLIP weights."""
    import open_clip
    from tiny_clip import train_tiny_clip

    trained = train_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)
    open_clip.add_model_config(trained.config_dir)
    return trained


@pytest.fixture
def text_encodes(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """The texts each ``TextEncoder.encode`` call is given while the test runs: what the text
    cache did not already hold."""
    from headstart.extract.text import TextEncoder

    calls: list[list[str]] = []
    original = TextEncoder.encode

    def counting(self: TextEncoder, texts):
        calls.append(list(texts))
        return original(self, texts)

    monkeypatch.setattr(TextEncoder, "encode", counting)
    return calls
