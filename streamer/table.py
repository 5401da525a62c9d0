"""A topic read as a table: every worker reads all of it, from the beginning, and keeps it
up to date while running (no consumer group, so each process sees every partition).

Where the sink stores the topic (the seed table's `seeds.attributed`), the stored records come
first: a broker that lost its topics (the embedded one keeps nothing across restarts) still
leaves the table whole on the machine that holds the store."""

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
        """Stored records, then every partition up to its current end; then follow in the background."""
        stored = await asyncio.to_thread(self._stored_rows)
        await start_consumer(self._consumer)
        partitions = self._consumer.partitions_for_topic(self.topic) or set()
        tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
        ends = await exact_end_offsets(self._consumer, tps)
        self._consumer.assign(tps)
        await self._consumer.seek_to_beginning(*tps)
        before = len(self.rows)
        on_topic: set[str] = set()
        while any([await self._consumer.position(tp) < ends[tp] for tp in tps]):
            on_topic.update(await self._read(timeout_ms=500))
        if stored:
            missing = len(stored - on_topic)
            log.info("table %s: loaded %d records (%d from the store, %d more from the topic)%s", self.name,
                     len(self.rows), before, len(self.rows) - before,
                     f"; {missing} stored records are not on the topic (a restarted broker?): used from the store"
                     if missing else "")
        else:
            log.info("table %s: loaded %d records", self.name, len(self.rows))
        self._task = asyncio.create_task(self._follow())

    def _stored_rows(self) -> set[str]:
        """Load the records the sink stored for this topic; returns their ids."""
        from streamer.storage.export import iter_envelopes

        store = self._settings.storage.store_dir
        if not (store / self.topic).is_dir():
            return set()
        for raw in iter_envelopes(store, self.topic):
            try:
                envelope = Envelope.model_validate(raw)
                self.rows[envelope.id] = (envelope, self.model.model_validate(envelope.data))
            except ValidationError as exc:
                log.warning("table %s: skipping an unreadable stored record: %s", self.name, str(exc)[:200])
        if self.rows:
            self.changes += 1
        return set(self.rows)

    async def _follow(self) -> None:
        while True:
            await self._read(timeout_ms=1000)

    async def _read(self, timeout_ms: int) -> list[str]:
        """Apply the next fetched records; returns their ids."""
        batch = await self._consumer.getmany(timeout_ms=timeout_ms)
        added: list[str] = []
        for records in batch.values():
            for record in records:
                try:
                    envelope = Envelope.from_bytes(record.value)
                    self.rows[envelope.id] = (envelope, self.model.model_validate(envelope.data))
                    added.append(envelope.id)
                except (ValueError, ValidationError) as exc:
                    log.warning("table %s: skipping unreadable record at %s[%d]@%d: %s", self.name,
                                record.topic, record.partition, record.offset, str(exc)[:200])
        if added:
            self.changes += 1
            async with self._grew:
                self._grew.notify_all()
        return added

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
