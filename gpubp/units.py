"""Byte counts as people read them, in messages: "32.0 GB", "512 MB", "96 B" (decimal units)."""

from __future__ import annotations


def bytes_text(n: int) -> str:
    """``n`` bytes in the largest decimal unit it reaches: one decimal below 100, none above."""
    for unit, scale in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= scale:
            value = n / scale
            return f"{value:.1f} {unit}" if value < 100 else f"{value:,.0f} {unit}"
    return f"{n} B"
