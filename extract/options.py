"""What an extraction is asked to do: plain records, importable without torch.

A rerun over unchanged files must not pay for importing torch (seconds) just to learn that
nothing needs embedding, so the request types live apart from the code that runs models.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from headstart.device import AUTO
from headstart.extract.parts import Partition
from headstart.extract.samples import SampleFields
from headstart.models.overrides import PreprocessOverrides

__all__ = ["DECODE_PLACES", "ExtractOptions", "PreprocessOverrides"]

# Where JPEGs are decoded: ``device`` on the model's device (nvJPEG on CUDA), ``cpu`` in the
# reading workers, ``auto`` on the device when it is a GPU that can. Not in the fingerprint:
# both keep within 1/255 of the same reference pixels.
DECODE_PLACES = ("auto", "cpu", "device")


@dataclass(frozen=True)
class ExtractOptions:
    """What to embed with and how; the fields that change vectors go into the fingerprint."""

    model: str
    weights: str = "DEFAULT"
    layer: str | None = None
    classifier: str | None = None
    preprocess: PreprocessOverrides = field(default_factory=PreprocessOverrides)
    device: str = AUTO
    precision: str = AUTO
    batch_size: int | None = None
    workers: int | None = None
    compile: bool | None = None
    decode: str = "auto"
    store_dtype: str = "float16"
    shard_rows: int = 4096
    flush_seconds: float = 30.0
    retry_failed: bool = False
    fallback_random: bool = False
    part: Partition | None = None
    # Where tar samples' labels and captions, and tables' columns, are read from: not the
    # vectors, so not the fingerprint; every command that reads sources reads them alike.
    fields: SampleFields = field(default_factory=SampleFields)
