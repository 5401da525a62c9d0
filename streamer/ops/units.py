"""How money and durations are written in the commands' tables (status, estimate, batch list)."""

from __future__ import annotations


def usd(value: float) -> str:
    """Cents are too coarse for a run's first calls: four decimals below a dollar."""
    return f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"
