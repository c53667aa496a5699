"""Dynamic micro-batching: requests that arrive together share one forward pass.

An idle service must not pay for batching, and a busy one must gain from it. While the last
batch served a single request (one client, or light traffic) the service counts as idle: a
request runs at once, unless others are being decoded, which it waits for (never longer than
``max_wait``). Once a batch has served several, the service is busy and the collector gathers
until the batch holds ``max_batch`` images or ``max_wait`` has passed. Requests that arrive
while a batch runs queue up for the next one. The batch runs in a single inference thread, so the
event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["MicroBatcher"]

_Waiting = tuple[torch.Tensor, asyncio.Future]


class MicroBatcher:
    """Gathers (n, 3, H, W) uint8 image groups into batches for ``run_batch``.

    Example:
        >>> batcher = MicroBatcher(engine.embed, max_batch=32, max_wait=0.005)  # doctest: +SKIP
        >>> vectors = await batcher.submit(decode_images())
    """

    def __init__(
        self,
        run_batch: Callable[[torch.Tensor], np.ndarray],
        *,
        max_batch: int,
        max_wait: float,
        on_batch: Callable[[int, float], None] | None = None,
    ) -> None:
        self.run_batch = run_batch
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.on_batch = on_batch
        self._waiting: deque[_Waiting] = deque()
        self._preparing = 0  # requests whose images are being decoded: on their way
        self._changed = asyncio.Event()
        self._last_batch_requests = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="headstart-infer")
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._collect())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=True)

    async def submit(self, pixels: Awaitable[torch.Tensor] | torch.Tensor) -> np.ndarray:
        """Embed a group of images; returns when the batch holding them has run.

        ``pixels`` may still be on its way (an awaitable, such as decoding in a thread): the
        collector then knows a request is coming and waits for it rather than run a batch
        without it.
        """
        if not isinstance(pixels, torch.Tensor):
            self._preparing += 1
            try:
                pixels = await pixels
            finally:
                self._preparing -= 1
                self._changed.set()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((pixels, future))
        self._changed.set()
        return await future

    async def _collect(self) -> None:
        while True:
            await self._until(lambda: bool(self._waiting))
            if self._last_batch_requests > 1:
                # Busy: gather for as long as max_wait allows; that is where batching pays.
                await self._until(self._full, timeout=self.max_wait)
            elif self._preparing:
                # Idle, but others are being decoded: wait for them, not for strangers.
                await self._until(lambda: self._full() or not self._preparing, self.max_wait)
            batch = self._take()
            self._last_batch_requests = len(batch)
            await self._run(batch)

    def _full(self) -> bool:
        return sum(len(pixels) for pixels, _ in self._waiting) >= self.max_batch

    async def _until(self, condition: Callable[[], bool], timeout: float | None = None) -> None:
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        while not condition():
            self._changed.clear()
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                return
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def _take(self) -> list[_Waiting]:
        """The oldest requests that fit in ``max_batch`` images (at least one, however large)."""
        batch = [self._waiting.popleft()]
        count = len(batch[0][0])
        while self._waiting and count + len(self._waiting[0][0]) <= self.max_batch:
            pixels, future = self._waiting.popleft()
            batch.append((pixels, future))
            count += len(pixels)
        return batch

    async def _run(self, pending: list[_Waiting]) -> None:
        live = [(pixels, future) for pixels, future in pending if not future.cancelled()]
        if not live:
            return
        batch = torch.cat([pixels for pixels, _ in live])
        started = time.perf_counter()
        try:
            vectors = await asyncio.get_running_loop().run_in_executor(
                self._executor, self.run_batch, batch
            )
        except Exception as exc:  # the requests fail, the server does not
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        if self.on_batch is not None:
            self.on_batch(len(batch), time.perf_counter() - started)
        start = 0
        for pixels, future in live:
            if not future.done():
                future.set_result(vectors[start : start + len(pixels)])
            start += len(pixels)
