"""`synthstream tap`: print a topic's records, live, without joining any consumer group.

The tap reads assigned partitions (streamer.kafka.reader), so stage workers keep every
partition and their committed offsets never move because someone is watching.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from aiokafka.structs import ConsumerRecord

from streamer.config import Settings
from consumers import TOPICS
from streamer.kafka.clients import TopicNames
from streamer.kafka.positions import StartAt
from streamer.kafka.reader import observe
from streamer.ops.query import Where, decode_value, matches_all, short_text


@dataclass
class TapRequest:
    topic: str  # unprefixed
    start: StartAt
    follow: bool = False
    wheres: list[Where] = field(default_factory=list)
    as_json: bool = False
    limit: int | None = None


def known_topic(name: str, prefix: str) -> str:
    """The unprefixed pipeline topic a user named (with or without the prefix)."""
    bare = TopicNames(prefix).unprefixed(name)
    if bare not in TOPICS:
        raise ValueError(f"unknown topic {name!r}; topics: {', '.join(TOPICS)}")
    return bare


async def tap(settings: Settings, request: TapRequest, stop: asyncio.Event, out: BinaryIO = sys.stdout.buffer) -> int:
    """Write matching records to `out` as they are read; returns how many were shown."""
    topic = TopicNames(settings.kafka.topic_prefix)(request.topic)
    shown = 0
    records = observe(settings, topic, request.start, follow=request.follow, stop=stop)
    async with contextlib.aclosing(records):
        async for record in records:
            envelope = decode_value(record.value)
            if request.wheres and not (isinstance(envelope, dict) and matches_all(envelope, request.wheres)):
                continue
            if request.as_json and envelope is None:
                print(f"synthstream: skipping {record.topic}[{record.partition}]@{record.offset}: not JSON",
                      file=sys.stderr)
                continue
            out.write(_render(record, envelope, request.as_json))
            out.flush()  # live: a line appears when its record does, also through a pipe
            shown += 1
            if request.limit and shown >= request.limit:
                break
    return shown


def _render(record: ConsumerRecord, envelope: Any, as_json: bool) -> bytes:
    if as_json:  # the value exactly as it is on the topic: one JSON document per line
        return record.value.replace(b"\n", b" ") + b"\n"
    where = f"{record.topic}[{record.partition}]@{record.offset}"
    if not isinstance(envelope, dict):
        raw = (record.value or b"").decode("utf-8", "replace")[:80]
        return f"{where}  (not a synthstream record) {raw!r}\n".encode()
    method = f" [{envelope['method']}]" if envelope.get("method") else ""
    return f"{where}  {envelope.get('id', '?')}  {envelope.get('kind', '?'):<14}{method} {short_text(envelope)}\n".encode()
