"""The batch lane's records on Kafka: the compacted `batches` topic every worker reads and follows.

`BatchRecords` (streamer.llm.batch) is the index the lane asks — SQLite in the data dir, a cache.
The truth is this topic: every change of a batch record (a batch row, a request's membership or
outcome) is produced here, keyed by what it describes, and acknowledged *before* the lane goes on
(before the batch file is uploaded, most of all). Each worker loads the whole topic into its index
when it starts and follows it while it runs. So a worker on another machine — another data dir —
that is handed a partition whose records are in another worker's batches, at a restart or in a
rebalance mid-run, finds those batches and waits for them instead of paying for them again.

Compaction keeps the last change per key: a batch's newest row, each request's outcome. A change
carries the whole row and a batch row its version, so applying one twice, or an older one after a
newer, changes nothing (a worker also reads back its own changes). Open batches the local index
holds but the topic does not (a broker that came back empty) are produced again at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, ClassVar

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from streamer.config import Settings
from streamer.kafka.clients import TopicNames
from streamer.kafka.positions import FROM_BEGINNING
from streamer.kafka.reader import TopicReader
from streamer.records import Envelope, RecordData

log = logging.getLogger(__name__)

TOPIC = "batches"
PUBLISH_TIMEOUT = 30.0  # seconds a change may take to be acknowledged; beyond it the lane does not go on
SYNC_TIMEOUT = 15.0  # seconds to read the topic up to its end before deciding what to submit


class BatchRecordChange(RecordData):
    """One batch's row, as `BatchRecords` holds it (the version orders changes of the same batch)."""

    kind: ClassVar[str] = "batch_record"
    row: dict[str, Any]


class BatchRequestChange(RecordData):
    """One request of a batch: its membership, then its outcome (the answer as the provider's JSON text)."""

    kind: ClassVar[str] = "batch_request"
    custom_id: str
    local_id: str
    outcome: str | None = None
    result: str | None = None
    error: str | None = None


def batch_key(local_id: str) -> str:
    return f"batch:{local_id}"


def request_key(local_id: str, custom_id: str) -> str:
    return f"request:{local_id}:{custom_id}"


