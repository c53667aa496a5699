"""Dynamic micro-batching: requests that arrive together share one forward pass.

Requests queue up on the event loop; a collector takes the first, then keeps taking until the
batch holds ``max_batch`` images or ``max_wait`` has passed, and runs the batch in a single
inference thread so the event loop keeps accepting requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["MicroBatcher"]


class MicroBatcher:
    """Gathers (n, 3, H, W) uint8 image groups into batches for ``run_batch``.

    Example:
        >>> batcher = MicroBatcher(engine.embed, max_batch=32, max_wait=0.005)  # doctest: +SKIP
        >>> vectors = await batcher.submit(pixels)
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
        self._queue: asyncio.Queue[tuple[torch.Tensor, asyncio.Future]] = asyncio.Queue()
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

    async def submit(self, pixels: torch.Tensor) -> np.ndarray:
        """Embed a group of images; returns when the batch holding them has run."""
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((pixels, future))
        return await future

    async def _collect(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            count = len(pending[0][0])
            deadline = loop.time() + self.max_wait
            while count < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self._queue.get(), remaining)
                except asyncio.TimeoutError:
                    break
                if count + len(item[0]) > self.max_batch:
                    await self._run(pending)  # the newcomer starts the next batch
                    pending, count = [item], len(item[0])
                    deadline = loop.time() + self.max_wait
                    continue
                pending.append(item)
                count += len(item[0])
            await self._run(pending)

    async def _run(self, pending: list[tuple[torch.Tensor, asyncio.Future]]) -> None:
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
