"""What every headstart page shares: one style sheet, escaped text, inline images, tables, and
the document around a body, whose Content-Security-Policy refuses any resource that is not
inlined.

Class names and paths are user data: every one goes through :func:`text` (file names that are
not UTF-8 shown as ``\\xNN``, then HTML-escaped).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Sequence

from headstart.pathnames import printable

__all__ = ["STYLE", "image", "page", "table", "text"]

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0; color: #1d1d1f; background: #fafafa; }
main { max-width: 1100px; margin: 0 auto; padding: 1.5rem; }
h1 { margin: 0 0 .25rem; font-size: 1.6rem; }
h2 { margin: 2rem 0 .6rem; font-size: 1.2rem; border-bottom: 1px solid #ddd; }
.meta, .note { color: #555; }
.warning { background: #fff4e5; border: 1px solid #f0b35b; border-radius: 6px;
  padding: .6rem 1rem; color: #5c3700; }
.warning .path { color: #7a5a2e; overflow-wrap: anywhere; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { font-weight: 600; } dd { margin: 0; overflow-wrap: anywhere; }
.cards { display: flex; flex-wrap: wrap; gap: .75rem; }
.card { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .6rem 1rem; }
.card b { display: block; font-size: 1.5rem; }
table { border-collapse: collapse; background: #fff; }
th, td { border: 1px solid #ddd; padding: .2rem .5rem; text-align: right; }
th { background: #f0f0f0; }
th.name, td.name { text-align: left; overflow-wrap: anywhere; max-width: 20rem; }
tr.chosen { font-weight: 600; background: #eef6ee; }
.scroll { overflow-x: auto; }
#confusion-matrix td { min-width: 2rem; text-align: center; }
#confusion-matrix td.zero { color: #bbb; }
#confusion-matrix td.diagonal { outline: 2px solid #1d1d1f; outline-offset: -2px; }
#confusion-matrix thead th { writing-mode: vertical-rl; transform: rotate(180deg); }
#confusion-matrix thead th.corner { writing-mode: horizontal-tb; transform: none; }
.gallery { display: grid; gap: .75rem;
  grid-template-columns: repeat(auto-fill, minmax(150px, 1fr)); }
figure { margin: 0; background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .4rem; }
figure img, .no-image { display: block; margin: 0 auto .3rem; max-width: 100%; }
.no-image { width: 96px; height: 72px; background: #eee; color: #777; font-size: 11px;
  display: flex; align-items: center; justify-content: center; text-align: center; }
figcaption { font-size: 12px; overflow-wrap: anywhere; }
figcaption .true { color: #1a7f37; } figcaption .predicted { color: #b42318; }
figcaption .path { color: #777; }
img.plot { max-width: 100%; height: auto; background: #fff; border: 1px solid #ddd; }
.finding { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: .5rem .75rem;
  margin: 0 0 .75rem; }
.finding h3 { margin: 0 0 .4rem; font-size: .95rem; font-weight: 600; }
.side { display: flex; flex-wrap: wrap; gap: .5rem; align-items: flex-start; }
.side figure { width: 150px; }
.side .more { align-self: center; color: #555; }
.finding .label { font-weight: 600; }
.finding .given { color: #b42318; } .finding .suggested { color: #1a7f37; }
"""


def text(value: object) -> str:
    """``value`` as HTML text: printable, then escaped (quotes too, so attributes take it)."""
    return html.escape(printable(str(value)), quote=True)


def image(kind: str, data: bytes, alt: str, css_class: str = "") -> str:
    """An ``<img>`` of ``data`` (``kind``: png, jpeg) inlined as a ``data:`` URI."""
    encoded = base64.b64encode(data).decode("ascii")
    class_attribute = f' class="{css_class}"' if css_class else ""
    return f'<img{class_attribute} src="data:image/{kind};base64,{encoded}" alt="{text(alt)}">'


def table(
    header: Sequence[str], rows: Iterable[str], table_id: str = "", text_columns: int = 1
) -> str:
    """A table; ``header`` cells are escaped here, ``rows`` come already rendered. The first
    ``text_columns`` are text (left-aligned), the rest numbers."""
    identifier = f' id="{table_id}"' if table_id else ""
    cells = "".join(
        f'<th class="name">{text(h)}</th>' if i < text_columns else f"<th>{text(h)}</th>"
        for i, h in enumerate(header)
    )
    body = "\n".join(rows)
    return (
        f'<div class="scroll"><table{identifier}><thead><tr>{cells}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def page(title: str, body: str) -> str:
    """The whole HTML document: ``body`` (already rendered) under ``title`` (escaped here)."""
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">\n"
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )
