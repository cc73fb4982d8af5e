"""HTML building blocks of the report: page frame and style, tables, figures embedded as base64 PNG.

Plain strings with :func:`html.escape` on every value that comes from a file; no template engine. The page
needs no network and no script: images are ``data:`` URIs, the style sheet is inline.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STYLE = """
:root { --ink: #1d2433; --muted: #5b6475; --line: #d9dee7; --soft: #f4f6fa; --accent: #1f5fbf; --good: #17803d; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: var(--ink); background: #fff; }
main { max-width: 1280px; margin: 0 auto; padding: 28px 32px 60px; }
header { border-bottom: 3px solid var(--accent); margin-bottom: 18px; padding-bottom: 10px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 34px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p, li { max-width: 78ch; }
.sub { color: var(--muted); margin: 0; }
nav { font-size: 14px; margin: 8px 0 0; color: var(--muted); }
nav a { color: var(--accent); text-decoration: none; margin-right: 14px; }
.cards { display: flex; flex-wrap: wrap; gap: 14px; margin: 16px 0 6px; }
.card { border: 1px solid var(--line); border-radius: 8px; padding: 10px 16px; min-width: 210px;
        background: var(--soft); }
.card .label { font-size: 13px; color: var(--muted); }
.card .value { font-size: 24px; font-weight: 650; }
.card .note { font-size: 13px; color: var(--muted); }
.card.win .value { color: var(--good); }
table { border-collapse: collapse; margin: 8px 0 12px; font-size: 14px; font-variant-numeric: tabular-nums; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px; text-align: right; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
th:first-child, td:first-child { text-align: left; }
td.text, th.text { text-align: left; }
td.best { font-weight: 700; color: var(--good); }
tr.flagged td { background: #fdecea; color: #a5281b; font-weight: 600; }
th.span { text-align: center; border-left: 2px solid #fff; }
.tables { display: flex; flex-wrap: wrap; gap: 10px 36px; align-items: flex-start; }
figure { margin: 12px 0 22px; }
figure img { max-width: 100%; height: auto; border: 1px solid var(--line); border-radius: 4px; }
figcaption { font-size: 13px; color: var(--muted); max-width: 110ch; margin-top: 4px; }
.patient { border-top: 1px dashed var(--line); margin-top: 18px; }
.grid2 { display: grid; grid-template-columns: minmax(0, 3fr) minmax(0, 2fr); gap: 18px; align-items: start; }
pre { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 10px 12px; font-size: 12.5px;
      overflow-x: auto; max-height: 460px; }
details summary { cursor: pointer; color: var(--accent); margin: 6px 0; }
dl.defs dt { font-weight: 600; margin-top: 8px; }
dl.defs dd { margin: 2px 0 0 18px; max-width: 100ch; color: #333a48; }
.note { color: var(--muted); font-size: 13px; }
.warning { border-left: 4px solid #c0392b; background: #fdecea; padding: 8px 12px; }
footer { margin-top: 40px; color: var(--muted); font-size: 13px; border-top: 1px solid var(--line); padding-top: 10px; }
@media (max-width: 900px) { .grid2 { grid-template-columns: 1fr; } main { padding: 16px; } }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3) -> str:
    """A number for a table cell: fixed digits, '–' for missing or NaN."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, (int, float)):
        return f"{value:.{digits}f}"
    return esc(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]], best: Sequence[set[int]] | None = None,
          text_columns: int = 1, row_classes: Sequence[str] | None = None) -> str:
    """An HTML table; cells are pre-formatted strings (escaped by the caller); ``best[i]``: bold columns of row i."""
    def cls(i: int, j: int) -> str:
        names = []
        if j < text_columns:
            names.append("text")
        if best is not None and i >= 0 and j in best[i]:
            names.append("best")
        return f' class="{" ".join(names)}"' if names else ""

    head = "".join(f"<th{cls(-1, j)}>{h}</th>" for j, h in enumerate(header))
    body = "".join(
        "<tr" + (f' class="{row_classes[i]}"' if row_classes and row_classes[i] else "") + ">"
        + "".join(f"<td{cls(i, j)}>{c}</td>" for j, c in enumerate(row)) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def grouped_table(first: str, groups: Sequence[tuple[str, Sequence[str]]], rows: Sequence[Sequence[str]],
                  best: Sequence[set[int]] | None = None) -> str:
    """A table with a two-row header: one label per group of columns above its sub-headers."""
    top = f'<th class="text" rowspan="2">{first}</th>' + "".join(
        f'<th colspan="{len(subs)}" class="span">{label}</th>' for label, subs in groups)
    sub = "".join(f"<th>{h}</th>" for _, subs in groups for h in subs)
    body = "".join(
        "<tr>" + "".join(
            f'<td class="{"text" if j == 0 else ""}{" best" if best and j in best[i] else ""}">{c}</td>'
            for j, c in enumerate(row)) + "</tr>"
        for i, row in enumerate(rows)
    )
    return f"<table><thead><tr>{top}</tr><tr>{sub}</tr></thead><tbody>{body}</tbody></table>"


def image(path: Path, alt: str, caption: str | None = None) -> str:
    """A figure with the PNG at ``path`` embedded as a data URI (the page stays one self-contained file)."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{caption}</figcaption>" if caption else ""
    return f'<figure><img alt="{esc(alt)}" src="data:image/png;base64,{data}">{cap}</figure>'


def card(label: str, value: str, note: str = "", win: bool = False) -> str:
    return (f'<div class="card{" win" if win else ""}"><div class="label">{label}</div>'
            f'<div class="value">{value}</div><div class="note">{note}</div></div>')


def json_block(obj: Any, summary: str) -> str:
    return f"<details><summary>{esc(summary)}</summary><pre>{esc(json.dumps(obj, indent=2))}</pre></details>"


def page(title: str, subtitle: str, nav: Sequence[tuple[str, str]], body: str, footer: str) -> str:
    links = "".join(f'<a href="#{esc(anchor)}">{esc(label)}</a>' for anchor, label in nav)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body><main>"
        f"<header><h1>{esc(title)}</h1><p class=\"sub\">{subtitle}</p><nav>{links}</nav></header>"
        f"{body}<footer>{footer}</footer></main></body></html>\n"
    )
