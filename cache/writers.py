"""Writer identities: who writes which files of a cache that many machines write at once.

A cache on a network filesystem (NFS, Lustre, GPFS) may be written by a SLURM array or by
torchrun ranks on many hosts at once. Locks across hosts are not to be trusted there (SQLite's
WAL mode needs memory shared between its processes; ``fcntl`` locks depend on the lock daemon),
so no two processes ever write one file: each writer has its own directory

::

    <cache>/writers/<writer id>/writer.json     host, pid, started, finished (its own record)
    <cache>/writers/<writer id>/catalog.sqlite  its stat index, tar samples and failure ledger

and names its shards after itself. Readers merge every writer's catalog
(:mod:`headstart.cache.catalogs`).

A writer id is ``<host>-<slot>``: the host name (``HEADSTART_HOST`` overrides it, for a test
that plays several hosts on one machine, or for containers that share a host name) and the
lowest slot number no live process on this host holds. A slot is held through an abstract Unix
socket named after the cache and the id, which the kernel releases when the process ends, even
on ``kill -9``: reruns on a host reuse its slots (and their catalogs) instead of adding one
catalog per run, and two live processes never share one. Only processes of one host compete
for a host's slots, so the lock never crosses the network.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from headstart import __version__
from headstart.atomic import write_text_atomic

__all__ = [
    "HOST_ENV",
    "WRITERS_DIRECTORY",
    "WriterRecord",
    "WriterSlot",
    "claim_writer",
    "host_name",
    "list_writers",
    "writer_of_shard",
]

log = logging.getLogger(__name__)

HOST_ENV = "HEADSTART_HOST"
WRITERS_DIRECTORY = "writers"
_RECORD = "writer.json"
_MAX_SLOTS = 4096


@dataclass(frozen=True)
class WriterRecord:
    """What a writer says of itself in ``writer.json``. ``finished_unix`` is None while it
    runs, and stays None when it was killed (until its slot is taken again)."""

    id: str
    host: str
    pid: int
    started_unix: float
    finished_unix: float | None
    directory: Path

    @property
    def catalog_path(self) -> Path:
        return self.directory / "catalog.sqlite"


def host_name() -> str:
    """This machine's name as writer ids use it: ``HEADSTART_HOST`` or the host name, with
    anything but letters, digits, ``.``, ``_`` and ``-`` replaced (it names files)."""
    name = os.environ.get(HOST_ENV) or socket.gethostname() or "host"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]


class WriterSlot:
    """A writer id held by this process until :meth:`release` (or the process ends).

    Example:
        >>> slot = claim_writer(Path(".headstart"))  # doctest: +SKIP
        >>> slot.id, slot.catalog_path
        ('node07-0', PosixPath('.headstart/writers/node07-0/catalog.sqlite'))
        >>> slot.release()
    """

    def __init__(self, root: Path, writer_id: str, host: str, hold: socket.socket | IO) -> None:
        self.root = root
        self.id = writer_id
        self.host = host
        self.directory = root / WRITERS_DIRECTORY / writer_id
        self.started_unix = time.time()
        self._hold: socket.socket | IO | None = hold
        self._write_record(finished=None)

    @property
    def catalog_path(self) -> Path:
        return self.directory / "catalog.sqlite"

    @property
    def held(self) -> bool:
        return self._hold is not None

    def release(self) -> None:
        """Say the writer finished, and free its slot for the next process on this host."""
        if self._hold is None:
            return
        try:
            self._write_record(finished=time.time())
        except OSError as exc:  # a full or read-only disk must not hide the run's own result
            log.warning("cannot mark writer %s finished: %s", self.id, exc)
        finally:
            self._hold.close()
            self._hold = None

    def _write_record(self, finished: float | None) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        document = {
            "id": self.id,
            "host": self.host,
            "pid": os.getpid(),
            "started_unix": self.started_unix,
            "finished_unix": finished,
            "headstart": __version__,
        }
        write_text_atomic(self.directory / _RECORD, json.dumps(document, indent=1) + "\n")


def claim_writer(root: Path) -> WriterSlot:
    """Take the lowest free slot of this host for the cache at ``root``."""
    host = host_name()
    place = os.path.realpath(root)
    for slot in range(_MAX_SLOTS):
        writer_id = f"{host}-{slot}"
        hold = _hold_slot(place, writer_id)
        if hold is not None:
            return WriterSlot(root, writer_id, host, hold)
    raise OSError(f"all {_MAX_SLOTS} writer slots of host {host} are taken for {root}")


def _hold_slot(place: str, writer_id: str) -> socket.socket | IO | None:
    """Hold the slot (a socket or a locked file, kept open) or None when a live process does."""
    digest = hashlib.sha256(f"{place}\0{writer_id}".encode("utf-8", "surrogateescape"))
    name = f"headstart-writer-{digest.hexdigest()[:40]}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0" + name)  # Linux's abstract namespace: no file, freed by the kernel
        return sock
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
    # No abstract namespace (macOS): a lock file on this machine's own disk does the same.
    directory = Path(tempfile.gettempdir()) / "headstart-writers"
    directory.mkdir(exist_ok=True)
    handle = open(directory / f"{name}.lock", "a")  # noqa: SIM115 - held while the slot is
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    return handle


def list_writers(root: Path) -> list[WriterRecord]:
    """Every writer that ever wrote to the cache at ``root`` (by id); a record that cannot be
    read (a writer being created) is listed from its directory name alone."""
    directory = root / WRITERS_DIRECTORY
    if not directory.is_dir():
        return []
    found = []
    for entry in sorted(directory.iterdir()):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        document: dict = {}
        with contextlib.suppress(OSError, ValueError):
            document = json.loads((entry / _RECORD).read_text())
        if not isinstance(document, dict):
            document = {}
        found.append(
            WriterRecord(
                id=entry.name,
                host=str(document.get("host", "?")),
                pid=int(document.get("pid", -1)),
                started_unix=float(document.get("started_unix", 0.0)),
                finished_unix=document.get("finished_unix"),
                directory=entry,
            )
        )
    return found


def writer_of_shard(name: str) -> str | None:
    """The writer id in a shard's file name ``<time>-<writer>-<random>.h5``; None for shards
    named before writers had ids (``<time>-<pid>-<random>.h5``)."""
    stem = name.removesuffix(".h5")
    head, _, _ = stem.rpartition("-")
    _, _, writer = head.partition("-")
    return None if not writer or writer.isdigit() else writer
