"""Numbers as text: percentages, aligned console tables and Markdown tables, one way everywhere
(the run report, compare.py, sweep.py and the benchmarks)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def pct(value: float | None, missing: str = "-") -> str:
    """A share as a percentage with two decimals (0.8597 -> ``85.97%``); ``missing`` for None."""
    return missing if value is None else f"{100 * float(value):.2f}%"


def mean_sd(values: Sequence[float | None], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± sd`` (sample standard deviation) of the values times ``scale``, missing ones left out."""
    values = [scale * v for v in values if v is not None]
    if len(values) < 2:
        return f"{values[0]:.{digits}f}" if values else "-"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def text_table(head: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
    """Columns as wide as their widest cell, two spaces apart, no trailing spaces; the columns whose
    indices are in ``right`` (numbers) right-aligned, the others left-aligned."""
    cells = [[str(c) for c in head], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return "\n".join(
        "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in cells
    )


def markdown_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(str, head)) + " |", "|" + " --- |" * len(head)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
