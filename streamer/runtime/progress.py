"""Live progress of `run`, `demo` and `feed`: a block of lines redrawn in place on a terminal,
one periodic log line otherwise.

What is shown comes from a `source` called at every tick: one `Snapshot` per thing being
tracked (a stage, the sink, a feed), with how much is done, how much is known to be left (a
stage's lag, a finite input's rest) and what is in flight. Rates and ETAs are derived here: live
lines show a smoothed recent rate, the final line the run's average (done / elapsed).

A stage with work left or in flight that has done nothing for `STALL_AFTER` seconds gets one line
saying what it waits for (its snapshot's `blocked`: the broker, an empty table, the LLM limiter,
LLM replies); a worker also publishes these lines (streamer.metrics.runs.WAITING) for `status`.
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

from streamer import metrics
from streamer.kafka.group import sleep_until
from streamer.metrics.runs import WAITING
from streamer.runtime.stage import writers_of

log = logging.getLogger("synthstream.progress")

STALL_AFTER = 10.0  # seconds without progress, with work left or in flight, before saying what a stage waits for
PUBLISH_EVERY = 2.0  # seconds between updates of what a worker's stalled stages wait for


@dataclass
class Snapshot:
    name: str
    done: float
    left: int | None = None  # known work still to do; None = unknown (e.g. an endless input)
    in_flight: int | None = None
    note: str = ""  # extra detail, e.g. a feed's sent/duplicate/bad counts
    blocked: str = ""  # what it would be waiting for now, if it makes no progress (see `blocked_on`)

    @property
    def idle(self) -> bool:
        return not self.done and not self.left and not self.in_flight


class Tracked(Protocol):
    name: str
    in_flight: int
    last_lag: int | None


def blocked_on(member: Tracked) -> str:
    """What a worker's stage (or sink) is waiting for now, judged from its own state, most basic
    first: the broker, a table it needs (e.g. attributed seeds), the LLM limiter, LLM replies."""
    if getattr(member, "broker_away", False):
        return "waiting for the broker (unreachable)"
    for table in getattr(member, "tables", {}).values():
        if not table.rows and (why := getattr(table, "hopeless", lambda: None)()) is not None:
            return f"{table.name} will stay empty ({why}): its records go to the dlq"
        if not table.rows:
            writers = " or ".join(writers_of(table.name)) or "the stage that writes it"
            return f"waiting for {readable(table.name)} ({table.name} is empty; run {writers} and feed its input)"
    if getattr(member, "stage", None) is None:  # the sink: rows held until its next write
        return f"holding {member.in_flight} rows for its next write" if member.in_flight else ""
    limited = int(metrics.total(metrics.LLM_LIMITER_WAITING, stage=member.name))
    if limited:
        return f"waiting on the LLM limiter ({limited} calls held by this process's rate limits)"
    if member.in_flight:
        return f"waiting on LLM replies ({member.in_flight} in flight)"
    if member.last_lag:
        return "not taking its input yet (joining its consumer group?)"
    return ""


def readable(table: str) -> str:
    """A table's topic as words: seeds.attributed -> attributed seeds."""
    return " ".join(reversed(table.split(".")))


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


