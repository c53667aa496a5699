"""An audit's findings as one self-contained HTML page, each with its images side by side.

The page is made from the audit's JSON (``headstart audit --json``; :func:`read_audit` checks
it), so it can be made again later without auditing again. Each section keeps the audit's
ranking and shows its first ``limit`` findings, with the count of all: exact-duplicate groups,
label conflicts, near-duplicate pairs with their cosine, and likely label errors with the label
given, the one suggested and the held-out head's probabilities. Thumbnails are made only for
the findings shown (at most :data:`GROUP_ITEMS` copies of a group), so the page's size is
bounded by ``limit``, not by the dataset.

Example:
    >>> document = read_audit("audit.json")  # doctest: +SKIP
    >>> html = render_audit(document, limit=50)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

from headstart import __version__
from headstart.errors import HeadstartError
from headstart.pathnames import printable
from headstart.report.page import image, page, text
from headstart.report.settings import DEFAULT_AUDIT_LIMIT
from headstart.report.thumbnails import thumbnails_of

__all__ = ["AUDIT_FORMAT", "DEFAULT_AUDIT_LIMIT", "GROUP_ITEMS", "read_audit", "render_audit"]

AUDIT_FORMAT = 1  # the "format" of the JSON the audit writes (audit/report.py)
GROUP_ITEMS = 6  # copies of one group shown side by side; the rest are counted


def read_audit(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The findings an audit wrote to ``path``; refused in one line when it is not one."""
    shown = printable(str(path))
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise HeadstartError(
            f"{shown} does not exist; write it with headstart audit --json"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HeadstartError(f"cannot read {shown} as an audit's JSON: {exc}") from None
    if not isinstance(document, dict) or document.get("format") != AUDIT_FORMAT:
        raise HeadstartError(
            f"{shown} is not the JSON of headstart audit (format {AUDIT_FORMAT}); write it with "
            "headstart audit --json"
        )
    try:
        _check(document)
    except KeyError as exc:
        raise HeadstartError(f"{shown}: an audit's JSON, but damaged: it lacks {exc}") from None
    except (TypeError, IndexError) as exc:
        raise HeadstartError(f"{shown}: an audit's JSON, but damaged: {exc}") from None
    return document


def _check(document: dict[str, Any]) -> None:
    """Read every field the page reads, so a damaged file fails here, in one line."""
    near, labels = document["near_duplicates"], document["label_errors"]
    items = [
        i for g in [*document["exact_duplicates"], *document["label_conflicts"]] for i in g["items"]
    ]
    items += [item for pair in near["pairs"] for item in pair["items"][:2]]
    items += labels["issues"]
    numbers = [source["images"] for source in document["sources"]]
    numbers += [pair["similarity"] for pair in near["pairs"]]
    numbers += [issue["confidence"] for issue in labels["issues"]]
    if not all(isinstance(item["path"], str) for item in items):
        raise TypeError("a path is not text")
    if not all(isinstance(n, int | float) and not isinstance(n, bool) for n in numbers):
        raise TypeError("a count or a score is not a number")


def render_audit(document: dict[str, Any], *, limit: int = DEFAULT_AUDIT_LIMIT) -> str:
    """The page of ``document`` (as :func:`read_audit` returns it), ``limit`` findings a
    section, thumbnails made from the files and tar members named."""
    thumbnails = thumbnails_of(_pictured(document, limit))
    names = [source["name"] for source in document["sources"]]
    title = f"headstart audit: {', '.join(printable(str(n)) for n in names)}"
    parts = [
        f"<h1>{text(title)}</h1>",
        f'<p class="meta">made {text(time.strftime("%Y-%m-%d %H:%M"))} by headstart '
        f"{text(__version__)}</p>",
        _summary(document),
        _groups_section(
            "exact-duplicates",
            "Exact duplicates",
            document["exact_duplicates"],
            limit,
            thumbnails,
            "Files with the same bytes (copies and renames); groups spanning several sources "
            "first: a copy of a training image in a test set inflates its score.",
        ),
        _groups_section(
            "label-conflicts",
            "Label conflicts",
            document["label_conflicts"],
            limit,
            thumbnails,
            "The same bytes under different labels: at least one of the labels is wrong.",
        ),
        _near_section(document["near_duplicates"], limit, thumbnails),
        _label_errors_section(document["label_errors"], limit, thumbnails),
    ]
    return page(title, "\n".join(parts))


def _pictured(document: dict[str, Any], limit: int) -> Iterator[str]:
    """The names of the images the page shows: the first copies of each group, both of each
    near pair, each label error."""
    for key in ("exact_duplicates", "label_conflicts"):
        for group in document[key][:limit]:
            yield from (item["path"] for item in group["items"][:GROUP_ITEMS])
    for pair in document["near_duplicates"]["pairs"][:limit]:
        yield from (item["path"] for item in pair["items"])
    for issue in document["label_errors"]["issues"][:limit]:
        yield issue["path"]


def _summary(document: dict[str, Any]) -> str:
    sources = document["sources"]
    exact, near = document["exact_duplicates"], document["near_duplicates"]
    labels = document["label_errors"]
    across = sum(len(group.get("sources", [])) > 1 for group in exact)
    cards = [
        ("images", "images", sum(int(s["images"]) for s in sources)),
        ("exact", "exact-duplicate groups", f"{len(exact)} ({across} across sources)"),
        ("conflicts", "label conflicts", len(document["label_conflicts"])),
        ("near", "near-duplicate pairs", "-" if near.get("needs") else len(near["pairs"])),
        ("errors", "likely label errors", "-" if labels.get("needs") else len(labels["issues"])),
    ]
    shown = "".join(
        f'<div class="card" id="count-{key}">{text(name)}<b>{text(value)}</b></div>'
        for key, name, value in cards
    )
    listed = ", ".join(
        f"{text(s['name'])} ({int(s['images'])} images"
        + ("" if s.get("labelled", True) else ", no labels")
        + ")"
        for s in sources
    )
    notes = [f"Sources: {listed}"]
    if document.get("missing"):
        notes.append(f"{int(document['missing'])} images had no embedding and were left out")
    return (
        f'<section id="summary"><div class="cards">{shown}</div>'
        f'<p class="note">{"; ".join(notes)}.</p></section>'
    )


def _shown_of(findings: Sequence[Any], limit: int, noun: str, nouns: str) -> str:
    if not findings:
        return f'<p class="note">No {nouns}.</p>'
    if len(findings) == 1:
        return f'<p class="note">One {noun}.</p>'
    if len(findings) <= limit:
        return f'<p class="note">All {len(findings)} {nouns}, ranked.</p>'
    return (
        f'<p class="note">The first {limit} of {len(findings)} {nouns}, ranked; the JSON has '
        "them all.</p>"
    )


def _figure(
    item: dict[str, Any], thumbnail: bytes | None, extra: str = "", *, label_line: bool = True
) -> str:
    path = str(item["path"])
    label = item.get("label")
    alt = f"{os.path.basename(path)}" + (f" [{label}]" if label is not None else "")
    picture = (
        image("jpeg", thumbnail, alt)
        if thumbnail is not None
        else '<div class="no-image">image unavailable</div>'
    )
    shown_label = ""
    if label_line:
        shown_label = (
            f'<div class="label">{text(label)}</div>'
            if label is not None
            else '<div class="note">no label</div>'
        )
    return (
        f'<figure data-path="{text(path)}">{picture}<figcaption>{shown_label}{extra}'
        f'<div class="path" title="{text(path)}">{text(_short(path))}</div>'
        f'<div class="note">{text(item.get("source", ""))}</div></figcaption></figure>'
    )


def _short(path: str) -> str:
    """The last two parts of a path or member name: the class folder and the file."""
    tail = path.rsplit("#", 1)[-1] if "#" in path else path
    parts = tail.replace(os.sep, "/").split("/")
    return "/".join(parts[-2:])


def _groups_section(
    section_id: str,
    heading: str,
    groups: Sequence[dict[str, Any]],
    limit: int,
    thumbnails: dict[str, bytes | None],
    intro: str,
) -> str:
    findings = []
    for rank, group in enumerate(groups[:limit], 1):
        items = group["items"]
        # Each copy pictured from its own file: one moved since is shown as unavailable.
        figures = [_figure(i, thumbnails.get(i["path"])) for i in items[:GROUP_ITEMS]]
        if len(items) > GROUP_ITEMS:
            figures.append(f'<div class="more">and {len(items) - GROUP_ITEMS} more copies</div>')
        labels = group.get("labels") or []
        what = f"{len(items)} copies in {len(group.get('sources') or [])} source(s)"
        if len(labels) > 1:
            what += f"; labels {' vs '.join(str(label) for label in labels)}"
        findings.append(
            f'<div class="finding"><h3>#{rank}: {text(what)}</h3>'
            f'<div class="side">{"".join(figures)}</div></div>'
        )
    return (
        f'<section id="{section_id}"><h2>{text(heading)}</h2><p class="note">{text(intro)}</p>'
        f"{_shown_of(groups, limit, 'group', 'groups')}{''.join(findings)}</section>"
    )


def _near_section(near: dict[str, Any], limit: int, thumbnails: dict[str, bytes | None]) -> str:
    where = "across and within sources" if near.get("within_sources") else "across sources"
    heading = f'<section id="near-duplicates"><h2>Near-duplicates {where}</h2>'
    if near.get("needs"):
        return f"{heading}{_not_searched(near['needs'])}</section>"
    pairs = near["pairs"]
    intro = (
        f'<p class="note">Different files whose embeddings have a cosine of at least '
        f"{float(near['threshold']):g}: resized, re-encoded and cropped copies, most similar "
        "first.</p>"
    )
    findings = []
    for rank, pair in enumerate(pairs[:limit], 1):
        figures = "".join(_figure(item, thumbnails.get(item["path"])) for item in pair["items"])
        findings.append(
            f'<div class="finding"><h3>#{rank}: cosine {float(pair["similarity"]):.4f}</h3>'
            f'<div class="side">{figures}</div></div>'
        )
    return (
        f"{heading}{intro}{_shown_of(pairs, limit, 'pair', 'pairs')}{''.join(findings)}</section>"
    )


def _not_searched(needs: object) -> str:
    return f'<p class="note">Not searched: this needs {text(needs)}.</p>'


def _label_errors_section(
    labels: dict[str, Any], limit: int, thumbnails: dict[str, bytes | None]
) -> str:
    heading = '<section id="label-errors"><h2>Likely label errors</h2>'
    if labels.get("needs"):
        return f"{heading}{_not_searched(labels['needs'])}</section>"
    issues = labels["issues"]
    accuracy = labels.get("heldout_accuracy")
    notes = [
        f"{text(labels.get('method', 'confident learning'))}, {int(labels.get('folds', 0))} "
        f"folds over {int(labels.get('searched', 0))} labelled images"
        + (f" (out-of-fold accuracy {float(accuracy):.1%})" if accuracy is not None else "")
        + "; ranked by the probability the held-out head gave the label, lowest first"
    ]
    skipped = labels.get("skipped_classes") or {}
    if skipped:
        named = ", ".join(f"{text(name)} ({int(n)})" for name, n in skipped.items())
        notes.append(f"classes with too few images for the folds, left out: {named}")
    if labels.get("unlabelled"):
        notes.append(f"{int(labels['unlabelled'])} images without a label, left out")
    findings = []
    for rank, issue in enumerate(issues[:limit], 1):
        extra = (
            f'<div class="given">given: {text(issue["label"])} '
            f"({float(issue['confidence']):.3f})</div>"
            f'<div class="suggested">suggested: {text(issue["suggested"])} '
            f"({float(issue.get('suggested_probability', 0.0)):.3f})</div>"
        )
        figure = _figure(issue, thumbnails.get(issue["path"]), extra, label_line=False)
        findings.append(
            f'<div class="finding label-error"><h3>#{rank}: score '
            f'{float(issue["confidence"]):.3f}</h3><div class="side">{figure}</div></div>'
        )
    counted = _shown_of(issues, limit, "likely label error", "likely label errors")
    return f'{heading}<p class="note">{"; ".join(notes)}.</p>{counted}{"".join(findings)}</section>'
