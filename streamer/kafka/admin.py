"""Group administration for replays: rewinding a stage's committed offsets.

Rewinding joins the group as its only member, commits the new positions and leaves; this works
on any Kafka-protocol broker (some, like the embedded one, refuse commits from non-members).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import TopicPartition

from streamer.config import Settings
from streamer.kafka.clients import make_consumer, start_consumer, stop_consumer
from streamer.kafka.positions import FROM_BEGINNING, StartAt
from streamer.kafka.reader import positions_on

log = logging.getLogger(__name__)


class GroupBusyError(RuntimeError):
    pass


async def rewind_group(settings: Settings, group: str, topic: str, start: StartAt = FROM_BEGINNING,
                       join_timeout: float = 60.0) -> dict[int, int]:
    """Set the group's committed offsets on `topic` to `start` (explicit offsets: only on the
    partitions named); returns partition -> offset.

    Whether other members are alive is learnt by joining: the group coordinator evicts departed
    members and splits partitions with live ones, so holding every partition proves we are alone.
    (Group descriptions are no proof: some brokers keep listing members that have left.)
    """
    positions = await positions_on(settings, topic, start)  # bad positions fail before the group is touched
    consumer = make_consumer(settings.kafka, topic, group_id=group)
    await consumer.start()
    try:
        deadline = asyncio.get_running_loop().time() + join_timeout
        while not consumer.assignment():
            if asyncio.get_running_loop().time() > deadline:
                raise GroupBusyError(f"could not join group {group} within {join_timeout:.0f}s")
            await consumer.getmany(timeout_ms=200)
        assignment = consumer.assignment()
        total = len(consumer.partitions_for_topic(topic) or ())
        if len(assignment) < total:
            raise GroupBusyError(f"group {group} has other active members (we were given "
                                 f"{len(assignment)} of {total} partitions); nothing was changed")
        await consumer.commit(positions)
        return {tp.partition: offset for tp, offset in sorted(positions.items())}
    finally:
        await consumer.stop()


async def committed_offsets(settings: Settings, group: str, topic: str) -> dict[int, int | None]:
    """The group's committed offset per partition of `topic` (None: nothing committed), read
    without joining the group, so its members are not disturbed."""
    consumer = make_consumer(settings.kafka, group_id=group)  # never subscribes, so never joins
    # start_consumer: with every topic's metadata (a bare start knows none on Kafka, so no partitions).
    await start_consumer(consumer)
    try:
        partitions = sorted(consumer.partitions_for_topic(topic) or ())
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in partitions}
    finally:
        await stop_consumer(consumer)