class _Average:
    """Done / elapsed since the display started (counts from before it are its baseline), and
    since when the count has not moved (for stalls)."""

    def __init__(self, done: float) -> None:
        self.started = self.changed = time.monotonic()
        self.first = self.last = done

    def update(self, done: float) -> None:
        if done != self.last:
            self.last, self.changed = done, time.monotonic()

    @property
    def rate(self) -> float:
        return (self.last - self.first) / max(time.monotonic() - self.started, 1e-6)

    @property
    def still_for(self) -> float:
        return time.monotonic() - self.changed


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
    """`show=False`: nothing printed, the stall lines still worked out and published (a worker run
    with --no-progress still tells `status` what it waits for)."""

    def __init__(self, source: Callable[[], list[Snapshot]], *, interval: float | None = None,
                 stream: TextIO = sys.stderr, show: bool = True,
                 publish: Callable[[dict[str, str]], None] | None = None) -> None:
        self.source = source
        self.stream = stream
        self.show = show
        self.live = show and stream.isatty()
        self.interval = interval or (0.5 if self.live else 10.0 if show else PUBLISH_EVERY)
        self.rates: dict[str, _Rate] = {}
        self.averages: dict[str, _Average] = {}
        self.publish = publish
        self.block = _LiveBlock(stream)

    @classmethod
    def of_members(cls, members: list[Tracked], done_count: Callable[[str], float], *, show: bool = True) -> Progress:
        """Progress of a worker's stages and sink: records done, lag left, records in flight."""
        def snapshots() -> list[Snapshot]:
            return [Snapshot(m.name, done_count(m.name), m.last_lag, m.in_flight, blocked=blocked_on(m))
                    for m in members]

        return cls(snapshots, show=show, publish=_publish_waiting)

    def rows(self, final: bool = False) -> list[tuple[Snapshot, float]]:
        """Each snapshot with its rate: the recent one while running, the run's average at the end."""
        out = []
        for s in self.source():
            recent = self.rates.setdefault(s.name, _Rate()).update(s.done)
            average = self.averages.setdefault(s.name, _Average(s.done))
            average.update(s.done)
            out.append((s, average.rate if final else recent))
        if self.publish is not None:
            self.publish({} if final else dict(self.waiting(out)))
        return out

    def waiting(self, rows: list[tuple[Snapshot, float]]) -> list[tuple[str, str]]:
        """(name, what it waits for) of each stalled row: work left or in flight, no progress for a while."""
        return [(s.name, s.blocked) for s, _ in rows
                if s.blocked and (s.left or s.in_flight) and self.averages[s.name].still_for >= STALL_AFTER]

    # The final display has no ETA: the process is ending, whatever is left waits for the next one.
    def lines(self, final: bool = False) -> list[str]:
        rows = self.rows(final)
        width = max((len(s.name) for s, _ in rows), default=0)
        stalled = [] if final else [f"{name}: {why}" for name, why in self.waiting(rows)]
        return [f"{s.name:<{width}}  {describe(s, rate, with_eta=not final)}" for s, rate in rows] + stalled

    def log_lines(self, final: bool = False) -> list[str]:
        """The progress line, then one line per stalled stage."""
        rows = self.rows(final)
        busy = [f"{s.name} {describe(s, rate, with_eta=not final)}" for s, rate in rows if not s.idle]
        idle = [s.name for s, _ in rows if s.idle]
        line = " | ".join(busy + ([f"idle: {', '.join(idle)}"] if idle else [])) or "nothing yet"
        return [line] + ([] if final else [f"{name}: {why}" for name, why in self.waiting(rows)])

    async def run(self, stop: asyncio.Event) -> None:
        eraser = _EraseBeforeLogging(self.block)
        handlers = [h for h in logging.getLogger().handlers if getattr(h, "stream", None) is self.stream]
        if self.live:
            for handler in handlers:
                handler.addFilter(eraser)
        self.rows()  # baselines: the first rates shown are about this display's own interval
        # Publishing stalls for `status` needs fresher ticks than a 10 s log line: tick often, print at the interval.
        tick = min(self.interval, PUBLISH_EVERY) if self.publish is not None else self.interval
        printed = time.monotonic()
        try:
            while not await sleep_until(stop, tick):
                if time.monotonic() - printed >= self.interval - tick / 2:
                    printed = time.monotonic()
                    self.emit()
                else:
                    self.rows()  # rates, stalls and what is published move on
        finally:
            for handler in handlers:
                handler.removeFilter(eraser)
            self.emit(final=True)

    def emit(self, final: bool = False) -> None:
        if not self.show:
            self.rows(final)  # stalls are still worked out and published
        elif self.live:
            self.block.draw(self.lines(final), final=final)
        else:
            line, *stalled = self.log_lines(final)
            log.info("progress%s: %s", " (final)" if final else "", line)
            for waiting in stalled:
                log.info("%s", waiting)


def _publish_waiting(lines: dict[str, str]) -> None:
    WAITING.clear()
    WAITING.update(lines)
