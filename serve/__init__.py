"""The classifier service: classify, embed and find neighbors over HTTP.

Example:
    >>> from headstart.serve import Client  # doctest: +SKIP
    >>> Client("http://127.0.0.1:8000").classify(["photo.jpg"])
"""

__all__ = ["Client", "ServiceError"]


def __getattr__(name: str):
    # The client needs httpx; importing it lazily keeps `headstart --help` instant.
    if name in __all__:
        from headstart.serve import client

        return getattr(client, name)
    raise AttributeError(f"module 'headstart.serve' has no attribute {name!r}")
