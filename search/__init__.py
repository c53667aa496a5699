"""Nearest-neighbour search over embeddings: FAISS indexes (choosing, building, tuning, saving,
loading), neighbour queries by image, key or text, and the thumbnails an index keeps.

Heads may import from here (the kNN head uses :func:`~headstart.search.exact.exact_search`);
nothing here imports a head.
"""
