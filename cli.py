"""The ``headstart`` command: one click group of thin verbs over the library.

Heavy imports (torch, h5py) happen inside the commands, so ``headstart --help`` is instant.
User errors become one line on stderr and a non-zero exit; exit status 3 means the run finished
but some files could not be used, 130 that it was interrupted (what was done is kept).
"""

from __future__ import annotations

import logging
import os
import signal
import sys

import click

from headstart import __version__
from headstart.commands import COMMANDS
from headstart.commands.options import EXIT_INTERRUPTED, EXIT_SOME_FAILED
from headstart.errors import HeadstartError
from headstart.pathnames import readable_output

__all__ = ["EXIT_BROKEN_PIPE", "EXIT_INTERRUPTED", "EXIT_SOME_FAILED", "main"]

EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE  # what a shell reports for a tool killed by SIGPIPE


class _Group(click.Group):
    """Turns the library's user errors into click's one-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadstartError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            # The reader went away (`| head`): stop quietly, and keep Python's exit-time flush
            # of stdout from failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            ctx.exit(EXIT_BROKEN_PIPE)
        except OSError as exc:
            where = f": {exc.filename}" if exc.filename else ""
            raise click.ClickException(f"{exc.strerror or exc}{where}") from None
        except KeyboardInterrupt:
            click.echo(
                "interrupted; everything finished so far is saved, rerun to continue", err=True
            )
            ctx.exit(EXIT_INTERRUPTED)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="headstart")
@click.option("-v", "--verbose", is_flag=True, help="Log details to stderr.")
def main(verbose: bool) -> None:
    """Transfer learning from the command line: embed images once, reuse the vectors."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    # File names that are not UTF-8 print as their exact bytes into pipes and files, and
    # escaped on a terminal, instead of failing the command.
    readable_output(sys.stdout)
    readable_output(sys.stderr)
    # torch.compile's C++ toolchain probe warns about CUDA on every CPU-only machine.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)


for _command in COMMANDS:
    main.add_command(_command)
