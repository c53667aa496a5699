"""Downloading images by URL: bounded in time, in bytes, in redirects and per host.

What a batch job over a table of a million URLs meets: servers that never answer, answer
slowly, redirect in a loop, send gigabytes, refuse (429) or fail for a moment (5xx). Each of
these ends one download with a :class:`DownloadError` whose text is the reason recorded in the
failure ledger; nothing here raises past a download.

* connect and read timeouts (a read timeout is the longest wait for the next bytes), and a
  deadline for the whole download, so a server that trickles bytes cannot hold a thread;
* retries with exponential backoff (and ``Retry-After``, within reason) after a connection
  error, a 429 or a 5xx; a 404 or other client error is final at once;
* at most ``per_host`` requests in flight to one host at a time, whatever the thread count;
* at most ``max_bytes`` per image: a larger ``Content-Length`` is refused before the body, and
  a body that runs past the cap is cut off there (never read whole);
* at most ``max_redirects`` redirects, a loop detected at its first repeat.

:meth:`Downloader.map` runs fetches in a pool of threads with a bounded number in flight and
yields results as they complete, so a table streams through without being held.
URLs with another scheme (``s3://``) are read through fsspec, when it has that filesystem,
within the same slots per host (bucket), retries and byte cap; their timeouts are botocore's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urljoin, urlsplit

import httpx

from headstart.extract.remote import answer_status, describe_error, is_answer

__all__ = ["DownloadError", "DownloadLimits", "Downloader"]

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_CHUNK = 64 * 1024
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_MAX_RETRY_AFTER = 30.0
_USER_AGENT = "headstart (image embedding; +https://pypi.org/project/headstart/)"


@dataclass(frozen=True)
class DownloadLimits:
    """The bounds on every download. ``deadline``: seconds for one image, retries included."""

    connect_timeout: float = 10.0
    read_timeout: float = 10.0
    deadline: float = 60.0
    retries: int = 2
    backoff: float = 0.5
    per_host: int = 16
    max_bytes: int = 20 * 1024 * 1024
    max_redirects: int = 5
    threads: int = 32

    def __post_init__(self) -> None:
        for name in ("connect_timeout", "read_timeout", "deadline", "max_bytes", "threads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"download limit {name} must be positive")
        if self.per_host < 1 or self.retries < 0 or self.max_redirects < 0:
            raise ValueError("download limits: per_host >= 1, retries >= 0, max_redirects >= 0")


class DownloadError(Exception):
    """A download that did not give an image's bytes; ``str(error)`` is the reason."""


class _Retry(Exception):
    """A failure worth another try: ``reason`` if none is left, ``wait`` (seconds) if given."""

    def __init__(self, reason: str, wait: float | None = None) -> None:
        super().__init__(reason)
        self.wait = wait


class _HostSlots:
    def __init__(self, size: int) -> None:
        self.semaphore = threading.BoundedSemaphore(size)
        self.users = 0  # threads holding or waiting for a slot


