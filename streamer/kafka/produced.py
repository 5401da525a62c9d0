"""Where this process's own produced records end, per partition, for a few seconds.

A consumer learns a partition's end from fetch responses, which lag behind by up to a fetch
wait; a stage that just produced a record for the next stage in the same process knows better.
Idle detection (`GroupMember.caught_up`) takes the larger of the two, so `run --until-idle`
needs no long grace period to be sure a record it produced itself has been read. A produced end
counts only for FRESH seconds: by then fetches have long reported it, and an end that a broker
never reports (whatever the reason) must not keep a finite run from ending.
"""

from __future__ import annotations

import time
from typing import Any

from aiokafka import TopicPartition

FRESH = 5.0  # seconds; fetches report a new end within one fetch wait (100 ms by default)

_ENDS: dict[TopicPartition, tuple[int, float]] = {}


def note(metadata: Any) -> None:
    """Record a send's RecordMetadata (topic, partition, offset)."""
    tp = TopicPartition(metadata.topic, metadata.partition)
    if metadata.offset + 1 > _ENDS.get(tp, (0, 0.0))[0]:
        _ENDS[tp] = (metadata.offset + 1, time.monotonic())


def end(tp: TopicPartition) -> int:
    offset, noted = _ENDS.get(tp, (0, 0.0))
    return offset if time.monotonic() - noted < FRESH else 0
