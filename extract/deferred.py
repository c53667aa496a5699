"""Batches whose JPEGs the workers left encoded, completed on the model's device.

The reader's workers decode what only the CPU handles well (PNGs, progressive or CMYK JPEGs,
rotated ones) and leave baseline JPEGs encoded; here the batch's JPEGs are decoded together by
:class:`~headstart.models.device_decode.DeviceJpegDecoder` and put among the rest in key order.
A JPEG the device rejects is decoded on the CPU instead; if that fails too it leaves the batch
for the ledger, with the reason the CPU path gives, so a damaged file is recorded alike
whichever decoder met it.
"""

from __future__ import annotations

import dataclasses
import logging

import torch

from headstart.cache.catalog import FailureRecord
from headstart.extract.reader import DecodedBatch, DeferredJpeg, model_pixels
from headstart.models.decode import DecodeError, EncodedJpeg
from headstart.models.device_decode import DeviceJpegDecoder

__all__ = ["decode_deferred"]

log = logging.getLogger(__name__)


def decode_deferred(batch: DecodedBatch, decoder: DeviceJpegDecoder) -> DecodedBatch:
    """``batch`` with the pixels of all its items on the decoder's device, in key order, and
    the deferred JPEGs that decode nowhere moved to its failures.

    Example:
        >>> batch = decode_deferred(batch, DeviceJpegDecoder(preprocess, device))  # doctest: +SKIP
    """
    if not batch.deferred:
        return batch
    device, crop = decoder.device, decoder.preprocess.crop_size
    count = len(batch.keys)
    pixels = torch.empty((count, 3, crop, crop), dtype=torch.uint8, device=device)
    positions = [item.position for item in batch.deferred]
    decoded_here = sorted(set(range(count)) - set(positions))
    if decoded_here:
        at = torch.tensor(decoded_here, device=device)
        pixels.index_copy_(0, at, batch.pixels.to(device, non_blocking=True))
    dropped: list[DeferredJpeg] = []
    failures: list[FailureRecord] = []
    placed: list[int] = []
    decoded: list[torch.Tensor] = []
    jpegs = batch.deferred_jpegs()
    for item, jpeg, result in zip(batch.deferred, jpegs, decoder(jpegs), strict=True):
        if isinstance(result, str):
            log.debug("%s: %s; decoding on the CPU", item.undecodable.path, result)
            try:
                result = _on_the_cpu(jpeg, decoder).to(device)
            except DecodeError as exc:
                dropped.append(item)
                failures.append(item.undecodable._replace(reason=str(exc)))
                continue
        placed.append(item.position)
        decoded.append(result)
    if decoded:  # one copy for the batch: a copy per image is a kernel launch per image
        pixels.index_copy_(0, torch.tensor(placed, device=device), torch.stack(decoded))
    return _without(batch, pixels, dropped, failures)


def _on_the_cpu(jpeg: EncodedJpeg, decoder: DeviceJpegDecoder) -> torch.Tensor:
    data = jpeg.data.numpy().tobytes()
    return model_pixels(data, decoder.preprocess)  # not deferred: decoded here or DecodeError


def _without(
    batch: DecodedBatch,
    pixels: torch.Tensor,
    dropped: list[DeferredJpeg],
    failures: list[FailureRecord],
) -> DecodedBatch:
    """The completed batch, less the items that decoded nowhere (now failures)."""
    if not dropped:
        return dataclasses.replace(batch, pixels=pixels, deferred=[], encoded=batch.encoded[:0])
    gone = {item.position for item in dropped}
    keep = [i for i in range(len(batch.keys)) if i not in gone]
    files, samples = list(batch.files), list(batch.samples)
    for item in dropped:
        if item.file is not None:
            files.remove(item.file)
        if item.sample is not None:
            samples.remove(item.sample)
    return dataclasses.replace(
        batch,
        pixels=pixels[torch.tensor(keep, dtype=torch.long, device=pixels.device)],
        files=files,
        samples=samples,
        keys=[batch.keys[i] for i in keep],
        failures=[*batch.failures, *failures],
        paired=batch.paired - sum(d.file is not None and d.sample is not None for d in dropped),
        deferred=[],
        encoded=batch.encoded[:0],
    )
