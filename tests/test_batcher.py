"""The micro-batcher on its own: how requests are grouped into forward passes."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import torch

from headstart.serve.batcher import MicroBatcher


class SlowModel:
    """Stands in for the backbone: each image's vector is its first pixel, a pass takes time."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.sizes: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, batch: torch.Tensor) -> np.ndarray:
        self.sizes.append(len(batch))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.seconds)
        return batch[:, :1, 0, 0].float().numpy()


def images(first: int, count: int = 1) -> torch.Tensor:
    pixels = torch.zeros((count, 3, 2, 2), dtype=torch.uint8)
    pixels[:, 0, 0, 0] = torch.arange(first, first + count)
    return pixels


async def trickle(batcher: MicroBatcher, count: int, gap: float) -> list[np.ndarray]:
    """``count`` single-image requests, one every ``gap`` seconds; their answers in order."""

    async def one(i: int) -> np.ndarray:
        await asyncio.sleep(i * gap)
        return await batcher.submit(images(i))

    return await asyncio.gather(*(one(i) for i in range(count)))


def run(model: SlowModel, body, *, max_batch: int = 32, max_wait: float = 0.005):
    async def main():
        batcher = MicroBatcher(model, max_batch=max_batch, max_wait=max_wait)
        batcher.start()
        try:
            return await body(batcher)
        finally:
            await batcher.stop()

    return asyncio.run(main())


def test_requests_arriving_during_a_pass_share_the_next_one() -> None:
    # Requests 20 ms apart, each far beyond max_wait: while a 500 ms pass runs, they gather.
    model = SlowModel(0.5)
    answers = run(model, lambda b: trickle(b, 11, 0.02))
    assert [float(a[0, 0]) for a in answers] == list(range(11))  # each gets its own vector
    assert model.sizes == [1, 10]
    assert model.threads and not any(name == "MainThread" for name in model.threads)


def test_an_idle_server_answers_a_lone_request_within_max_wait() -> None:
    model = SlowModel(0.0)

    async def lone(batcher: MicroBatcher) -> float:
        began = time.perf_counter()
        await batcher.submit(images(7))
        return time.perf_counter() - began

    assert run(model, lone, max_wait=0.005) < 0.2
    # Requests well apart on an idle server are not held back for each other.
    run(model, lambda b: trickle(b, 3, 0.1))
    assert model.sizes == [1, 1, 1, 1]


def test_a_full_batch_leaves_and_the_overflow_starts_the_next() -> None:
    model = SlowModel(0.3)

    async def groups(batcher: MicroBatcher) -> list[np.ndarray]:
        first = asyncio.ensure_future(batcher.submit(images(0)))
        await asyncio.sleep(0.05)  # the first pass is running now
        rest = [batcher.submit(images(10 * i, 3)) for i in range(1, 5)]
        return [await first, *await asyncio.gather(*rest)]

    answers = run(model, groups, max_batch=8)
    assert model.sizes == [1, 6, 6]  # 3+3 fit in 8; the third group of 3 starts a new batch
    assert [a[:, 0].tolist() for a in answers[1:]] == [
        [10.0, 11.0, 12.0],
        [20.0, 21.0, 22.0],
        [30.0, 31.0, 32.0],
        [40.0, 41.0, 42.0],
    ]


def test_a_failing_pass_fails_its_requests_and_the_batcher_goes_on() -> None:
    calls: list[int] = []

    def flaky(batch: torch.Tensor) -> np.ndarray:
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("boom")
        return batch[:, :1, 0, 0].float().numpy()

    async def body(batcher: MicroBatcher):
        try:
            await batcher.submit(images(1))
        except RuntimeError as exc:
            failed = str(exc)
        return failed, await batcher.submit(images(2))

    failed, answer = run(flaky, body)
    assert failed == "boom" and float(answer[0, 0]) == 2.0


async def decoded_after(seconds: float, pixels: torch.Tensor) -> torch.Tensor:
    """Stands in for decoding in a thread: the request is on its way for ``seconds``."""
    await asyncio.sleep(seconds)
    return pixels


def test_an_idle_service_does_not_hold_a_lone_request_for_max_wait() -> None:
    # max_wait is long here, so any gathering would show in the latency.
    model = SlowModel(0.0)

    async def lone_requests(batcher: MicroBatcher) -> list[float]:
        latencies = []
        for i in range(3):
            began = time.perf_counter()
            await batcher.submit(decoded_after(0.001, images(i)))
            latencies.append(time.perf_counter() - began)
        return latencies

    assert max(run(model, lone_requests, max_wait=1.0)) < 0.3
    assert model.sizes == [1, 1, 1]


def test_requests_still_decoding_are_waited_for_within_max_wait() -> None:
    # Three requests arrive together; their images take 10-50 ms to decode. The first decoded
    # must not leave alone while the others are known to be on their way.
    model = SlowModel(0.0)

    async def together(batcher: MicroBatcher) -> list[np.ndarray]:
        return await asyncio.gather(
            *(batcher.submit(decoded_after(0.01 + 0.02 * i, images(i))) for i in range(3))
        )

    answers = run(model, together, max_wait=1.0)
    assert model.sizes == [3]
    assert [float(a[0, 0]) for a in answers] == [0.0, 1.0, 2.0]


def test_a_request_that_fails_to_decode_does_not_hold_up_the_others() -> None:
    model = SlowModel(0.0)

    async def broken() -> torch.Tensor:
        await asyncio.sleep(0.01)
        raise ValueError("damaged image")

    async def body(batcher: MicroBatcher) -> tuple[str, float]:
        began = time.perf_counter()
        good = asyncio.ensure_future(batcher.submit(images(5)))
        try:
            await batcher.submit(broken())
        except ValueError as exc:
            failed = str(exc)
        await good
        return failed, time.perf_counter() - began

    failed, seconds = run(model, body, max_wait=1.0)
    assert failed == "damaged image" and seconds < 0.5


def test_after_a_busy_spell_requests_are_gathered_for_up_to_max_wait() -> None:
    # The first pass served several requests: the service is busy, so the next lone arrival
    # waits (up to max_wait) for company instead of taking a pass to itself.
    model = SlowModel(0.05)

    async def busy_then_trickle(batcher: MicroBatcher) -> None:
        await asyncio.gather(*(batcher.submit(images(i)) for i in range(4)))
        await trickle(batcher, 3, 0.01)

    run(model, busy_then_trickle, max_wait=0.2)
    assert model.sizes[0] == 4 and model.sizes[1:] == [3]
