"""Heads on cached embeddings: train, sweep, evaluate, predict, and nearest-neighbor search."""
