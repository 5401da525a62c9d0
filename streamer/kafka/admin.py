"""Group administration for replays: rewinding a stage's committed offsets.

Rewinding joins the group as its only member, commits the new positions and leaves; this works
on any Kafka-protocol broker (some, like the embedded one, refuse commits from non-members).
"""

from __future__ import annotations

import asyncio
import logging

from streamer.config import Settings
from streamer.kafka.clients import make_consumer

log = logging.getLogger(__name__)


class GroupBusyError(RuntimeError):
    pass


async def rewind_group(settings: Settings, group: str, topic: str, join_timeout: float = 60.0) -> dict[int, int]:
    """Set the group's committed offsets on `topic` to the beginning; returns partition -> offset.

    Whether other members are alive is learnt by joining: the group coordinator evicts departed
    members and splits partitions with live ones, so holding every partition proves we are alone.
    (Group descriptions are no proof: some brokers keep listing members that have left.)
    """
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
        await consumer.seek_to_beginning(*assignment)
        positions = {tp: await consumer.position(tp) for tp in assignment}
        await consumer.commit(positions)
        return {tp.partition: offset for tp, offset in sorted(positions.items())}
    finally:
        await consumer.stop()