class BatchLog:
    """Produces the index's changes to the topic and applies the topic's changes to the index."""

    def __init__(self, settings: Settings, records: Any, producer: AIOKafkaProducer) -> None:
        self.records = records  # streamer.llm.batch.BatchRecords
        self.settings = settings
        self.topic = TopicNames(settings.kafka.topic_prefix)(TOPIC)
        self.producer = producer
        self.reader = TopicReader(settings)
        self._tp = TopicPartition(self.topic, 0)
        self._outbox: list[tuple[str, bytes]] = []
        self._applied = -1  # offset of the last record applied
        self._moved = asyncio.Condition()
        self._follow: asyncio.Task[None] | None = None
        self._syncing: asyncio.Future[None] | None = None

    # Changes out -------------------------------------------------------------------------------
    def publish_batch(self, row: dict[str, Any]) -> None:
        """Queue a batch's row as it now stands; `flush` produces the queue and waits for the broker."""
        local_id = str(row["local_id"])
        self._queue(batch_key(local_id), BatchRecordChange(row=row), local_id)

    def publish_request(self, custom_id: str, local_id: str, outcome: str | None, result: bytes | None,
                        error: str | None) -> None:
        """Queue a request's row as it now stands (the answer as the provider's JSON text)."""
        self._queue(request_key(local_id, custom_id), BatchRequestChange(
            custom_id=custom_id, local_id=local_id, outcome=outcome,
            result=bytes(result).decode() if result is not None else None, error=error), local_id)

    def _queue(self, key: str, data: RecordData, root: str) -> None:
        envelope = Envelope(id=key, kind=data.kind, root_id=root, data=data.model_dump(mode="json"))
        self._outbox.append((key, envelope.to_bytes()))

    async def flush(self) -> None:
        outbox, self._outbox = self._outbox, []
        if not outbox:
            return
        try:
            sent = [await self.producer.send(self.topic, value, key=key.encode(), partition=0) for key, value in outbox]
            await asyncio.wait_for(asyncio.gather(*sent), PUBLISH_TIMEOUT)
        except BaseException:
            self._outbox[:0] = outbox  # produced again with the next flush (the same rows: harmless twice)
            raise

    # Changes in --------------------------------------------------------------------------------
    async def start(self) -> None:
        """The whole topic into the index, the open batches it lacks produced again; then follow it."""
        await self.reader.start()
        seen, applied = await self.load()
        missing = [row for row in self.records.batches(open_only=True) if row.local_id not in seen]
        for row in missing:
            self.records.republish(row.local_id)
        if missing:
            await self.flush()
        log.info("batch records: %d changes from %s (%d batches, %d open)%s", applied, self.topic, len(seen),
                 len(self.records.batches(open_only=True)),
                 f"; {len(missing)} open batches of the local records were not on it: produced again" if missing else "")
        self._follow = asyncio.create_task(self._follow_topic(), name="batch-records-follow")

    async def load(self) -> tuple[set[str], int]:
        """Apply the topic up to its current end (the reader started); the batches seen, the changes applied."""
        await self.reader.refresh()
        positions = await self.reader.positions(self.topic, FROM_BEGINNING)
        ends = await self.reader.ends(list(positions))
        self.reader.assign(positions)
        seen: set[str] = set()
        applied = 0
        async for record in self.reader.records(ends, timeout_ms=500, max_records=5000):
            if (local_id := self._apply(record)) is not None:
                seen.add(local_id)
                applied += 1
        return seen, applied

    async def _follow_topic(self) -> None:
        while True:
            try:
                async for record in self.reader.records(timeout_ms=1000):
                    self._apply(record)
                    async with self._moved:
                        self._moved.notify_all()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - the broker may be away a while: read on when it is back
                log.warning("batch records: following %s failed (%s); reading on", self.topic, exc)
                await asyncio.sleep(1.0)

    def _apply(self, record: Any) -> str | None:
        """One change into the index; the batch it concerns (None: unreadable, skipped)."""
        self._applied = max(self._applied, record.offset)
        try:
            envelope = Envelope.from_bytes(record.value)
            if envelope.kind == BatchRecordChange.kind:
                row = BatchRecordChange.model_validate(envelope.data).row
                self.records.apply_batch(row)
                return str(row["local_id"])
            if envelope.kind == BatchRequestChange.kind:
                change = BatchRequestChange.model_validate(envelope.data)
                self.records.apply_request(change.custom_id, change.local_id, change.outcome,
                                           change.result.encode() if change.result is not None else None, change.error)
                return change.local_id
        except (ValueError, ValidationError, KeyError, TypeError) as exc:
            log.warning("batch records: skipping an unreadable change at %s@%d: %s", self.topic, record.offset,
                        str(exc)[:200])
        return None

    async def sync(self) -> None:
        """Wait until every change produced so far (by any worker) is in the index. Callers at the same
        moment share one look at the topic's end."""
        if self._syncing is None or self._syncing.done():
            self._syncing = asyncio.ensure_future(self._sync())
        await asyncio.shield(self._syncing)

    async def _sync(self) -> None:
        async def end_now() -> int:
            # A reader of its own: finding a partition's end moves the reader's assignment (end_offsets.py).
            async with TopicReader(self.settings) as reader:
                return (await reader.ends([self._tp])).get(self._tp, 0)

        end = await asyncio.wait_for(end_now(), SYNC_TIMEOUT)
        async with self._moved:
            await asyncio.wait_for(self._moved.wait_for(lambda: self._applied >= end - 1), SYNC_TIMEOUT)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.flush()
        if self._follow is not None:
            self._follow.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
        await self.reader.stop()


async def read_batch_records(settings: Settings, records: Any) -> int:
    """Every worker's batch records, from the topic into `records` (for `synthstream batch` on any machine);
    the changes applied."""
    log = BatchLog(settings, records, producer=None)  # type: ignore[arg-type] - reads only
    await log.reader.start()
    try:
        return (await log.load())[1]
    finally:
        await log.reader.stop()
