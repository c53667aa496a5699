"""``headstart serve``: the classifier service, run by uvicorn."""

from __future__ import annotations

import functools
import logging
import os
import socket

import click

from headstart.commands.options import DEVICE_HELP, default_of, take_settings
from headstart.errors import HeadstartError
from headstart.serve.settings import ServeSettings

__all__ = ["serve"]

log = logging.getLogger(__name__)
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_serve = functools.partial(default_of, ServeSettings)


@click.command()
@click.option("--head", "head_dir", required=True, help="A head directory from `headstart train`.")
@click.option("--index", "index_dir", help="An index directory from `headstart index build`.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option(
    "--max-batch",
    type=click.IntRange(min=1),
    default=_serve("max_batch"),
    show_default=True,
    help="Most images per backbone batch (1 turns micro-batching off).",
)
@click.option(
    "--max-wait-ms",
    type=click.FloatRange(min=0),
    default=_serve("max_wait_ms"),
    show_default=True,
    help="Longest a batch waits for more requests, once the service is busy (a lone request "
    "on an idle service runs at once).",
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=_serve("max_upload_mb"),
    show_default=True,
    help="Largest request body.",
)
@click.option(
    "--max-images",
    type=click.IntRange(min=1),
    default=_serve("max_images"),
    show_default=True,
    help="Most images in one request.",
)
@click.option(
    "--api-key-env",
    metavar="VAR",
    help="Require 'Authorization: Bearer KEY', KEY read from this variable.",
)
@click.option("--device", default=_serve("device"), show_default=True, help=DEVICE_HELP)
@click.option(
    "--expose-paths",
    is_flag=True,
    help="Include indexed items' file paths in neighbor answers (off: ids only).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=_serve("workers"),
    show_default=True,
    help="Server processes: each loads the model, all share the memory-mapped index.",
)
@click.option(
    "--verify",
    is_flag=True,
    help="First check every byte of the index's files (as `headstart index verify`).",
)
def serve(host: str, port: int, api_key_env: str | None, verify: bool, **params) -> None:
    """Serve a head (and an index) over HTTP: /v1/classify, /v1/embed, /v1/neighbors."""
    import uvicorn

    from headstart.serve.app import create_app
    from headstart.serve.engine import check_artifacts

    # The other options are named after the ServeSettings fields they set.
    settings = ServeSettings(api_key=_api_key(api_key_env), **take_settings(params, ServeSettings))
    if verify and settings.index_dir is not None:
        from headstart.search.store import verify_index

        verify_index(settings.index_dir)  # loading below then checks sizes, times and samples
    check_artifacts(settings.head_dir, settings.index_dir)  # a mismatched pair never starts
    _check_can_listen(host, port)
    if host not in _LOOPBACK and settings.api_key is None:
        log.warning("serving on %s without an API key: anyone who can reach it can use it", host)
    click.echo(f"serving {settings.head_dir} on http://{host}:{port} (API docs at /docs)", err=True)
    try:
        if settings.workers > 1:
            from headstart.serve.workers import settings_for_workers

            # Workers are fresh processes (uvicorn spawns them): they build their apps from
            # the settings this process hands them in its environment.
            os.environ.update(settings_for_workers(settings))
            uvicorn.run(
                "headstart.serve.workers:create_app_from_environment",
                factory=True,
                workers=settings.workers,
                host=host,
                port=port,
                log_level="warning",
            )
        else:
            uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")
    except SystemExit as exc:  # uvicorn exits 3 when it cannot start: not our "some files failed"
        if exc.code:
            raise HeadstartError(f"the server could not start on {host}:{port}") from None


def _api_key(variable: str | None) -> str | None:
    if not variable:
        return None
    key = os.environ.get(variable)
    if not key:
        raise HeadstartError(f"--api-key-env {variable}: that variable is not set or empty")
    return key


def _check_can_listen(host: str, port: int) -> None:
    """Fail before loading the model when the address is taken or not this machine's."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise HeadstartError(f"cannot listen on {host}:{port}: {reason}") from None
