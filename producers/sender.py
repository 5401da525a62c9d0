"""Sending envelopes to a topic from a feeder."""

from __future__ import annotations

import asyncio

from streamer.config import Settings
from streamer.kafka.clients import make_producer
from streamer.records import Envelope


class RecordSender:
    """Sends envelopes to one topic (key = root id); a record counts as sent once acknowledged."""

    def __init__(self, settings: Settings, topic: str) -> None:
        self.topic = topic
        self.producer = make_producer(settings.kafka)
        self.pending: list[asyncio.Future] = []

    async def __aenter__(self) -> RecordSender:
        await self.producer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.flush()
        finally:
            await self.producer.stop()

    async def send(self, record: Envelope, topic: str | None = None) -> None:
        self.pending.append(await self.producer.send(topic or self.topic, record.to_bytes(),
                                                     key=record.root_id.encode()))
        if len(self.pending) >= 1000:
            await self.flush()

    async def flush(self) -> None:
        await asyncio.gather(*self.pending)
        self.pending.clear()
