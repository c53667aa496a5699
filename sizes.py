"""Memory sizes as people write them (``--max-memory 2G``) and as messages show them."""

from __future__ import annotations

import re

from headstart.errors import HeadstartError

__all__ = ["format_size", "parse_size"]

_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def parse_size(text: str) -> int:
    """``"512M"``, ``"2G"``, ``"1.5GB"``, ``"4096"`` -> bytes (powers of 1024).

    Example:
        >>> parse_size("1.5G")
        1610612736
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)(I?B)?\s*", text.upper())
    if match is None:
        raise HeadstartError(f"cannot read {text!r} as a size; write it like 512M, 8G or 1.5T")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(count: float) -> str:
    """Bytes as a short size: ``format_size(3 * 2**30)`` is ``'3.0 GB'``."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(count) < 1024 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GB"  # unreachable
