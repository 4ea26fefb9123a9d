"""Number formatting and escaping shared by the text and Markdown renderers."""

from __future__ import annotations

import math
import re

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>|#])")


def ms(us: float | None, digits: int = 2) -> str:
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return "-"
    return f"{us / 1000:.{digits}f}"


def pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    return f"{x * 100:.1f}%"


def mib(b: float | None) -> str:
    if b is None or (isinstance(b, float) and math.isnan(b)):
        return "-"
    return f"{b / 2**20:.1f} MiB"


def md_escape(text: object) -> str:
    """Escape a string from a trace for a Markdown table cell (kernel names hold <, |, *...)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def shorten(name: str, width: int = 70) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def text_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    """A plain aligned table: first column left, the rest right (unless `align` says l/r per column)."""
    align = align or ("l" + "r" * (len(headers) - 1))
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if a == "l" else str(c).rjust(w)
                         for c, w, a in zip(cells, widths, align, strict=True)).rstrip()

    out = [line(headers), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    return "\n".join(out)


def md_table(headers: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or ("l" + "r" * (len(headers) - 1))
    sep = ["---" if a == "l" else "---:" for a in align]
    out = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)
