"""The faults a client of a hosted model has to cope with, decided per request.

A requests/min token bucket (the caller answers 429 + Retry-After when it is empty), injected
500s, malformed JSON, valid JSON that breaks the schema, and truncation at `max_tokens`. Random
draws come from their own seeded RNG, apart from the content RNGs, so a fault never changes what
a good answer says.
"""

from __future__ import annotations

import json
import random
from typing import Callable

from streamer.llm.limits import TokenBucket
from streamer.llm.simulator.settings import SimulatorSettings, SimulatorStats
from streamer.llm.simulator.words import CHARS_PER_TOKEN, count_tokens


class Faults:
    """Fault decisions for one simulator; each fault it injects is counted in `stats`."""

    def __init__(self, settings: SimulatorSettings, stats: SimulatorStats) -> None:
        self.settings = settings
        self.stats = stats
        self.bucket = TokenBucket(settings.rpm, settings.burst_seconds) if settings.rpm > 0 else None
        self.rng = random.Random(settings.seed)

    def rate_limit_wait(self) -> float:
        """0.0 when a request may go ahead, else the seconds until the bucket has a token again."""
        if self.bucket is None or (wait := self.bucket.try_take()) == 0.0:
            return 0.0
        self.stats.rate_limited += 1
        return wait

    def server_error(self) -> bool:
        """Whether this request fails with a simulated 500."""
        if self.settings.error_rate and self.rng.random() < self.settings.error_rate:
            self.stats.errors += 1
            return True
        return False

    def spoil(self, content: str) -> str:
        """A JSON answer as given, or broken JSON (malformed_rate), or JSON breaking the schema (invalid_rate)."""
        if self.settings.malformed_rate and self.rng.random() < self.settings.malformed_rate:
            self.stats.malformed += 1
            return malform(content, self.rng)
        if self.settings.invalid_rate and self.rng.random() < self.settings.invalid_rate:
            self.stats.invalid += 1
            return break_schema(content)
        return content

    def truncate(self, content: str, max_tokens: int | None) -> tuple[str, int, str]:
        """Content cut at `max_tokens` as a model would; returns it, its tokens and the finish reason.
        A verbose model (`answer_tokens`) needs that many tokens whatever it says."""
        tokens = max(count_tokens(len(content)), self.settings.answer_tokens)
        if max_tokens is None or tokens <= max_tokens:
            return content, tokens, "stop"
        self.stats.truncated += 1
        cut = min(max_tokens * CHARS_PER_TOKEN, len(content) * max_tokens // tokens)
        return content[:cut], max_tokens, "length"


def malform(content: str, rng: random.Random) -> str:
    """Break valid JSON the ways real models do; the result never parses."""
    kinds: list[Callable[[str], str]] = [
        lambda s: s[: max(1, len(s) // 2)],  # cut off mid-object
        lambda s: s.replace('"', "'"),  # single quotes
        lambda s: s[:-1] + ",}" if s.endswith("}") else s + ",",  # trailing comma
    ]
    broken = rng.choice(kinds)(content)
    try:
        json.loads(broken)
    except ValueError:
        return broken
    return "I cannot answer that."  # e.g. a bare number survived the chosen kind


def break_schema(content: str) -> str:
    """Valid JSON that a schema rejects: the object loses its first field."""
    value = json.loads(content)
    if isinstance(value, dict) and value:
        value.pop(next(iter(value)))
        return json.dumps(value)
    return json.dumps({"unexpected": value})
