"""`synthstream status --until-idle`: wait until workers in other processes have done everything fed.

The pipeline is idle when every stage's group and the sink's have committed every record of their
input topics. One look can be fooled: a stage may commit its last input (its outputs acknowledged
before) just after the next topic's end was read. Two looks in a row with every input consumed and
no topic's end moved in between cannot: whatever was produced before the first look's commits is in
the second look's ends. (Records still being fed, or a stage holding one back, keep it from idling.)
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from aiokafka import TopicPartition

from streamer.config import Settings
from streamer.ops.status.figures import lag_partitions
from streamer.ops.status.sample import Sample, Sampler, Watched

SAY_EVERY = 5.0  # seconds between "still waiting" lines
STUCK_AFTER = 30.0  # seconds without a commit before a stage with work left is called stuck


def left_by_group(groups: list[Watched], sample: Sample) -> dict[str, int]:
    """Records each group has not committed yet on its input topics (its lag, as `status` counts it)."""
    return {group.name: sum(p["lag"] for p in lag_partitions(group, sample)) for group in groups}


@dataclass
class IdleWatch:
    """Looks at successive samples; `idle` once two in a row had nothing left and the same ends."""

    groups: list[Watched]
    last_ends: dict[TopicPartition, int] | None = None
    last_left: dict[str, int] = field(default_factory=dict)
    moved_at: dict[str, float] = field(default_factory=dict)  # group -> when its commits last moved
    idle: bool = False
    waiting: dict[str, str] = field(default_factory=dict)  # stage -> what its workers say it waits for

    def look(self, sample: Sample, now: float) -> None:
        left = left_by_group(self.groups, sample)
        for name, count in left.items():
            if count != self.last_left.get(name) or name not in self.moved_at:
                self.moved_at[name] = now
        self.idle = not any(left.values()) and not any(self.last_left.values()) and sample.ends == self.last_ends
        self.last_ends, self.last_left, self.waiting = sample.ends, left, sample.waiting

    def waiting_line(self, now: float) -> str:
        parts = []
        for name, count in self.last_left.items():
            if count:
                parts.append(f"{name} {count}{self._why(name, now)}")
        return "waiting: " + (", ".join(parts) + " left" if parts else "nothing left; looking once more")

    def _why(self, name: str, now: float) -> str:
        """What holds a stage up: what its workers say, else a hint once it has not moved for a while."""
        if name in self.waiting:
            return f" ({self.waiting[name]})"
        still = now - self.moved_at.get(name, now)
        return f" (no progress for {still:.0f}s: is a worker of it running?)" if still >= STUCK_AFTER else ""


async def wait_until_idle(settings: Settings, interval: float, say: Callable[[str], None],
                          timeout: float | None = None) -> tuple[bool, float, str]:
    """Sample every `interval` seconds until idle (or `timeout` seconds have passed); say what is
    left now and then. Returns whether it became idle, the seconds waited and what was left last."""
    started = last_said = time.monotonic()
    async with Sampler(settings) as sampler:
        watch = IdleWatch(sampler.groups)
        while True:
            now = time.monotonic()
            watch.look(await sampler.sample(), now)
            if watch.idle or (timeout is not None and now - started >= timeout):
                return watch.idle, now - started, watch.waiting_line(now)
            if now - last_said >= SAY_EVERY:
                say(watch.waiting_line(now))
                last_said = now
            await asyncio.sleep(interval)
