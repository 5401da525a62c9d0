"""Reading a topic as an observer: assigned partitions, no consumer group, no commits.

Nothing here joins a group, so a reader never takes partitions from a stage's workers and
never moves their committed offsets, however long it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from streamer.config import Settings
from streamer.kafka.clients import make_consumer, start_consumer
from streamer.kafka.end_offsets import exact_end_offsets
from streamer.kafka.positions import StartAt, resolve


class UnknownTopicError(LookupError):
    pass


async def observe(settings: Settings, topic: str, start: StartAt, *, follow: bool,
                  stop: asyncio.Event) -> AsyncIterator[ConsumerRecord]:
    """Records of `topic` (full name) from `start`: up to the end each partition had when reading
    began, or, with `follow`, on as they arrive until `stop` is set. Partitions are interleaved."""
    consumer = await start_consumer(make_consumer(settings.kafka, group_id=None, fetch_max_wait_ms=100))
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise UnknownTopicError(f"topic {topic} does not exist yet (the first `feed` or `run` creates it)")
        positions = await resolve(consumer, [TopicPartition(topic, p) for p in sorted(partitions)], start)
        ends = None if follow else await exact_end_offsets(consumer, list(positions))
        consumer.assign(list(positions))
        for tp, offset in positions.items():
            consumer.seek(tp, offset)
        while not stop.is_set():
            if ends is not None and all([await consumer.position(tp) >= ends[tp] for tp in positions]):
                return
            batch = await consumer.getmany(timeout_ms=300)
            for tp, records in sorted(batch.items()):
                for record in records:
                    if ends is None or record.offset < ends[tp]:
                        yield record
    finally:
        await consumer.stop()
