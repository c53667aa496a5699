"""headstart: transfer learning from the command line.

A frozen pretrained backbone embeds each image once into a content-addressed HDF5 cache
(:mod:`headstart.extract`, :mod:`headstart.cache`); heads are then trained on the cached vectors.

Example:
    >>> from headstart.extract import ExtractOptions, extract  # doctest: +SKIP
    >>> summary = extract(["photos/"], ExtractOptions(model="resnet50"), cache_dir=".headstart")
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
