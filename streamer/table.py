"""A topic read as a table: every worker reads all of it, from the beginning, and keeps it
up to date while running (no consumer group, so each process sees every partition)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Callable

from aiokafka import TopicPartition
from pydantic import ValidationError

from streamer.config import Settings
from streamer.kafka.clients import TopicNames, make_consumer, start_consumer
from streamer.kafka.end_offsets import exact_end_offsets
from streamer.records import Envelope, RecordData

log = logging.getLogger(__name__)


async def read_topic_range(settings: Settings, name: str, model: type[RecordData],
                           apply: Callable[[Envelope, Any], None],
                           start: dict[int, int] | None = None) -> dict[int, int]:
    """Feed every record of a topic from `start` (partition -> offset; default: the beginning)
    to its current end into `apply`; returns the end offsets it read up to."""
    topic = TopicNames(settings.kafka.topic_prefix)(name)
    consumer = await start_consumer(make_consumer(settings.kafka, group_id=None))
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not tps:
            return {}
        ends = await exact_end_offsets(consumer, tps)
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for tp in tps:
            if start and tp.partition in start:
                consumer.seek(tp, start[tp.partition])
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for records in batch.values():
                for record in records:
                    if record.offset >= ends[TopicPartition(record.topic, record.partition)]:
                        continue
                    envelope = Envelope.from_bytes(record.value)
                    apply(envelope, model.model_validate(envelope.data))
        return {tp.partition: ends[tp] for tp in tps}
    finally:
        await consumer.stop()


async def end_offsets(settings: Settings, name: str) -> dict[int, int]:
    topic = TopicNames(settings.kafka.topic_prefix)(name)
    consumer = await start_consumer(make_consumer(settings.kafka, group_id=None))
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        return {tp.partition: offset for tp, offset in (await exact_end_offsets(consumer, tps)).items()}
    finally:
        await consumer.stop()


class TopicTable:
    """Latest record per id of one topic, as (envelope, typed payload)."""

    def __init__(self, settings: Settings, name: str, model: type[RecordData]) -> None:
        self.name = name
        self.topic = TopicNames(settings.kafka.topic_prefix)(name)
        self.model = model
        self.rows: dict[str, tuple[Envelope, Any]] = {}
        self.changes = 0  # bumps on every update, so users can refresh derived state lazily
        self._settings = settings
        self._consumer = make_consumer(settings.kafka, group_id=None)
        self._task: asyncio.Task[None] | None = None
        self._grew = asyncio.Condition()

    async def start(self) -> None:
        """Assign every partition, read up to the current end, then follow in the background."""
        await start_consumer(self._consumer)
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        ends = await exact_end_offsets(self._consumer, tps)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        while any([await self._consumer.position(tp) < ends[tp] for tp in tps]):
            await self._read(timeout_ms=500)
        log.info("table %s: loaded %d records", self.name, len(self.rows))
        self._task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await self._read(timeout_ms=1000)

    async def _read(self, timeout_ms: int) -> None:
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        added = 0
        for records in batch.values():
            for record in records:
                try:
                    envelope = Envelope.from_bytes(record.value)
                    self.rows[envelope.id] = (envelope, self.model.model_validate(envelope.data))
                    added += 1
                except (ValueError, ValidationError) as exc:
                    log.warning("table %s: skipping unreadable record at %s[%d]@%d: %s", self.name,
                                record.topic, record.partition, record.offset, str(exc)[:200])
        if added:
            self.changes += 1
            async with self._grew:
                self._grew.notify_all()

    async def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until the table holds at least `count` records; False on timeout."""
        async def enough() -> None:
            async with self._grew:
                await self._grew.wait_for(lambda: len(self.rows) >= count)

        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(enough(), timeout)
        return len(self.rows) >= count

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._consumer.stop()
