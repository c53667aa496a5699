"""Device and precision choices, made once and passed down explicitly.

``auto`` precision is bf16 where the hardware computes it natively (CUDA with bf16 support; CPUs
with AVX512-BF16 or AMX), fp16 on older CUDA cards, and fp32 elsewhere: on a CPU without native
bf16, autocast would emulate it several times slower than fp32.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from headstart.errors import HeadstartError

if TYPE_CHECKING:
    import torch

__all__ = [
    "AUTO",
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "cpu_has_native_bf16",
    "resolve_device",
    "resolve_precision",
]

log = logging.getLogger(__name__)

AUTO = "auto"  # the device and precision every command and setting defaults to: choose here
PRECISIONS = ("fp32", "bf16", "fp16")


def resolve_device(name: str = AUTO) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda``/``cuda:N``/``cpu`` as given."""
    import torch

    if name == AUTO:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise HeadstartError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise HeadstartError(
            "--device cuda asked for, but torch sees no CUDA GPU; use --device cpu"
        )
    if device.type not in ("cpu", "cuda"):
        raise HeadstartError(f"unsupported device {name!r}; use auto, cpu, cuda or cuda:N")
    return device


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX tiles (torch reports both)."""
    import torch

    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, probe, lambda: False)()) for probe in probes)


def resolve_precision(name: str, device: torch.device) -> str:
    """Turn ``auto`` into the fastest accurate choice for ``device``; check explicit choices."""
    import torch

    if name == AUTO:
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if name not in PRECISIONS:
        raise HeadstartError(f"unknown precision {name!r}; use auto, {', '.join(PRECISIONS)}")
    if device.type == "cpu" and name != "fp32" and not cpu_has_native_bf16():
        log.warning(
            "%s on a CPU without native bf16/fp16 is emulated and slow; fp32 is faster", name
        )
    return name


def autocast_dtype(precision: str) -> torch.dtype | None:
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
