"""Reading topics as an observer: assigned partitions, no consumer group, no commits.

Nothing here joins a group, so a reader never takes partitions from a stage's workers and
never moves their committed offsets, however long it runs. Every reader of the project goes
through `TopicReader` — the changelog reads of stateful stages, tables, `tap`, `dlq`, `status`,
the feeds' checks and start positions — so "partitions → exact ends → assign and seek → read
up to the ends, or follow" is written once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, Callable, Self

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from streamer.config import Settings
from streamer.kafka.clients import TopicNames, make_consumer, start_consumer, stop_consumer
from streamer.kafka.end_offsets import exact_end_offsets
from streamer.kafka.positions import FROM_BEGINNING, StartAt, resolve
from streamer.records import Envelope, RecordData


class UnknownTopicError(LookupError):
    pass


class TopicReader:
    """One group-less consumer; use as `async with TopicReader(settings) as reader:`."""

    def __init__(self, settings: Settings, **consumer_options: Any) -> None:
        self.consumer: AIOKafkaConsumer = make_consumer(settings.kafka, group_id=None, **consumer_options)
        self.assigned: dict[TopicPartition, int] = {}  # partition -> where reading started

    async def start(self) -> Self:
        await start_consumer(self.consumer)
        return self

    async def stop(self) -> None:
        await stop_consumer(self.consumer)

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def refresh(self) -> None:
        """Learn topics created since the reader started."""
        await self.consumer._client.force_metadata_update()  # noqa: SLF001 - no public way to ask

    async def beginnings(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        return await self.consumer.beginning_offsets(tps) if tps else {}

    def partitions(self, topic: str) -> list[TopicPartition]:
        """Every partition of `topic` (full name); empty if it does not exist."""
        return [TopicPartition(topic, p) for p in sorted(self.consumer.partitions_for_topic(topic) or ())]

    async def ends(self, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
        """Exact end offsets (end_offsets.py: some brokers report less)."""
        return await exact_end_offsets(self.consumer, tps) if tps else {}

    async def positions(self, topic: str, start: StartAt) -> dict[TopicPartition, int]:
        """Offsets `start` means on `topic`'s partitions (see positions.resolve)."""
        tps = self.partitions(topic)
        return await resolve(self.consumer, tps, start) if tps else {}

    def assign(self, positions: dict[TopicPartition, int]) -> None:
        """Read these partitions from these offsets; ones assigned before keep their position."""
        if not positions:
            return  # aiokafka's assign() resets every partition's position: repeated samples re-read (status)
        kept = {tp: off for tp, off in self.assigned.items() if tp not in positions}
        self.assigned = {**kept, **positions}
        self.consumer.assign(list(self.assigned))
        for tp, offset in positions.items():
            self.consumer.seek(tp, offset)

    async def records(self, ends: dict[TopicPartition, int] | None = None, *, stop: asyncio.Event | None = None,
                      timeout_ms: int = 300, max_records: int | None = None) -> AsyncIterator[ConsumerRecord]:
        """Records of the assigned partitions, interleaved: up to `ends` (each partition's end
        when reading began), or without `ends` on as they arrive until `stop` is set."""
        while stop is None or not stop.is_set():
            if ends is not None and not await self._behind(ends):
                return
            batch = await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            for tp, records in sorted(batch.items()):
                if ends is not None and tp not in ends:
                    continue  # assigned, but not part of this read (find_on_topics keeps earlier topics)
                for record in records:
                    if ends is not None and record.offset >= ends[tp]:
                        # Fetched past this read's end: back to the end, so the next read of a
                        # reader kept between reads (status, the console) gets these records.
                        self.consumer.seek(tp, ends[tp])
                        break
                    yield record

    async def _behind(self, ends: dict[TopicPartition, int]) -> bool:
        return any([await self.consumer.position(tp) < end for tp, end in ends.items() if tp in self.assigned])


async def observe(settings: Settings, topic: str, start: StartAt, *, follow: bool,
                  stop: asyncio.Event) -> AsyncIterator[ConsumerRecord]:
    """Records of `topic` (full name) from `start`: up to the end each partition had when reading
    began, or, with `follow`, on as they arrive until `stop` is set. Partitions are interleaved."""
    async with TopicReader(settings, fetch_max_wait_ms=100) as reader:
        if not reader.partitions(topic):
            raise UnknownTopicError(f"topic {topic} does not exist yet (the first `feed` or `run` creates it)")
        positions = await reader.positions(topic, start)
        ends = None if follow else await reader.ends(list(positions))
        reader.assign(positions)
        records = reader.records(ends, stop=stop)
        async with contextlib.aclosing(records):
            async for record in records:
                yield record


async def positions_on(settings: Settings, topic: str, start: StartAt) -> dict[TopicPartition, int]:
    """The offsets `start` means on every partition of `topic` (full name); empty if it does not exist."""
    async with TopicReader(settings) as reader:
        return await reader.positions(topic, start)


async def read_changelog(settings: Settings, name: str, model: type[RecordData],
                         apply: Callable[[Envelope, Any], None],
                         start: dict[int, int] | None = None) -> dict[int, int]:
    """Feed every record of a topic (unprefixed `name`) from `start` (partition -> offset;
    default: the beginning) to its current end into `apply`; returns the end offsets read up to."""
    topic = TopicNames(settings.kafka.topic_prefix)(name)
    async with TopicReader(settings) as reader:
        firsts = await reader.positions(topic, FROM_BEGINNING)
        ends = await reader.ends(list(firsts))
        reader.assign({tp: (start or {}).get(tp.partition, first) for tp, first in firsts.items()})
        async for record in reader.records(ends, timeout_ms=500, max_records=5000):
            envelope = Envelope.from_bytes(record.value)
            apply(envelope, model.model_validate(envelope.data))
        return {tp.partition: end for tp, end in ends.items()}


async def end_offsets(settings: Settings, name: str) -> dict[int, int]:
    """Partition -> exact end offset of a topic (unprefixed `name`); empty if it does not exist."""
    return (await ends_of_topics(settings, [name]))[name]


async def ends_of_topics(settings: Settings, names: list[str]) -> dict[str, dict[int, int]]:
    """`end_offsets` of several topics with one reader (one set of connections, one round of requests)."""
    topic = TopicNames(settings.kafka.topic_prefix)
    async with TopicReader(settings) as reader:
        ends = await reader.ends([tp for name in names for tp in reader.partitions(topic(name))])
    return {name: {tp.partition: end for tp, end in ends.items() if tp.topic == topic(name)} for name in names}


async def first_value(settings: Settings, topic: str, timeout: float = 5.0) -> bytes | None:
    """The value of the record at offset 0 of partition 0 of `topic` (full name), if there is one."""
    tp = TopicPartition(topic, 0)
    async with TopicReader(settings) as reader:
        if tp not in reader.partitions(topic) or not (await reader.ends([tp]))[tp]:
            return None
        reader.assign({tp: 0})
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(timeout):
                async for record in reader.records({tp: 1}):
                    return record.value
        return None
