"""Per-endpoint rate limits shared by every caller of that endpoint in a process.

Requests are paced smoothly (rpm/60 per one-second window, never a minute's quota at once),
tokens are drawn from a per-minute budget, the number in flight is capped, and a 429 pauses
every caller until the server's Retry-After has passed.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator

from asyncio_throttle import Throttler


class TokenBudget:
    """Token bucket for tokens/min; an estimate is charged up front and settled after the reply."""

    def __init__(self, tokens_per_minute: int, burst_seconds: float = 5.0) -> None:
        self.rate = tokens_per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, tokens: int) -> None:
        # A request larger than the bucket would wait forever; it may go into debt instead.
        need = min(float(tokens), self.capacity)
        async with self._lock:
            self._refill()
            while self.level < need:
                await asyncio.sleep((need - self.level) / self.rate)
                self._refill()
            self.level -= tokens

    def settle(self, estimated: int, actual: int) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + estimated - actual)


class EndpointLimits:
    def __init__(self, *, requests_per_minute: int, tokens_per_minute: int, max_in_flight: int) -> None:
        self.requests_per_minute = requests_per_minute
        # A sliding window of about one second holding rpm/60 requests (stretched so rpm values
        # not divisible by 60 are exact): never a minute's quota at once, so a server whose
        # bucket holds a couple of seconds of quota never sees more than it can take.
        per_window = max(1, round(requests_per_minute / 60))
        self.throttler = Throttler(rate_limit=per_window, period=per_window * 60 / requests_per_minute)
        self.tokens = TokenBudget(tokens_per_minute) if tokens_per_minute else None
        self.in_flight = asyncio.Semaphore(max_in_flight)
        self.max_in_flight = max_in_flight
        self.paused_until = 0.0

    def pause(self, seconds: float) -> None:
        """Called on a 429: every caller of this endpoint waits until the pause ends."""
        self.paused_until = max(self.paused_until, time.monotonic() + seconds)

    async def _wait_pause(self) -> None:
        while (delay := self.paused_until - time.monotonic()) > 0:
            await asyncio.sleep(delay)

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        async with self.in_flight:
            await self._wait_pause()
            if self.tokens is not None:
                await self.tokens.take(estimated_tokens)
            async with self.throttler:
                pass
            # A 429 seen by another caller while we waited for the throttle still applies.
            await self._wait_pause()
            yield

    @property
    def busy(self) -> int:
        return self.max_in_flight - self.in_flight._value  # noqa: SLF001 - reporting only
