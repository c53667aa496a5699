"""An audit's findings as JSON (every finding) and as a short text summary (the top of each
ranked list), for the command line."""

from __future__ import annotations

import dataclasses
import json
import os

from headstart.atomic import write_text_atomic
from headstart.audit.findings import AuditFindings, ExactGroup, Item
from headstart.pathnames import printable

__all__ = ["FORMAT_VERSION", "findings_to_dict", "summary_lines", "write_json"]

FORMAT_VERSION = 1


def findings_to_dict(findings: AuditFindings) -> dict:
    """Every finding as plain JSON types; paths exactly as listed (readable escapes for bytes
    that are not UTF-8)."""
    labels = findings.labels
    return {
        "format": FORMAT_VERSION,
        "sources": [
            {"name": name, "images": count, "labelled": findings.labelled_sources.get(name)}
            for name, count in findings.sources.items()
        ],
        "missing": findings.missing,
        "exact_duplicates": [_group(g) for g in findings.exact],
        "label_conflicts": [_group(g) for g in findings.conflicts],
        "near_duplicates": {
            "threshold": findings.near_threshold,
            "within_sources": findings.near_within,
            "needs": None if findings.near is not None else "two or more sources",
            "pairs": [
                {"similarity": round(p.similarity, 6), "items": [_item(p.first), _item(p.second)]}
                for p in findings.near or []
            ],
        },
        "label_errors": {
            "needs": labels.needs,
            "method": "confident learning (cleanlab) on out-of-fold logistic probabilities",
            "folds": labels.folds,
            "searched": labels.searched,
            "heldout_accuracy": labels.heldout_accuracy,
            "unlabelled": labels.unlabelled,
            "skipped_classes": labels.skipped_classes,
            "issues": [
                {
                    **_item(issue.item),
                    "confidence": round(issue.confidence, 6),
                    "suggested": issue.suggested,
                    "suggested_probability": round(issue.suggested_probability, 6),
                }
                for issue in labels.issues
            ],
        },
    }


def write_json(path: str | os.PathLike[str], findings: AuditFindings) -> None:
    """The full findings to ``path``, whole or not at all."""
    write_text_atomic(path, json.dumps(findings_to_dict(findings), indent=1) + "\n")


def summary_lines(findings: AuditFindings, limit: int = 10) -> list[str]:
    """What the command prints: one line per kind of finding, then its top ``limit``."""
    lines = []
    sources = ", ".join(f"{printable(name)} ({n})" for name, n in findings.sources.items())
    lines.append(f"audited {sum(findings.sources.values())} images: {sources}")
    if findings.missing:
        lines.append(f"  {findings.missing} images had no embedding and were left out")
    exact, conflicts = findings.exact, findings.conflicts
    across = sum(len(g.sources) > 1 for g in exact)
    lines.append(
        f"exact duplicates: {len(exact)} groups ({across} across sources, "
        f"{sum(len(g.items) - 1 for g in exact)} extra copies)"
    )
    for group in exact[:limit]:
        lines.append(f"  {len(group.items)} copies: {_some(group)}")
    lines.append(f"label conflicts (the same bytes under different labels): {len(conflicts)}")
    for group in conflicts[:limit]:
        lines.append(f"  {' vs '.join(group.labels)}: {_some(group)}")
    where = "across and within sources" if findings.near_within else "across sources"
    if findings.near is None:
        lines.append(f"near-duplicates {where}: need two or more sources")
    else:
        lines.append(
            f"near-duplicates {where} (cosine >= {findings.near_threshold:g}): "
            f"{len(findings.near)} pairs"
        )
        for pair in findings.near[:limit]:
            lines.append(f"  {pair.similarity:.3f}  {_show(pair.first)}  {_show(pair.second)}")
    labels = findings.labels
    if labels.needs:
        lines.append(f"likely label errors: not searched; this needs {labels.needs}")
    else:
        accuracy = f"{labels.heldout_accuracy:.1%}" if labels.heldout_accuracy is not None else "-"
        lines.append(
            f"likely label errors: {len(labels.issues)} of {labels.searched} labelled images "
            f"(out-of-fold accuracy {accuracy}, {labels.folds} folds)"
        )
        for issue in labels.issues[:limit]:
            lines.append(
                f"  {issue.confidence:.3f}  {_show(issue.item)} -> {issue.suggested} "
                f"({issue.suggested_probability:.2f})"
            )
    if labels.skipped_classes:
        skipped = ", ".join(f"{name} ({n})" for name, n in labels.skipped_classes.items())
        lines.append(f"  classes with fewer than {labels.folds} images, left out: {skipped}")
    if labels.unlabelled and not labels.needs:
        lines.append(f"  {labels.unlabelled} images without a label, left out")
    return lines


def _item(item: Item) -> dict:
    return {**dataclasses.asdict(item), "path": printable(item.path)}


def _group(group: ExactGroup) -> dict:
    return {
        "key": group.key,
        "sources": list(group.sources),
        "labels": list(group.labels),
        "items": [_item(i) for i in group.items],
    }


def _some(group: ExactGroup, shown: int = 4) -> str:
    """A group's first few items on one line (the JSON has them all)."""
    text = "  ".join(_show(i) for i in group.items[:shown])
    more = len(group.items) - shown
    return f"{text}  and {more} more" if more > 0 else text


def _show(item: Item) -> str:
    label = f" [{item.label}]" if item.label is not None else ""
    return f"{printable(_as_given(item))}{label}"


def _as_given(item: Item) -> str:
    """The path as the user would write it: under the source folder as they named it
    (``data/val/cat/1.jpg``), else relative to the working directory when under it."""
    root = os.path.abspath(item.source)
    if item.path.startswith(root + os.sep):
        return os.path.join(item.source, os.path.relpath(item.path, root))
    here = os.getcwd()
    return os.path.relpath(item.path, here) if item.path.startswith(here + os.sep) else item.path
