"""Topics for the console: a page of records (newest first, or from a position), and any record by id.

Everything reads through `streamer.kafka.reader.TopicReader` (assigned partitions, no group), as
`tap` does, so watching never moves a stage's offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from streamer.config import Settings
from consumers import PIPELINE, TOPICS
from consumers.topology import generated_topics
from streamer.kafka.clients import TopicNames
from streamer.kafka.positions import StartAt
from streamer.kafka.reader import TopicReader, UnknownTopicError
from streamer.ops.query import Where, decode_value, matches_all, short_text
from streamer.storage import store

READ_TIMEOUT_S = 20.0  # one page of the browser; a huge topic yields what was read by then
FIND_TIMEOUT_S = 30.0  # looking for one id through every topic
SIMULATED_TOPICS = generated_topics(PIPELINE)


@dataclass
class Browse:
    """One page of the topic browser: where to start, what to keep, how many."""

    topic: str  # unprefixed
    start: StartAt | None = None  # None: newest first
    wheres: list[Where] = field(default_factory=list)
    text: str = ""
    limit: int = 50
    newest_window: int = 2000  # records per partition looked at, newest first


def row_of(record: ConsumerRecord, envelope: Any) -> dict[str, Any]:
    """One line of the browser: where, what, and the record itself for the JSON view."""
    where = {"partition": record.partition, "offset": record.offset, "timestamp": record.timestamp}
    if not isinstance(envelope, dict):
        raw = (record.value or b"").decode("utf-8", "replace")[:200]
        return {**where, "id": None, "kind": None, "text": f"(not a synthstream record) {raw}", "envelope": raw}
    return {**where, "id": envelope.get("id"), "kind": envelope.get("kind"), "method": envelope.get("method"),
            "simulated": bool(envelope.get("simulated")), "text": short_text(envelope, width=140),
            "envelope": envelope}


def _wanted(request: Browse, record: ConsumerRecord, envelope: Any) -> bool:
    if request.wheres and not (isinstance(envelope, dict) and matches_all(envelope, request.wheres)):
        return False
    return not request.text or request.text.casefold() in (record.value or b"").decode("utf-8", "replace").casefold()


async def browse(settings: Settings, request: Browse) -> dict[str, Any]:
    """Matching records of one topic: the newest `limit` among the last `newest_window` of each
    partition, or the first `limit` from `start`. Says how many records were looked at."""
    topic = TopicNames(settings.kafka.topic_prefix)(request.topic)
    rows: list[dict[str, Any]] = []
    scanned = 0
    async with TopicReader(settings, fetch_max_wait_ms=100) as reader:
        tps = reader.partitions(topic)
        if not tps:
            raise UnknownTopicError(f"topic {topic} does not exist yet (the first `feed` or `run` creates it)")
        ends = await reader.ends(tps)
        if request.start is None:
            begins = await reader.beginnings(tps)
            reader.assign({tp: max(begins[tp], ends[tp] - request.newest_window) for tp in tps})
        else:
            reader.assign(await reader.positions(topic, request.start))
        with contextlib.suppress(asyncio.TimeoutError):
            async with asyncio.timeout(READ_TIMEOUT_S):
                records = reader.records(ends, max_records=2000)
                async with contextlib.aclosing(records):
                    async for record in records:
                        scanned += 1
                        envelope = decode_value(record.value)
                        if _wanted(request, record, envelope):
                            rows.append(row_of(record, envelope))
                            if request.start is not None and len(rows) >= request.limit:
                                break
    if request.start is None:
        rows.sort(key=lambda r: (r["timestamp"], r["offset"]), reverse=True)
    return {"topic": request.topic, "rows": rows[: request.limit], "scanned": scanned,
            "ends": {tp.partition: end for tp, end in ends.items()}}


async def any_simulated(settings: Settings) -> bool:
    """Whether the newest records of the generated topics say they come from the simulator."""
    for name in SIMULATED_TOPICS:
        with contextlib.suppress(UnknownTopicError):
            page = await browse(settings, Browse(name, limit=5, newest_window=5))
            if any(row.get("simulated") for row in page["rows"]):
                return True
    return False


# Any record by id -------------------------------------------------------------------------------
def stored_topics(settings: Settings) -> list[str]:
    """Unprefixed names of the topics the store has files for."""
    return store.topics(settings.storage.store_dir, settings.kafka.topic_prefix)


def stored(settings: Settings, topic: str) -> Iterator[dict[str, Any]]:
    """Envelopes of one stored topic (unprefixed), one per id; nothing if the store lacks it."""
    yield from store.envelopes(settings.storage.store_dir, TopicNames(settings.kafka.topic_prefix)(topic))


def find_stored(settings: Settings, index: store.IdIndex, record_id: str) -> dict[str, Any] | None:
    found = index.find(record_id, settings.kafka.topic_prefix)
    return None if found is None else {"found_in": "store", "topic": found[0], "envelope": found[1]}


async def find_on_topics(settings: Settings, record_id: str, topics: tuple[str, ...] = TOPICS
                         ) -> dict[str, Any] | None:
    """The first record with this id on any topic (read from each topic's beginning)."""
    names, needle = TopicNames(settings.kafka.topic_prefix), f'"id":"{record_id}"'.encode()
    # Ends come from their own client: finding exact ends assigns and then releases every partition
    # of the client it uses (kafka.end_offsets), which would drop the reader's positions.
    async with TopicReader(settings) as offsets, TopicReader(settings, fetch_max_wait_ms=100) as reader:
        async with asyncio.timeout(FIND_TIMEOUT_S):
            for topic in topics:
                tps = offsets.partitions(names(topic))
                if not tps:
                    continue
                ends = await offsets.ends(tps)
                # Partitions of topics searched before stay assigned but are not read: `ends` names these.
                reader.assign(await offsets.beginnings(tps))
                found = await _first_with(reader, ends, needle, record_id)
                if found is not None:
                    record, envelope = found
                    return {"found_in": "topic", "topic": topic, "partition": record.partition,
                            "offset": record.offset, "envelope": envelope}
    return None


async def _first_with(reader: TopicReader, ends: dict[TopicPartition, int], needle: bytes, record_id: str
                      ) -> tuple[ConsumerRecord, dict[str, Any]] | None:
    records = reader.records(ends, max_records=5000)
    async with contextlib.aclosing(records):
        async for record in records:
            if record.value and needle in record.value:  # cheap before parsing
                envelope = decode_value(record.value)
                if isinstance(envelope, dict) and envelope.get("id") == record_id:
                    return record, envelope
    return None


async def find_record(settings: Settings, index: store.IdIndex, record_id: str) -> dict[str, Any] | None:
    """A record by id: the store first (what was kept; through its id index), then the topics."""
    found = await asyncio.to_thread(find_stored, settings, index, record_id)
    if found is None:
        with contextlib.suppress(asyncio.TimeoutError):
            found = await find_on_topics(settings, record_id)
    return found
