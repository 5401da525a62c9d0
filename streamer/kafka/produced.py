"""Where this process's own produced records end, per partition.

A consumer learns a partition's end from fetch responses, which lag behind by up to a fetch
wait; a stage that just produced a record for the next stage in the same process knows better.
Idle detection (`GroupMember.caught_up`) takes the larger of the two, so `run --until-idle`
needs no long grace period to be sure a record it produced itself has been read.
"""

from __future__ import annotations

from typing import Any

from aiokafka import TopicPartition

_ENDS: dict[TopicPartition, int] = {}


def note(metadata: Any) -> None:
    """Record a send's RecordMetadata (topic, partition, offset)."""
    tp = TopicPartition(metadata.topic, metadata.partition)
    if metadata.offset + 1 > _ENDS.get(tp, 0):
        _ENDS[tp] = metadata.offset + 1


def end(tp: TopicPartition) -> int:
    return _ENDS.get(tp, 0)
