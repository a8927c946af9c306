"""Formatting numbers and laying out tables as HTML and Markdown, for the comparison and the report."""

from __future__ import annotations

import html
from typing import Any

import numpy as np


def fmt(v: Any, digits: int = 3) -> str:
    """A cell: ``—`` for None/NaN, yes/no, thousands separators, ``digits`` decimals."""
    if v is None:
        return "—"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    if isinstance(v, (float, np.floating)):
        return "—" if v != v else f"{float(v):.{digits}f}"
    return str(v)


def ci_text(value: Any, ci: Any) -> str:
    """``value [lo, hi]``; ``undefined`` for None; the value alone without an interval."""
    if value is None:
        return "undefined"
    if not ci or ci[0] is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(ci[0])}, {fmt(ci[1])}]"


def table(header: list[str], rows: list[list[Any]], caption: str = "") -> tuple[str, str]:
    """(HTML, Markdown) of a table; cells formatted with :func:`fmt` unless already strings."""
    cells = [[c if isinstance(c, str) else fmt(c) for c in r] for r in rows]
    h = ["<table>"]
    if caption:
        h.append(f"<caption>{html.escape(caption)}</caption>")
    h.append(
        "<thead><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr></thead>"
    )
    h.append("<tbody>")
    for r in cells:
        h.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>")
    h.append("</tbody></table>")
    md = []
    if caption:
        md.append(f"*{caption}*\n")
    md.append("| " + " | ".join(header) + " |")
    md.append("|" + "---|" * len(header))
    md.extend("| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in cells)
    return "\n".join(h), "\n".join(md) + "\n"
