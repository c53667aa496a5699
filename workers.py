"""How DataLoader worker processes start: forked while that is safe, from a fork server when not.

Forking copies the whole process but only the thread that forks. Any other thread (fsspec's
event loop after a listing of object storage, a server the program runs beside the job, a
download pool) may hold a lock or be half-way through changing shared state at that instant,
and the child inherits that state with no thread left to finish it. Workers forked that way
have died with segfaults on `s3://` jobs. Python 3.14 stopped forking by default for this
reason. A fork server is a clean process started once; workers fork from it instead, at the
cost of sending each its dataset (which must pickle) and of one start of the server. The server
was started with the environment and working directory of its time, so each worker takes on
those of the process that made its loader, as a forked one would have them.
"""

from __future__ import annotations

import functools
import multiprocessing
import os
import threading
from collections.abc import Callable
from multiprocessing.context import BaseContext
from typing import Any

__all__ = ["loader_workers", "worker_context"]

# Imported once by the fork server, so that workers forked from it start with torch and the
# readers loaded instead of importing them each.
_SERVER_PRELOAD = ["headstart.extract.reader", "headstart.finetune.data"]


def loader_workers(workers: int, init: Callable[[int], None] | None = None) -> dict[str, Any]:
    """DataLoader's keyword arguments for ``workers`` processes (0: none), each running
    ``init(worker_id)`` first."""
    if not workers:
        return {"num_workers": 0, "worker_init_fn": init}
    context = worker_context()
    if context.get_start_method() != "fork":
        init = functools.partial(_take_on, dict(os.environ), os.getcwd(), init)
    return {"num_workers": workers, "multiprocessing_context": context, "worker_init_fn": init}


def worker_context() -> BaseContext:
    """``fork`` while this process runs no thread but its own (and tqdm's monitor, which only
    sleeps), ``forkserver`` otherwise."""
    if not _other_threads():
        return multiprocessing.get_context("fork")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_SERVER_PRELOAD)
    return context


def _other_threads() -> list[threading.Thread]:
    from tqdm import tqdm

    current, monitor = threading.current_thread(), getattr(tqdm, "monitor", None)
    return [t for t in threading.enumerate() if t is not current and t is not monitor]


def _take_on(
    environment: dict[str, str], cwd: str, init: Callable[[int], None] | None, worker_id: int
) -> None:
    os.environ.clear()
    os.environ.update(environment)
    os.chdir(cwd)
    if init is not None:
        init(worker_id)
