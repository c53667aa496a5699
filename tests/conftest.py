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
