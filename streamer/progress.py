"""Live progress: one updating line on a terminal, periodic log lines otherwise."""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

from streamer.kafka.consumer import sleep_until

log = logging.getLogger("synthstream.progress")


class Tracked(Protocol):
    name: str
    in_flight: int
    last_lag: int | None


@dataclass
class _Rate:
    last_value: float = 0.0
    last_time: float = field(default_factory=time.monotonic)
    rate: float = 0.0

    def update(self, value: float) -> float:
        now = time.monotonic()
        if now > self.last_time:
            instant = (value - self.last_value) / (now - self.last_time)
            # Smoothed so the line does not flicker with bursty LLM completions.
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
        self.last_value, self.last_time = value, now
        return self.rate


class Progress:
    def __init__(self, members: list[Tracked], done_count: Callable[[str], float],
                 interval: float | None = None, stream=sys.stderr) -> None:
        self.members = members
        self.done_count = done_count
        self.stream = stream
        self.live = stream.isatty()
        self.interval = interval or (0.5 if self.live else 10.0)
        self.rates = {m.name: _Rate() for m in members}

    def line(self) -> str:
        parts = []
        for m in self.members:
            done = self.done_count(m.name)
            rate = self.rates[m.name].update(done)
            lag = m.last_lag
            eta = f" eta {lag / rate:.0f}s" if lag and rate > 0.01 else ""
            lag_s = "?" if lag is None else str(lag)
            parts.append(f"{m.name} {done:.0f} done, {m.in_flight} in flight, {lag_s} waiting, {rate:.1f}/s{eta}")
        return " | ".join(parts)

    async def run(self, stop: asyncio.Event) -> None:
        while not await sleep_until(stop, self.interval):
            self.emit()
        self.emit(final=True)

    def emit(self, final: bool = False) -> None:
        text = self.line()
        if self.live:
            end = "\n" if final else ""
            self.stream.write(f"\r\033[K{text[: 400]}{end}")
            self.stream.flush()
        else:
            log.info("progress: %s", text)
