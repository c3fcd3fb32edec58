"""A report as a document: headings, text, tables and figures, rendered as Markdown and as HTML
(one self-contained page that fits a 1,400 px window: tables in human units, constant columns
folded into a caption, wide tables split)."""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from analysis.units import format_cell

#: the width a report's tables may take in the HTML page (the body is 1000 px wide, less padding);
#: a wider table is split into parts that each repeat its first column
TABLE_WIDTH_PX = 940


class Report:
    """Blocks (headings, text, tables, figures) rendered as Markdown and as HTML. Table cells are
    written in human units (:mod:`analysis.units`: GB, ms, %); a column that holds one value in
    every row goes into a line under the table, and a table too wide for the page is split."""

    def __init__(self, out: Path, command: str) -> None:
        self.out, self.command, self.blocks = out, command, []

    def h(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", level, text))

    def p(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, df: pd.DataFrame, fold_constant: bool = True) -> None:
        """``df`` as one or more tables (first column = the row's name, repeated in each part);
        with ``fold_constant``, columns equal in every row (of two or more) become a caption."""
        cells = pd.DataFrame({c: [format_cell(c, v) for v in df[c]] for c in df.columns},
                             columns=df.columns)
        same = []
        if fold_constant and len(cells) > 1:
            same = [c for c in cells.columns[1:] if cells[c].nunique() == 1]
            if len(same) == len(cells.columns) - 1:
                same = []  # nothing would be left to compare
        shown = cells[[c for c in cells.columns if c not in same]]
        for part in split_columns(shown, TABLE_WIDTH_PX):
            self.blocks.append(("table", part))
        if same:
            self.p("Same in every row: " + "; ".join(
                f"{c} {cells[c].iloc[0] or '(none)'}" for c in same) + ".")

    def why(self, sentences: list[tuple[str, str]]) -> None:
        """One sentence per compared run (``analysis.explain``'s reading of its metrics), as a
        list under the comparison; nothing when no run has one."""
        sentences = [(n, w) for n, w in sentences if w]
        if sentences:
            self.blocks.append(("why", sentences))

    def figure(self, name: str, caption: str) -> None:
        self.blocks.append(("fig", name, caption))

    def markdown(self) -> str:
        lines: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                lines += ["#" * b[1] + " " + b[2], ""]
            elif b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "table":
                lines += [_md_table(b[1]), ""]
            elif b[0] == "why":
                lines += [f"- **{n}**: {w}" for n, w in b[1]] + [""]
            else:
                lines += [f"![{b[2]}]({b[1]})", "", f"*{b[2]}* Regenerate: `{self.command}`", ""]
        return "\n".join(lines)

    def html(self, title: str) -> str:
        body: list[str] = []
        for b in self.blocks:
            if b[0] == "h":
                body.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                body.append(f"<p>{_inline_code(b[1])}</p>")
            elif b[0] == "table":
                body.append(_html_table(b[1]))
            elif b[0] == "why":
                body.append("<ul class='why'>" + "".join(
                    f"<li><b>{html.escape(n)}</b>: {_inline_code(w)}</li>" for n, w in b[1])
                    + "</ul>")
            else:
                body.append(f'<figure><img src="{html.escape(b[1])}" alt="{html.escape(b[2])}">'
                            f"<figcaption>{html.escape(b[2])} Regenerate: "
                            f"<code>{html.escape(self.command)}</code></figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1000px;margin:auto;padding:1em}"
                 "img{max-width:100%}table.t{border-collapse:collapse;font-size:12px;"
                 "margin-bottom:.6em}table.t td,table.t th{border-bottom:1px solid #ddd;"
                 "padding:2px 6px;text-align:right;overflow-wrap:break-word}"
                 "table.t th{vertical-align:bottom}table.t td:first-child,table.t th:first-child"
                 "{text-align:left}table.t td.long{overflow-wrap:anywhere;text-align:left}"
                 "code{overflow-wrap:anywhere}figure{margin:1em 0}"
                 "figcaption{font-size:12px;color:#555}")
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
                f"</title><style>{style}</style></head><body>\n" + "\n".join(body)
                + "\n</body></html>\n")


def _inline_code(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def _header_html(name: str) -> str:
    """A column name that may break after its dots and underscores (``ttft_s.<wbr>p50``)."""
    return html.escape(name).replace(".", ".<wbr>").replace("_", "_<wbr>")


#: a word longer than this (a path, an override string) may break anywhere in a table cell
LONG_WORD = 40


def _cell(text: str) -> str:
    long = any(len(w) > LONG_WORD for w in text.split(" "))
    return f"<td class='long'>{html.escape(text)}</td>" if long else f"<td>{html.escape(text)}</td>"


def _html_table(df: pd.DataFrame) -> str:
    head = "".join(f"<th>{_header_html(str(c))}</th>" for c in df.columns)
    rows = "".join("<tr>" + "".join(_cell(str(v)) for v in rec) + "</tr>"
                   for rec in df.itertuples(index=False))
    return f"<table class='t'><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def column_width_px(name: str, cells: list[str]) -> int:
    """The width a column takes at the reports' 12 px font (about 7 px a character, 12 px of
    padding): its longest cell or the longest piece of its name (names wrap at '.' and '_',
    cells at spaces)."""
    pieces = [p for p in name.replace(".", "._").split("_") if p] or [name]
    words = [w[:LONG_WORD] for c in cells for w in str(c).split(" ")] if cells else [""]
    cell = max((len(str(c)) for c in cells), default=0)
    widest = max(max(len(p) + 1 for p in pieces), min(cell, max(len(w) for w in words) + 12))
    return 7 * widest + 12


def split_columns(df: pd.DataFrame, width_px: int) -> list[pd.DataFrame]:
    """``df`` as tables no wider than ``width_px`` each, every one with ``df``'s first column."""
    if df.shape[1] <= 1:
        return [df]
    widths = {c: column_width_px(str(c), df[c].astype(str).tolist()) for c in df.columns}
    key = df.columns[0]
    parts, cur, used = [], [], widths[key]
    for c in df.columns[1:]:
        if cur and used + widths[c] > width_px:
            parts.append(cur)
            cur, used = [], widths[key]
        cur.append(c)
        used += widths[c]
    parts.append(cur)
    return [df[[key, *p]] for p in parts]


def _md_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for rec in df.itertuples(index=False):
        rows.append("| " + " | ".join(str(v) for v in rec) + " |")
    return "\n".join(rows)
