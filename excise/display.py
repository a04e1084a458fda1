"""How results show themselves in a notebook: small HTML tables and inline figures.

Every result type a notebook shows (AuditReport, RecallTable, EditRecord,
Localization, Fact, FactSet, Entanglement) has a `_repr_html_` built from
these three helpers; Jupyter calls it when the object is a cell's value.
Plain `repr` stays the one-line summary.

Figures are rendered once, at `DPI`, into a PNG embedded in the HTML, and
then closed, so showing a result neither leaks a pyplot figure nor shows it
twice.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Iterable, Sequence
from typing import Any

DPI = 72          # inline figures: about 60 KB for a three-panel causal trace
MAX_ROWS = 20     # longer tables show their first rows and say how many were left out

_STYLE = "border-collapse:collapse;font-size:12px;margin:4px 0"
_CELL = "padding:2px 8px;border-bottom:1px solid #ddd;text-align:{align}"


def escape(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 3, *, none: str = "-", significant: bool = False, small: float = 1e-3,
        large: float = 1e5, outside: str | None = None, whole: float | None = None, commas: bool = False) -> str:
    """Returns a number as text, the one formatter of every table and report (cost: none).

    None is `none`; a float whose magnitude is 0 or in [small, large) gets `digits` decimals (`significant`:
    significant digits; at or above `whole`, none), any other float the format `outside` (default
    `digits` significant digits); ints as they are (`commas`: with thousands separators); the rest str().
    The defaults are a table cell's: 3 decimals, small or huge values in g.
    """
    if value is None:
        return none
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if not isinstance(value, float):
        return f"{value:,}" if commas else str(value)
    if value != 0 and not small <= abs(value) < large:
        return format(value, outside or f".{digits}g")
    if whole is not None and abs(value) >= whole:
        return f"{value:.0f}"
    return f"{value:.{digits}{'g' if significant else 'f'}}"


def value(v: Any, limit: int = 48) -> Any:
    """A setting as a table cell: numbers and short strings as they are, a long list as its length and start."""
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, (list, tuple)) and len(v) > 3:
        text = f"{len(v)} items: {v[0]!r}, ..., {v[-1]!r}"
    else:
        text = v if isinstance(v, str) else repr(v)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def table(header: Sequence[str], rows: Iterable[Sequence[Any]], caption: str | None = None,
          max_rows: int = MAX_ROWS, numbers: str = "right") -> str:
    """An HTML table; numbers right-aligned (`numbers="left"` for key-value lists), text left; at most
    `max_rows` rows, then a count of the rest."""
    rows = list(rows)
    shown = rows[:max_rows]

    def cell(tag: str, v: Any) -> str:
        align = numbers if isinstance(v, (int, float)) and not isinstance(v, bool) else "left"
        return f'<{tag} style="{_CELL.format(align=align)}">{escape(fmt(v))}</{tag}>'

    out = [f'<table style="{_STYLE}">']
    if caption:
        out.append(f'<caption style="text-align:left;font-weight:bold">{escape(caption)}</caption>')
    out.append("<thead><tr>" + "".join(cell("th", h) for h in header) + "</tr></thead><tbody>")
    out += ["<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in shown]
    out.append("</tbody></table>")
    if len(rows) > len(shown):
        out.append(f"<p><i>... {len(rows) - len(shown)} more rows</i></p>")
    return "".join(out)


def figure(fig: Any, dpi: int = DPI) -> str:
    """`fig` as an inline PNG <img>; the figure is closed (pyplot's) or dropped (a bare Figure)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)                              # a no-op for a Figure pyplot does not manage
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img style="max-width:100%" src="data:image/png;base64,{data}"/>'


def heading(text: str) -> str:
    return f"<p><b>{escape(text)}</b></p>"


def side_by_side(parts: Iterable[str]) -> str:
    """Small tables next to each other (they wrap on a narrow page)."""
    return "".join(f'<div style="display:inline-block;vertical-align:top;margin-right:16px">{p}</div>'
                   for p in parts)


def folded(summary: str, body: str) -> str:
    """`body` behind a click: for the long tail a reader rarely needs first."""
    return f"<details><summary>{escape(summary)}</summary>{body}</details>"
