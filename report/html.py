"""The report as one HTML page: its style inline, its pictures as ``data:`` URIs.

Class names and paths are user data: every one goes through :func:`~headstart.report.page.text`.
The style sheet, the document around the body and its Content-Security-Policy (the browser
refuses anything that is not inlined) are :mod:`~headstart.report.page`'s, shared with the
audit page.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from headstart import __version__
from headstart.classify.overlap import UNRECORDED, Overlap
from headstart.pathnames import printable
from headstart.report.figures import MAX_TABLE_CLASSES, Figures
from headstart.report.gather import (
    Evaluated,
    HeadSummary,
    LeaderboardEntry,
    Mistake,
    ReportData,
    Target,
)
from headstart.report.page import image as _image
from headstart.report.page import page
from headstart.report.page import table as _table
from headstart.report.page import text as _text

__all__ = ["render"]

_CONFUSED_PAIRS = 20  # listed beside the picture when the matrix is too large for a table
_SHADE = (31, 119, 180)  # matplotlib's tab:blue, as the plots use


def render(data: ReportData, figures: Figures) -> str:
    """The whole page for ``data``, with ``figures`` inlined."""
    target = data.target
    title = f"headstart report: {printable(os.path.basename(os.path.abspath(target.path)))}"
    kind = "fine-tuning run" if target.kind == "finetune" else "head"
    parts = [
        f"<h1>{_text(title)}</h1>",
        f'<p class="meta">{kind} <code>{_text(target.path)}</code> · made '
        f"{_text(time.strftime('%Y-%m-%d %H:%M'))} by headstart {_text(__version__)}</p>",
    ]
    if data.evaluated is not None and data.evaluated.overlap is not None:
        parts.append(_overlap_warning(data.evaluated.overlap))
    parts.append(_evaluation_summary(data.evaluated, target))
    if data.head is not None:
        parts.append(_head_section(data.head))
    if data.run_config or data.history:
        parts.append(_run_section(data.run_config, data.history, figures.learning_curve))
    if data.wise.get("alphas"):
        parts.append(_wise_section(data.wise))
    if data.leaderboard:
        parts.append(_leaderboard_section(data.leaderboard))
    if data.evaluated is not None:
        parts.append(_confusion_section(data.evaluated, figures.confusion))
        parts.append(_per_class_section(data.evaluated))
        parts.append(_mistakes_section(data.evaluated, figures.thumbnails))
        parts.append(_map_section(data.evaluated, figures.embedding_map))
    body = "\n".join(parts)
    return page(title, body)


def _number(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return _text(value)


def _param_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.0e}" if value < 0.01 or value >= 1000 else f"{value:g}"
    return str(value)


def _evaluation_summary(evaluated: Evaluated | None, target: Target) -> str:
    if evaluated is None:
        if target.kind == "finetune" and target.head_dir is None:
            hint = "The run has not finished: there is no fine-tuned head to evaluate yet."
        else:
            hint = (
                "No labelled SOURCES were given, so there is no evaluation: "
                f"<code>headstart report {_text(target.path)} SOURCE -o report.html</code> "
                "adds the accuracy, confusion matrix, mistakes and embedding map."
            )
        return f'<p class="note">{hint}</p>'
    m = evaluated.metrics
    cards = [
        ("accuracy", m.accuracy),
        ("macro-F1", m.macro_f1),
        ("balanced accuracy", m.balanced_accuracy),
        ("log-loss", m.log_loss),
    ]
    shown = "".join(
        f'<div class="card" id="metric-{name.replace(" ", "-")}">{_text(name)}'
        f"<b>{_number(value)}</b></div>"
        for name, value in cards
        if value is not None
    )
    notes = [f"{m.n} images from {', '.join(_text(s) for s in evaluated.sources)}"]
    if evaluated.missing:
        notes.append(f"{evaluated.missing} images had no embedding and are left out")
    if evaluated.unknown:
        unknown = ", ".join(f"{_text(k)} ({n})" for k, n in evaluated.unknown.items())
        notes.append(f"classes the head does not know, counted as errors: {unknown}")
    return (
        f'<section id="evaluation"><h2>Evaluation</h2><div class="cards">{shown}</div>'
        f'<p class="note">{"; ".join(notes)}.</p></section>'
    )


def _overlap_warning(overlap: Overlap) -> str:
    """Evaluation images the head was trained on, at the top: they make every figure below
    look better than the head is on new images."""
    if overlap.known and not overlap.matched:
        return (
            '<p class="note" id="training-overlap">None of the evaluated images were in the '
            "head's training data (matched by content, so copies and renames would count).</p>"
        )
    if not overlap.known:
        return (
            '<p class="warning" id="training-overlap" role="alert">Unknown whether the '
            "evaluated images were in the head's training data: the head does not record its "
            f"training images ({UNRECORDED}). Train it again to check.</p>"
        )
    rest = overlap.rest
    if rest is None:
        after = "No image is left to score the head on new images."
    else:
        shown = [f"accuracy <b>{_number(rest.accuracy)}</b>"]
        shown.append(f"macro-F1 {_number(rest.macro_f1)}")
        shown.append(f"balanced accuracy {_number(rest.balanced_accuracy)}")
        if rest.log_loss is not None:
            shown.append(f"log-loss {_number(rest.log_loss)}")
        after = f"On the other {rest.n} images: {', '.join(shown)}."
    examples = ", ".join(_text(os.path.basename(path)) for path in overlap.examples[:5])
    more = " …" if overlap.matched > min(5, len(overlap.examples)) else ""
    return (
        '<p class="warning" id="training-overlap" role="alert"><b>Warning: '
        f"{overlap.matched} of {overlap.total} evaluated images were in the head's training "
        "data</b> (the same bytes: copies and renames count); the figures below include them, "
        f"so they do not measure the head on new images. {after} "
        f'<span class="path">For example: {examples}{more}</span></p>'
    )


def _head_section(head: HeadSummary) -> str:
    params = ", ".join(f"{k}={_param_value(v)}" for k, v in sorted(head.params.items()))
    classes = ", ".join(head.classes[:12]) + (", …" if len(head.classes) > 12 else "")
    items = [
        ("directory", head.directory),
        ("head", f"{head.head_name} ({params})" if params else head.head_name),
        ("classes", f"{len(head.classes)}: {classes}"),
        ("embeddings", f"{head.embeddings} (id {head.fingerprint_id})"),
    ]
    if head.validation:
        items.append(("validation", head.validation))
    recorded = [
        f"{name.replace('_', ' ')} {_number(head.metrics[name])}"
        for name in ("accuracy", "balanced_accuracy", "macro_f1", "log_loss")
        if head.metrics.get(name) is not None
    ]
    if recorded:
        items.append(("when trained", ", ".join(recorded)))
    rows = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in items)
    return f'<section id="head"><h2>The head</h2><dl>{rows}</dl></section>'


def _wise_section(wise: dict) -> str:
    """WiSE-FT: validation scores of each weight-space mix of the zero-shot and the fine-tuned
    model, beside the references, the published mix in bold."""

    def row(name: str, entry: object, chosen: bool = False) -> str:
        entry = entry if isinstance(entry, dict) else {}
        mark = ' class="chosen"' if chosen else ""
        return (
            f'<tr{mark}><td class="name">{_text(name)}</td>'
            f"<td>{_number(entry.get('val_accuracy'))}</td>"
            f"<td>{_number(entry.get('val_macro_f1'))}</td></tr>"
        )

    finetuned = wise.get("finetuned") if isinstance(wise.get("finetuned"), dict) else {}
    rows = [
        row("zero-shot (alpha 0)", wise.get("zeroshot")),
        row("linear probe, frozen embeddings", wise.get("linear_probe")),
        row(f"fine-tuned (alpha 1, epoch {finetuned.get('epoch', '?')})", finetuned),
    ]
    rows += [
        row(f"WiSE alpha {mix.get('alpha')}", mix, mix.get("alpha") == wise.get("chosen_alpha"))
        for mix in wise["alphas"]
        if isinstance(mix, dict)
    ]
    table = _table(["model", "val accuracy", "val macro-F1"], rows, "wise")
    note = (
        '<p class="note">Each mix is (1 - alpha) x zero-shot + alpha x fine-tuned, backbone and '
        "classifier (Wortsman et al. 2022); the bold one is the run's published model.</p>"
    )
    return f'<section id="wise"><h2>WiSE-FT mixes</h2>{table}{note}</section>'


def _run_section(config: dict, history: list[dict], curve: bytes | None) -> str:
    loop = config.get("loop") if isinstance(config.get("loop"), dict) else {}
    items = [
        ("model", config.get("model")),
        ("weights", config.get("weights")),
        ("sources", ", ".join(map(str, config.get("sources") or [])) or None),
        ("validation", ", ".join(map(str, config.get("val_sources") or [])) or None),
        ("unfreeze", config.get("unfreeze")),
        ("augment", config.get("augment")),
        ("epochs asked", loop.get("epochs")),
        ("learning rate", loop.get("lr")),
    ]
    listed = "".join(f"<dt>{_text(k)}</dt><dd>{_text(v)}</dd>" for k, v in items if v is not None)
    parts = ['<section id="learning-curves"><h2>Fine-tuning run</h2>']
    if listed:
        parts.append(f"<dl>{listed}</dl>")
    if curve is not None:
        parts.append(_image("png", curve, "loss and validation accuracy per epoch", "plot"))
    if history:
        best = max(history, key=lambda r: (r["val_accuracy"], -r["epoch"]))
        rows = []
        for r in history:
            mark = ' class="chosen"' if r is best else ""
            rows.append(
                f'<tr{mark}><td class="name">{_text(r["epoch"])}</td>'
                f"<td>{_number(r.get('train_loss'))}</td><td>{_number(r.get('val_loss'))}</td>"
                f"<td>{_number(r.get('val_accuracy'))}</td>"
                f"<td>{_number(r.get('val_macro_f1'))}</td>"
                f"<td>{_number(r.get('images_per_second'), 1)}</td></tr>"
            )
        header = ["epoch", "train loss", "val loss", "val accuracy", "val macro-F1", "images/s"]
        parts.append(_table(header, rows, "epochs"))
        start = "the zero-shot head" if config.get("init") == "zeroshot" else "the linear probe"
        parts.append(f'<p class="note">Epoch 0 is {start}; the bold row is the best.</p>')
    parts.append("</section>")
    return "\n".join(parts)


def _leaderboard_section(entries: list[LeaderboardEntry]) -> str:
    rows = []
    for e in entries:
        param = f"{e.param}={_param_value(e.value)}" if e.param else "-"
        mark = ' class="chosen"' if e.chosen else ""
        rows.append(
            f'<tr{mark}><td class="name">{_text(e.head)}{" (saved)" if e.chosen else ""}</td>'
            f'<td class="name">{_text(param)}</td><td class="name">{_text(e.note)}</td>'
            f"<td>{_number(e.accuracy)}</td><td>{_number(e.balanced_accuracy)}</td>"
            f"<td>{_number(e.macro_f1)}</td><td>{_number(e.log_loss, 3)}</td>"
            f"<td>{_number(e.fit_seconds, 2)}</td></tr>"
        )
    header = ["head", "param", "note", "accuracy", "bal. acc.", "macro-F1", "log-loss", "fit s"]
    return (
        '<section id="leaderboard"><h2>Leaderboard (validation, as trained)</h2>'
        f"{_table(header, rows, 'leaderboard-table', text_columns=3)}</section>"
    )


def _confusion_section(evaluated: Evaluated, picture: bytes | None) -> str:
    counts = evaluated.confusion
    names = evaluated.classes
    intro = (
        '<p class="note">Rows: true class; columns: predicted class; shade: share of the row.</p>'
    )
    if picture is not None:
        return (
            '<section id="confusion"><h2>Confusion matrix</h2>'
            f"{_image('png', picture, 'confusion matrix', 'plot')}"
            f"{_confused_pairs(counts, names)}</section>"
        )
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    header = '<th class="corner">true \\ predicted</th>' + "".join(
        f"<th>{_text(n)}</th>" for n in names
    )
    rows = []
    for i, name in enumerate(names):
        cells = []
        for j in range(len(names)):
            count, rate = int(counts[i, j]), float(rates[i, j])
            classes = ["diagonal"] if i == j else []
            if count == 0:
                classes.append("zero")
            style = ""
            if count:
                ink = "#fff" if rate > 0.5 else "#1d1d1f"
                style = (
                    f' style="background:rgba({",".join(map(str, _SHADE))},{rate:.3f});color:{ink}"'
                )
            tip = f"true {printable(name)}, predicted {printable(names[j])}: {count} ({rate:.0%})"
            attribute = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f'<td{attribute}{style} title="{_text(tip)}">{count}</td>')
        rows.append(f'<tr><th class="name">{_text(name)}</th>{"".join(cells)}</tr>')
    table = (
        f'<div class="scroll"><table id="confusion-matrix"><thead><tr>{header}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )
    return f'<section id="confusion"><h2>Confusion matrix</h2>{intro}{table}</section>'


def _confused_pairs(counts: np.ndarray, names: list[str]) -> str:
    off = counts.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:_CONFUSED_PAIRS]
    rows = [
        f'<tr><td class="name">{_text(names[i])}</td><td class="name">{_text(names[j])}</td>'
        f"<td>{int(off[i, j])}</td></tr>"
        for i, j in zip(*np.unravel_index(order, off.shape), strict=True)
        if off[i, j]
    ]
    if not rows:
        return ""
    heading = f"<h3>Most confused pairs (more than {MAX_TABLE_CLASSES} classes)</h3>"
    return heading + _table(["true", "predicted as", "images"], rows, "confused-pairs", 2)


def _per_class_section(evaluated: Evaluated) -> str:
    rows = []
    for c in evaluated.per_class:
        bar = f"background:linear-gradient(90deg,#cfe3f3 {c.f1 * 100:.1f}%,transparent 0)"
        rows.append(
            f'<tr><td class="name">{_text(c.name)}</td><td>{c.precision:.3f}</td>'
            f'<td>{c.recall:.3f}</td><td style="{bar}">{c.f1:.3f}</td><td>{c.support}</td></tr>'
        )
    table = _table(["class", "precision", "recall", "F1", "support"], rows, "per-class-table")
    return f'<section id="per-class"><h2>Per class</h2>{table}</section>'


def _mistakes_section(evaluated: Evaluated, thumbnails: list[bytes | None]) -> str:
    word = "confidence" if evaluated.probabilistic else "score"
    if not evaluated.mistakes:
        return (
            '<section id="mistakes"><h2>Most confident mistakes</h2>'
            '<p class="note">No mistakes.</p></section>'
        )
    items = [
        _mistake(mistake, picture, word)
        for mistake, picture in zip(evaluated.mistakes, thumbnails, strict=True)
    ]
    shown = len(evaluated.mistakes)
    note = f"The {shown} most confident of {evaluated.n_mistakes} mistakes, by the {word} of "
    note += "the predicted class."
    return (
        '<section id="mistakes"><h2>Most confident mistakes</h2>'
        f'<p class="note">{note}</p><div class="gallery">{"".join(items)}</div></section>'
    )


def _mistake(mistake: Mistake, picture: bytes | None, word: str) -> str:
    alt = f"true {mistake.true}, predicted {mistake.predicted}"
    shown = (
        _image("jpeg", picture, alt)
        if picture is not None
        else '<div class="no-image">image unavailable</div>'
    )
    name = os.path.basename(mistake.path)
    return (
        f'<figure class="mistake" data-path="{_text(mistake.path)}">{shown}<figcaption>'
        f'<div class="true">true: {_text(mistake.true)}</div>'
        f'<div class="predicted">predicted: {_text(mistake.predicted)}</div>'
        f"<div>{word} {mistake.confidence:.3f}</div>"
        f'<div class="path" title="{_text(mistake.path)}">{_text(name)}</div>'
        "</figcaption></figure>"
    )


def _map_section(evaluated: Evaluated, picture: bytes | None) -> str:
    if picture is None:
        return ""
    drawn, total = len(evaluated.map_vectors), evaluated.metrics.n
    sample = f"{drawn} of {total} images, drawn at random" if drawn < total else f"{total} images"
    return (
        '<section id="embedding-map"><h2>Embedding map</h2>'
        f'<p class="note">{sample}, coloured by true class.</p>'
        f"{_image('png', picture, 'embeddings in 2-D, coloured by class', 'plot')}</section>"
    )
