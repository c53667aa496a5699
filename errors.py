"""The one exception type that means "the user asked for something we cannot do".

The command line turns it into a one-line message and a non-zero exit; anything else that
escapes is a bug and keeps its traceback.
"""

__all__ = ["HeadstartError", "first_line"]


class HeadstartError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries' messages run to paragraphs), or
    its type name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
