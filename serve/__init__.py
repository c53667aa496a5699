"""The classifier service: classify, embed and find neighbors over HTTP.

Example:
    >>> from headstart.serve import Client  # doctest: +SKIP
    >>> Client("http://127.0.0.1:8000").classify(["photo.jpg"])
"""

from headstart.lazy import lazy_exports

__all__ = ["Client", "ServiceError"]


# The client needs httpx; importing it lazily keeps `headstart --help` instant.
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "client"))
