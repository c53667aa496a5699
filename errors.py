"""The one exception type that means "the user asked for something we cannot do".

The command line turns it into a one-line message and a non-zero exit; anything else that
escapes is a bug and keeps its traceback.
"""

__all__ = ["HeadstartError"]


class HeadstartError(ValueError):
    """A problem with the user's input or environment, with a message that says how to fix it."""
