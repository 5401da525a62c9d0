"""Retry delays shared by the LLM client and the stage runtime."""

from __future__ import annotations

import random


def jittered_backoff(retry: int, base: float = 0.5, cap: float = 30.0) -> float:
    """Exponential backoff with full jitter, so many callers do not retry in lockstep."""
    return random.uniform(0, min(cap, base * 2 ** max(0, retry)))
