"""Where to start reading a topic, as people say it, and the offsets that means.

`tap` and `replay` take the same options: `--from-beginning`, `--offset N` (every partition) or
`--offset P:N…` (only those partitions), `--since TIME` (an ISO time, or an age like `10m`, `2h`).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

from aiokafka import AIOKafkaConsumer, TopicPartition

from streamer.kafka.end_offsets import exact_end_offsets

EVERY_PARTITION = -1  # key of an offset that applies to every partition
_AGE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class PositionError(ValueError):
    """A start position a user asked for that cannot be parsed or does not exist."""


@dataclass(frozen=True)
class StartAt:
    kind: Literal["beginning", "end", "offsets", "since"]
    offsets: dict[int, int] = field(default_factory=dict)  # partition (or EVERY_PARTITION) -> offset
    since_ms: int | None = None

    @classmethod
    def from_args(cls, *, from_beginning: bool = False, offset: list[str] | None = None, since: str | None = None,
                  default: Literal["beginning", "end"] = "beginning") -> StartAt:
        if from_beginning:
            return cls("beginning")
        if offset:
            return cls("offsets", offsets=parse_offsets(offset))
        if since:
            return cls("since", since_ms=parse_since(since))
        return cls(default)

    def describe(self) -> str:
        if self.kind == "offsets":
            if EVERY_PARTITION in self.offsets:
                return f"offset {self.offsets[EVERY_PARTITION]} on every partition"
            return "offsets " + " ".join(f"{p}:{o}" for p, o in sorted(self.offsets.items()))
        if self.kind == "since":
            assert self.since_ms is not None
            return f"records since {datetime.fromtimestamp(self.since_ms / 1000).isoformat(timespec='seconds')}"
        return f"the {self.kind}"


FROM_BEGINNING = StartAt("beginning")


def parse_offsets(values: list[str]) -> dict[int, int]:
    """`N` (every partition) or `P:N` items; a partition named twice is an error."""
    out: dict[int, int] = {}
    for value in values:
        m = re.fullmatch(r"(?:(\d+):)?(\d+)", value.strip())
        if not m:
            raise PositionError(f"--offset {value!r}: expected OFFSET or PARTITION:OFFSET, e.g. 120 or 0:120")
        partition = int(m.group(1)) if m.group(1) is not None else EVERY_PARTITION
        if partition in out:
            raise PositionError(f"--offset {value!r}: partition given twice")
        out[partition] = int(m.group(2))
    if EVERY_PARTITION in out and len(out) > 1:
        raise PositionError("--offset: give either one OFFSET for every partition or PARTITION:OFFSET items")
    return out


def parse_since(text: str, now: float | None = None) -> int:
    """Epoch milliseconds of an ISO time (local time unless it names a zone) or an age (`90s`, `10m`, `2h`, `1d`)."""
    now = time.time() if now is None else now
    if m := _AGE.fullmatch(text.strip()):
        return int((now - float(m.group(1)) * _SECONDS[m.group(2)]) * 1000)
    try:
        return int(datetime.fromisoformat(text.strip()).timestamp() * 1000)
    except ValueError:
        raise PositionError(f"--since {text!r}: expected an ISO time (2025-05-01T12:00) or an age "
                            f"like 30s, 10m, 2h, 1d") from None


async def resolve(observer: AIOKafkaConsumer, tps: list[TopicPartition], start: StartAt
                  ) -> dict[TopicPartition, int]:
    """Concrete offsets for `start` on `tps` (with explicit offsets: only the partitions named),
    clamped to what the partitions hold. `observer` is a consumer of no group; it is left unassigned."""
    if start.kind == "offsets" and EVERY_PARTITION not in start.offsets:
        known = {tp.partition: tp for tp in tps}
        missing = sorted(set(start.offsets) - set(known))
        if missing:
            raise PositionError(f"{tps[0].topic} has partitions 0-{len(tps) - 1}; there is no partition "
                                f"{', '.join(map(str, missing))}")
        tps = [known[p] for p in sorted(start.offsets)]
    firsts = await observer.beginning_offsets(tps)
    if start.kind == "beginning":
        return dict(firsts)
    ends = await exact_end_offsets(observer, tps)
    if start.kind == "end":
        return ends
    if start.kind == "since":
        found = await observer.offsets_for_times({tp: start.since_ms for tp in tps})
        # No record that late: the end. (Some brokers answer "none" as offset 0 with timestamp -1.)
        return {tp: ends[tp] if hit is None or hit.timestamp < 0 else hit.offset for tp, hit in found.items()}
    wanted = {tp: start.offsets.get(tp.partition, start.offsets.get(EVERY_PARTITION, 0)) for tp in tps}
    return {tp: min(max(offset, firsts[tp]), ends[tp]) for tp, offset in wanted.items()}
