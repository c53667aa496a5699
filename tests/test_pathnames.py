"""File names that are not UTF-8: exact bytes where they are kept, escapes where people read."""

from __future__ import annotations

import io
import os
import pty

from headstart.pathnames import from_stored, printable, readable_output, to_stored

LATIN1 = os.fsdecode(b"/photos/caf\xe9.jpg")


def test_stored_form_round_trips_and_leaves_utf8_text_alone() -> None:
    assert to_stored("/photos/日本.jpg") == "/photos/日本.jpg"
    assert to_stored(LATIN1) == b"/photos/caf\xe9.jpg"
    assert from_stored(to_stored(LATIN1)) == LATIN1 and to_stored(None) is None


def test_printable_escapes_only_the_undecodable_bytes() -> None:
    assert printable(LATIN1) == "/photos/caf\\xe9.jpg"
    assert printable("/photos/café.jpg") == "/photos/café.jpg"


def test_output_is_exact_into_a_pipe_and_escaped_on_a_terminal() -> None:
    read_end, write_end = os.pipe()
    pipe = io.TextIOWrapper(os.fdopen(write_end, "wb"), encoding="utf-8")
    readable_output(pipe)
    pipe.write(LATIN1 + "\n")
    pipe.close()
    assert os.read(read_end, 100) == b"/photos/caf\xe9.jpg\n"
    os.close(read_end)

    controller, terminal_fd = pty.openpty()
    terminal = io.TextIOWrapper(os.fdopen(terminal_fd, "wb"), encoding="utf-8")
    readable_output(terminal)
    terminal.write(LATIN1 + "\n")
    terminal.flush()
    assert os.read(controller, 100).startswith(b"/photos/caf\\xe9.jpg")
    terminal.close()
    os.close(controller)
