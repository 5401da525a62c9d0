"""Group administration for replays: who is in a group, and rewinding its committed offsets.

Rewinding joins the group as its only member, commits the new positions and leaves; this works
on any Kafka-protocol broker (some, like the embedded one, refuse commits from non-members).
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.admin import AIOKafkaAdminClient

from streamer.config import Settings
from streamer.kafka.clients import client_options, make_consumer

log = logging.getLogger(__name__)


class GroupBusyError(RuntimeError):
    pass


async def group_members(settings: Settings, group: str) -> list[str]:
    admin = AIOKafkaAdminClient(**client_options(settings.kafka))
    await admin.start()
    try:
        described = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    members: list[str] = []
    for response in described:
        for entry in response.groups:
            members += [m[0] for m in entry[5]]  # (member_id, client_id, host, metadata, assignment)
    return members


async def rewind_group(settings: Settings, group: str, topic: str, join_timeout: float = 60.0) -> dict[int, int]:
    """Set the group's committed offsets on `topic` to the beginning; returns partition -> offset."""
    if members := await group_members(settings, group):
        raise GroupBusyError(f"group {group} has {len(members)} active member(s)")
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
            raise GroupBusyError(f"group {group}: another member joined during the rewind")
        await consumer.seek_to_beginning(*assignment)
        positions = {tp: await consumer.position(tp) for tp in assignment}
        await consumer.commit(positions)
        return {tp.partition: offset for tp, offset in sorted(positions.items())}
    finally:
        await consumer.stop()
