"""Rate limits: the token bucket, and per-endpoint limits shared by every caller of that
endpoint in a process.

Requests are paced smoothly (rpm/60 per one-second window, never a minute's quota at once),
tokens are drawn from a per-minute budget, the number in flight is capped, and a 429 pauses
every caller until the server's Retry-After has passed. The same `TokenBucket` is what the LLM
simulator enforces on its side, answering 429 + Retry-After when it is empty.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

from asyncio_throttle import Throttler


class TokenBucket:
    """Continuously refilling bucket of `per_minute / 60` tokens a second, holding
    `burst_seconds` of them (at least one); it starts full, so a fresh limit admits a burst."""

    def __init__(self, per_minute: float, burst_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate * burst_seconds)
        self.level = self.capacity
        self.clock = clock
        self.stamp = clock()

    def refill(self) -> None:
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_time(self, tokens: float = 1.0) -> float:
        """Seconds until `tokens` are in the bucket: 0.0 when they are there now."""
        self.refill()
        if self.level >= tokens:
            return 0.0
        return (tokens - self.level) / self.rate

    def try_take(self, tokens: float = 1.0) -> float:
        """Take `tokens` without waiting: 0.0 when granted, else the seconds until they will be."""
        wait = self.wait_time(tokens)
        if wait == 0.0:
            self.level -= tokens
        return wait


class TokenBudget(TokenBucket):
    """Tokens/min of this process's requests: an estimate is charged up front, waiting for it
    if need be, and settled against the actual usage after the reply."""

    def __init__(self, tokens_per_minute: int, burst_seconds: float = 5.0) -> None:
        super().__init__(tokens_per_minute, burst_seconds)
        self._lock = asyncio.Lock()

    async def take(self, tokens: int) -> None:
        # A request larger than the bucket would wait forever; it may go into debt instead.
        need = min(float(tokens), self.capacity)
        async with self._lock:
            while (wait := self.wait_time(need)) > 0:
                await asyncio.sleep(wait)
            self.level -= tokens

    def settle(self, estimated: int, actual: int) -> None:
        self.refill()
        self.level = min(self.capacity, self.level + estimated - actual)


class EndpointLimits:
    def __init__(self, *, requests_per_minute: int, tokens_per_minute: int, max_in_flight: int) -> None:
        self.requests_per_minute = requests_per_minute
        # A sliding window of about one second holding rpm/60 requests (stretched so rpm values
        # not divisible by 60 are exact): never a minute's quota at once, so a server whose
        # bucket holds a couple of seconds of quota never sees more than it can take.
        # 0 = no pacing here: the server's 429s (and max_in_flight) are the only limits.
        self.throttler: Throttler | None = None
        if requests_per_minute:
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
            if self.throttler is not None:
                async with self.throttler:
                    pass
            # A 429 seen by another caller while we waited for the throttle still applies.
            await self._wait_pause()
            yield

    def describe(self) -> str:
        """One line for the start of a run: what this process will hold itself to."""
        pace = (f"at most {self.requests_per_minute} requests/min" if self.requests_per_minute
                else "no client-side request limit (llm.requests_per_minute = 0)")
        budget = f", {self.tokens.rate * 60:.0f} tokens/min" if self.tokens is not None else ""
        return f"{pace}{budget}, {self.max_in_flight} in flight"

    @property
    def busy(self) -> int:
        return self.max_in_flight - self.in_flight._value  # noqa: SLF001 - reporting only
