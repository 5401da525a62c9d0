"""Live progress of `run`, `demo` and `feed`: a block of lines redrawn in place on a terminal,
one periodic log line otherwise.

What is shown comes from a `source` called at every tick: one `Snapshot` per thing being
tracked (a stage, the sink, a feed), with how much is done, how much is known to be left (a
stage's lag, a finite input's rest) and what is in flight. Rates and ETAs are derived here.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TextIO

from streamer.kafka.group import sleep_until

log = logging.getLogger("synthstream.progress")


@dataclass
class Snapshot:
    name: str
    done: float
    left: int | None = None  # known work still to do; None = unknown (e.g. an endless input)
    in_flight: int | None = None
    note: str = ""  # extra detail, e.g. a feed's sent/duplicate/bad counts

    @property
    def idle(self) -> bool:
        return not self.done and not self.left and not self.in_flight


class Tracked(Protocol):
    name: str
    in_flight: int
    last_lag: int | None


def format_eta(seconds: float) -> str:
    """Compact duration: 42s, 3m05s, 2h07m; '>99h' beyond any useful precision."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 100 * 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return ">99h"


def eta(left: int | None, rate: float) -> str | None:
    """Time to finish what is left at the current rate; None when unknown or nothing is left."""
    if not left or rate <= 0.01:
        return None
    return format_eta(left / rate)


class _Rate:
    """Smoothed rate of a growing count, so the display does not flicker with bursty completions."""

    def __init__(self) -> None:
        self.last: tuple[float, float] | None = None  # (value, time) at the previous update
        self.rate = 0.0

    def update(self, value: float) -> float:
        now = time.monotonic()
        # The first reading is only a baseline: counts may predate this display (demo runs workers in turn).
        if self.last is not None and now > self.last[1]:
            instant = (value - self.last[0]) / (now - self.last[1])
            self.rate = instant if self.rate == 0 else 0.7 * self.rate + 0.3 * instant
        self.last = (value, now)
        return self.rate


def describe(snap: Snapshot, rate: float, *, with_eta: bool = True) -> str:
    parts = [f"{snap.done:.0f} done", f"{rate:.1f}/s"]
    if snap.left is not None:
        parts.append(f"{snap.left} left")
    if snap.in_flight is not None:
        parts.append(f"{snap.in_flight} in flight")
    if with_eta and (remaining := eta(snap.left, rate)) is not None:
        parts.append(f"eta {remaining}")
    if snap.note:
        parts.append(snap.note)
    return ", ".join(parts)


class _LiveBlock:
    """Lines redrawn in place. A log record written meanwhile first erases the block (see
    `_EraseBeforeLogging`), so log lines scroll above it instead of being overwritten."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.height = 0

    def draw(self, lines: list[str], final: bool = False) -> None:
        width = max(20, shutil.get_terminal_size().columns - 1)  # a wrapped line would break the redraw
        self.clear()
        self.stream.write("".join(f"{line[:width]}\n" for line in lines))
        self.stream.flush()
        self.height = 0 if final else len(lines)  # the final block stays on screen

    def clear(self) -> None:
        if self.height:
            self.stream.write(f"\033[{self.height}F\033[J")
            self.stream.flush()
            self.height = 0


class _EraseBeforeLogging(logging.Filter):
    def __init__(self, block: _LiveBlock) -> None:
        super().__init__()
        self.block = block

    def filter(self, record: logging.LogRecord) -> bool:
        self.block.clear()
        return True


class Progress:
    def __init__(self, source: Callable[[], list[Snapshot]], *, interval: float | None = None,
                 stream: TextIO = sys.stderr) -> None:
        self.source = source
        self.stream = stream
        self.live = stream.isatty()
        self.interval = interval or (0.5 if self.live else 10.0)
        self.rates: dict[str, _Rate] = {}
        self.block = _LiveBlock(stream)

    @classmethod
    def of_members(cls, members: list[Tracked], done_count: Callable[[str], float]) -> Progress:
        """Progress of a worker's stages and sink: records done, lag left, records in flight."""
        def snapshots() -> list[Snapshot]:
            return [Snapshot(m.name, done_count(m.name), m.last_lag, m.in_flight) for m in members]

        return cls(snapshots)

    def rows(self) -> list[tuple[Snapshot, float]]:
        return [(s, self.rates.setdefault(s.name, _Rate()).update(s.done)) for s in self.source()]

    # The final display has no ETA: the process is ending, whatever is left waits for the next one.
    def lines(self, final: bool = False) -> list[str]:
        rows = self.rows()
        width = max((len(s.name) for s, _ in rows), default=0)
        return [f"{s.name:<{width}}  {describe(s, rate, with_eta=not final)}" for s, rate in rows]

    def log_line(self, final: bool = False) -> str:
        rows = self.rows()
        busy = [f"{s.name} {describe(s, rate, with_eta=not final)}" for s, rate in rows if not s.idle]
        idle = [s.name for s, _ in rows if s.idle]
        return " | ".join(busy + ([f"idle: {', '.join(idle)}"] if idle else [])) or "nothing yet"

    async def run(self, stop: asyncio.Event) -> None:
        eraser = _EraseBeforeLogging(self.block)
        handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is self.stream]
        if self.live:
            for handler in handlers:
                handler.addFilter(eraser)
        self.rows()  # baselines: the first rates shown are about this display's own interval
        try:
            while not await sleep_until(stop, self.interval):
                self.emit()
        finally:
            for handler in handlers:
                handler.removeFilter(eraser)
            self.emit(final=True)

    def emit(self, final: bool = False) -> None:
        if self.live:
            self.block.draw(self.lines(final), final=final)
        else:
            log.info("progress%s: %s", " (final)" if final else "", self.log_line(final))
