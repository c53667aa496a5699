"""Defaults of the search commands, declared once; they import nothing heavy, so the command
line reads them without loading FAISS."""

from __future__ import annotations

__all__ = ["INDEX_KINDS", "NEIGHBORS", "TARGET_RECALL"]

INDEX_KINDS = ("auto", "flat", "ivf", "hnsw", "ivfsq", "ivfpq")  # auto: chosen by size and memory
TARGET_RECALL = 0.95  # recall@10 against exact search that an approximate index is tuned to
NEIGHBORS = 10  # how many neighbors a query returns unless told
