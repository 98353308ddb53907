"""Plain-text tables for the benchmarks' output: columns aligned, a rule under the heading."""
from __future__ import annotations


def columns(lines: list[tuple[str, ...]]) -> str:
    """The first line is the heading; every line has the same number of cells."""
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
