"""Text renderings of results for the command line: leaderboards, predictions, neighbors."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

import numpy as np

from headstart.classify.sweep import LeaderboardRow

__all__ = ["leaderboard_table", "neighbor_lines", "prediction_lines"]

FORMATS = ("table", "csv", "jsonl")


def _value(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.0e}" if value < 0.01 or value >= 1000 else f"{value:g}"
    return str(value)


def leaderboard_table(rows: list[LeaderboardRow], chosen: LeaderboardRow) -> str:
    """One line per head and hyper-parameter, best marked with '*'."""
    lines = [
        f"  {'head':<11}{'param':<15}{'accuracy':>9}{'bal.acc':>9}{'macro-F1':>9}"
        f"{'log-loss':>9}{'fit s':>8}  note"
    ]
    for row in rows:
        m = row.metrics
        param = f"{row.param}={_value(row.value)}" if row.param else "-"
        loss = f"{m.log_loss:9.3f}" if m.log_loss is not None else f"{'-':>9}"
        mark = "*" if row is chosen else " "
        lines.append(
            f"{mark} {row.head_name:<11}{param:<15}{m.accuracy:9.4f}{m.balanced_accuracy:9.4f}"
            f"{m.macro_f1:9.4f}{loss}{row.fit_seconds:8.2f}  {row.note}"
        )
    return "\n".join(lines)


def prediction_lines(
    paths: list[str], proba: np.ndarray, classes: np.ndarray, top_k: int, fmt: str
) -> Iterator[str]:
    """Per file: the top-k labels with probabilities, as a table, CSV or JSON lines."""
    order = np.argsort(-proba, axis=1)[:, :top_k]
    names = np.asarray(classes).astype(str)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(
            ["path", *[f"{kind}{i + 1}" for i in range(order.shape[1]) for kind in ("label", "p")]]
        )
        for path, top, row in zip(paths, order, proba, strict=True):
            writer.writerow([path, *[v for j in top for v in (names[j], f"{row[j]:.6f}")]])
        yield from buffer.getvalue().splitlines()
        return
    for path, top, row in zip(paths, order, proba, strict=True):
        if fmt == "jsonl":
            yield json.dumps(
                {
                    "path": path,
                    "label": names[top[0]],
                    "top": [{"label": names[j], "p": float(row[j])} for j in top],
                }
            )
        else:
            ranked = "  ".join(f"{names[j]} {row[j]:.3f}" for j in top)
            yield f"{path}\t{ranked}"


def neighbor_lines(neighbors: list) -> Iterator[str]:
    current = None
    for n in neighbors:
        if n.query != current:
            current = n.query
            yield f"{n.query}"
        caption = "" if n.caption is None else f"  {json.dumps(n.caption, ensure_ascii=False)}"
        yield f"  {n.rank:3d}  {n.similarity:.4f}  {n.label or '-':<16} {n.path}{caption}"
