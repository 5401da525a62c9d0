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

from aiokafka.structs import ConsumerRecord
from pydantic import ValidationError

from streamer.config import Settings
from streamer.kafka.clients import TopicNames
from streamer.kafka.positions import FROM_BEGINNING
from streamer.kafka.reader import TopicReader
from streamer.records import Envelope, RecordData

log = logging.getLogger(__name__)

HOPELESS_EVERY = 0.5  # seconds between looks at whether a short table can still fill


class TopicTable:
    """Latest record per id of one topic, as (envelope, typed payload)."""

    def __init__(self, settings: Settings, name: str, model: type[RecordData]) -> None:
        self.name = name
        self.topic = TopicNames(settings.kafka.topic_prefix)(name)
        self.model = model
        self.rows: dict[str, tuple[Envelope, Any]] = {}
        self.changes = 0  # bumps on every update, so users can refresh derived state lazily
        self._settings = settings
        self._reader = TopicReader(settings)
        self._task: asyncio.Task[None] | None = None
        self._grew = asyncio.Condition()
        # Set by the runtime: why the table will stay empty (its writer dead-letters everything), or None.
        self.hopeless: Callable[[], str | None] = lambda: None
        self.empty_reason: str | None = None

    async def start(self) -> None:
        """Stored records, then every partition up to its current end; then follow in the background."""
        stored = await asyncio.to_thread(self._stored_rows)
        await self._reader.start()
        positions = await self._reader.positions(self.topic, FROM_BEGINNING)
        ends = await self._reader.ends(list(positions))
        self._reader.assign(positions)
        before = len(self.rows)
        on_topic: set[str] = set()
        async for record in self._reader.records(ends, timeout_ms=500):
            if (added := self._apply(record)) is not None:
                on_topic.add(added)
        if on_topic:
            await self._grown()
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
        from streamer.storage import store

        for raw in store.envelopes(self._settings.storage.store_dir, self.topic):
            try:
                envelope = Envelope.model_validate(raw)
                self.rows[envelope.id] = (envelope, self.model.model_validate(envelope.data))
            except ValidationError as exc:
                log.warning("table %s: skipping an unreadable stored record: %s", self.name, str(exc)[:200])
        if self.rows:
            self.changes += 1
        return set(self.rows)

    async def _follow(self) -> None:
        async for record in self._reader.records(timeout_ms=1000):
            if self._apply(record) is not None:
                await self._grown()

    def _apply(self, record: ConsumerRecord) -> str | None:
        """Take one record into the table; its id, or None if it is unreadable."""
        try:
            envelope = Envelope.from_bytes(record.value)
            self.rows[envelope.id] = (envelope, self.model.model_validate(envelope.data))
            return envelope.id
        except (ValueError, ValidationError) as exc:
            log.warning("table %s: skipping unreadable record at %s[%d]@%d: %s", self.name,
                        record.topic, record.partition, record.offset, str(exc)[:200])
            return None

    async def _grown(self) -> None:
        self.changes += 1
        async with self._grew:
            self._grew.notify_all()

    async def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until the table holds at least `count` records; False on timeout, or at once when
        it will stay short (`hopeless` says why; kept in `empty_reason`)."""
        async def enough() -> None:
            async with self._grew:
                await self._grew.wait_for(lambda: len(self.rows) >= count)

        async def hopeless() -> None:
            while (reason := self.hopeless()) is None:
                await asyncio.sleep(HOPELESS_EVERY)
            self.empty_reason = reason

        self.empty_reason = None
        if len(self.rows) >= count:
            return True
        waits = [asyncio.ensure_future(enough()), asyncio.ensure_future(hopeless())]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        return len(self.rows) >= count

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._reader.stop()