class Downloader:
    """Fetches URLs within :class:`DownloadLimits`; safe to use from many threads.

    Example:
        >>> with Downloader(DownloadLimits(read_timeout=5)) as downloader:  # doctest: +SKIP
        ...     data = downloader.fetch("https://example.org/cat.jpg")
    """

    def __init__(self, limits: DownloadLimits | None = None) -> None:
        self.limits = limits or DownloadLimits()
        lim = self.limits
        timeout = httpx.Timeout(lim.read_timeout, connect=lim.connect_timeout, pool=None)
        self._client = httpx.Client(
            timeout=timeout,
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=lim.threads),
            follow_redirects=False,  # followed here, to count them and catch loops
            headers={"User-Agent": _USER_AGENT},
        )
        self._hosts: dict[str, _HostSlots] = {}
        self._hosts_lock = threading.Lock()

    def __enter__(self) -> Downloader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def fetch(self, url: str) -> bytes:
        """The body at ``url``, or :class:`DownloadError` with the reason. A URL of another
        scheme than the web's (``s3://``, ``gs://``) is read through fsspec, within the same
        slots per host (a bucket is a host), retries and byte cap; its timeouts are the
        filesystem's own (botocore's, gcsfs's)."""
        try:
            scheme = urlsplit(url).scheme.lower()
        except ValueError as exc:
            raise DownloadError(f"invalid URL: {exc}") from None
        web = scheme in ("http", "https")
        lim = self.limits
        deadline = time.monotonic() + lim.deadline
        for attempt in range(lim.retries + 1):
            try:
                with self._host_slot(url):
                    return self._follow(url, deadline) if web else self._read_fsspec(url)
            except _Retry as retry:
                if attempt == lim.retries:
                    tries = f" after {attempt + 1} tries" if attempt else ""
                    raise DownloadError(f"{retry}{tries}") from None
                pause = lim.backoff * 2**attempt
                if retry.wait is not None:
                    pause = max(pause, min(retry.wait, _MAX_RETRY_AFTER))
                if time.monotonic() + pause > deadline:
                    raise DownloadError(f"{retry}; no time left to retry") from None
                log.debug("retrying %s in %.1f s: %s", url, pause, retry)
                time.sleep(pause)
        raise AssertionError("unreachable")  # the loop returns or raises

    def map(
        self, items: Iterable[T], fetch: Callable[[T], R], *, in_flight: int | None = None
    ) -> Iterator[tuple[T, R | Exception]]:
        """``(item, fetch(item))`` for each item, in the order fetches complete, with at most
        ``in_flight`` (default: twice the threads) started and not yet yielded; an exception
        a fetch raises is yielded in place of its result."""
        window = in_flight or 2 * self.limits.threads
        pool = ThreadPoolExecutor(self.limits.threads, thread_name_prefix="headstart-download")
        running: dict[Future, T] = {}
        try:
            for item in items:
                running[pool.submit(fetch, item)] = item
                if len(running) >= window:
                    yield from self._completed(running)
            while running:
                yield from self._completed(running)
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _completed(running: dict[Future, T]) -> Iterator[tuple[T, R | Exception]]:
        done, _ = wait(running, return_when=FIRST_COMPLETED)
        for future in done:
            item = running.pop(future)
            error = future.exception()
            yield item, (error if error is not None else future.result())

    # -- one request -----------------------------------------------------------------------

    @contextmanager
    def _host_slot(self, url: str) -> Iterator[None]:
        """One of the host's ``per_host`` slots. A host's entry lives while someone holds or
        waits for a slot: a table of a million hosts keeps only the busy ones."""
        host = urlsplit(url).netloc.lower()
        with self._hosts_lock:
            entry = self._hosts.get(host)
            if entry is None:
                entry = self._hosts[host] = _HostSlots(self.limits.per_host)
            entry.users += 1
        try:
            with entry.semaphore:
                yield
        finally:
            with self._hosts_lock:
                entry.users -= 1
                if not entry.users:
                    del self._hosts[host]

    def _follow(self, url: str, deadline: float) -> bytes:
        """GET ``url``, following redirects within the limit."""
        visited = [url]
        while True:
            location = self._get(url, deadline)
            if isinstance(location, bytes):
                return location
            try:
                url = urljoin(url, location)
            except ValueError as exc:
                raise DownloadError(f"redirected to an invalid URL: {exc}") from None
            if url in visited:
                raise DownloadError(f"redirect loop after {len(visited)} requests ({url})")
            if len(visited) > self.limits.max_redirects:
                raise DownloadError(f"more than {self.limits.max_redirects} redirects")
            if urlsplit(url).scheme.lower() not in ("http", "https"):
                raise DownloadError(f"redirected to an unsupported URL: {url[:200]}")
            visited.append(url)

    def _get(self, url: str, deadline: float) -> bytes | str:
        """The body, or the location a redirect points to."""
        lim = self.limits
        try:
            with self._client.stream("GET", url) as response:
                status = response.status_code
                if response.is_redirect:
                    location = response.headers.get("Location")
                    if not location:
                        raise DownloadError(f"HTTP {status} redirect without a Location")
                    return location
                if status in _RETRY_STATUS:
                    raise _Retry(f"HTTP {status}", _retry_after(response))
                if status >= 400:
                    raise DownloadError(f"HTTP {status}")
                announced = response.headers.get("Content-Length", "")
                if announced.isdigit() and int(announced) > lim.max_bytes:
                    raise DownloadError(
                        f"too large: {announced} bytes announced (cap {lim.max_bytes})"
                    )
                return self._body(response, deadline)
        except httpx.TimeoutException as exc:
            if isinstance(exc, (httpx.ConnectTimeout, httpx.PoolTimeout)):
                raise _Retry(f"connect timeout after {lim.connect_timeout:g} s") from None
            raise DownloadError(f"timed out: no data for {lim.read_timeout:g} s") from None
        except (httpx.TransportError, httpx.StreamError) as exc:
            # Refused, reset, closed early: the connection, not the image, failed.
            raise _Retry(f"connection error: {type(exc).__name__}: {exc}"[:300]) from None
        except httpx.HTTPError as exc:  # a body that cannot be decoded (Content-Encoding)
            raise DownloadError(f"{type(exc).__name__}: {exc}"[:300]) from None
        except (httpx.InvalidURL, ValueError) as exc:
            raise DownloadError(f"invalid URL: {exc}"[:300]) from None

    def _body(self, response: httpx.Response, deadline: float) -> bytes:
        cap = self.limits.max_bytes
        body = bytearray()
        for chunk in response.iter_bytes(_CHUNK):
            body += chunk
            if len(body) > cap:
                raise DownloadError(f"too large: more than {cap} bytes (stopped reading)")
            if time.monotonic() > deadline:
                raise DownloadError(
                    f"too slow: {len(body)} bytes in {self.limits.deadline:g} s (deadline)"
                )
        return bytes(body)

    def _read_fsspec(self, url: str) -> bytes:
        """One read of an object through fsspec, its failure sorted as final or worth
        another try."""
        cap = self.limits.max_bytes
        try:
            import fsspec

            with fsspec.open(url, "rb") as f:
                data = f.read(cap + 1)
        except ImportError as exc:
            raise DownloadError(f"cannot read this URL's scheme: {exc}") from None
        except ValueError as exc:  # a URL the filesystem cannot address
            raise DownloadError(f"cannot read: {describe_error(exc)}"[:300]) from None
        except Exception as exc:  # whatever the transport raises (botocore's are no OSError)
            reason = f"cannot read: {describe_error(exc)}"[:300]
            if is_answer(exc) and answer_status(exc) not in _RETRY_STATUS:
                raise DownloadError(reason) from None  # 404, access denied: final at once
            raise _Retry(reason) from None  # no answer, or a 5xx: worth another try
        if len(data) > cap:
            raise DownloadError(f"too large: more than {cap} bytes (stopped reading)")
        return data


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After", "").strip()
    return float(value) if value.isdigit() else None
