"""The benchmark table: samples/s and ratios, one line per config."""

from __future__ import annotations

from typing import Sequence


def _fmt_rate(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(rows: Sequence[dict]) -> str:
    """A plain-text table of samples/s and ratios, one line per row."""
    header = ("config", "sizes", "batch", "device", "gpubp/s", "numpy/s", "gpubp/numpy", "torch/s",
              "gpubp/torch")
    lines = [header]
    for row in rows:
        lines.append((
            row["config"], ",".join(str(s) for s in row["sizes"]), str(row["batch_size"]), row["device"],
            _fmt_rate(row.get("gpubp")), _fmt_rate(row.get("numpy")), _fmt_ratio(row.get("gpubp/numpy")),
            _fmt_rate(row.get("torch")), _fmt_ratio(row.get("gpubp/torch")),
        ))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for j, line in enumerate(lines):
        out.append("  ".join(cell.ljust(w) if i < 4 else cell.rjust(w)
                             for i, (cell, w) in enumerate(zip(line, widths))).rstrip())
        if j == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)
