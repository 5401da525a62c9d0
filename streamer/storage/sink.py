"""The storage sink: final topics → Parquet files, committed only once the file is durable.

A file is named by (topic, topic incarnation, partition, first offset). After a crash the group
resumes at the first uncommitted offset, which is the first offset of the one file that may have
been written but not committed, so the redelivered batch rewrites that same file instead of
adding rows. Export additionally keeps one row per record id.

The incarnation (streamer.kafka.incarnation) changes when a topic is created again — every topic
of a restarted embedded broker starts again at offset 0 — so records of a new incarnation go to
new files and never replace stored ones. As a last line of defence a file is only ever replaced
by the same records: a batch that would put other records under an existing name is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from streamer import metrics
from streamer.config import Settings
from streamer.kafka.clients import TopicNames
from streamer.kafka.group import GroupMember
from streamer.kafka.health import BrokerWatch
from streamer.kafka.incarnation import SeenIncarnations, TopicIdentity
from streamer.records import stable_hash
from streamer.storage.store import file_name

log = logging.getLogger(__name__)

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("root_id", pa.string()), ("kind", pa.string()), ("method", pa.string()),
    ("simulated", pa.bool_()), ("created_at", pa.float64()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("envelope", pa.string()),
])


class StoreConflictError(RuntimeError):
    """A stored file would be replaced by other records; nothing was written."""


def check_replaceable(path: Path, table: pa.Table) -> None:
    """A file may only be rewritten by a redelivery of its own records: at every offset both
    hold, the same id. Anything else means the offsets were reused, and the file is kept."""
    if not path.exists():
        return
    stored = pq.read_table(path, columns=["offset", "id"]).to_pydict()
    incoming = dict(zip(table.column("offset").to_pylist(), table.column("id").to_pylist(), strict=True))
    for offset, stored_id in zip(stored["offset"], stored["id"], strict=True):
        if offset in incoming and incoming[offset] != stored_id:
            raise StoreConflictError(
                f"refusing to overwrite {path}: it holds other records (offset {offset}: stored {stored_id}, "
                f"incoming {incoming[offset]}), so this topic's offsets were reused without a new incarnation "
                f"id. Nothing was written or committed; move the file aside or use another storage.data_dir")


def write_parquet_atomic(path: Path, table: pa.Table) -> None:
    """Write next to the target, fsync, rename over it, fsync the directory: all or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    pq.write_table(table, tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_new_or_same(path: Path, table: pa.Table) -> None:
    check_replaceable(path, table)
    write_parquet_atomic(path, table)


def _row(topic: str, record: ConsumerRecord) -> dict[str, object]:
    try:
        env = orjson.loads(record.value)
        if not isinstance(env, dict):
            raise ValueError("not an object")
    except ValueError:
        # Kept, not dropped: storage must account for everything that reached a final topic.
        env = {}
    text = record.value.decode("utf-8", "replace")
    return {
        "id": env.get("id") or stable_hash(topic, str(record.partition), str(record.offset)),
        "root_id": env.get("root_id"), "kind": env.get("kind"), "method": env.get("method"),
        "simulated": bool(env.get("simulated", False)), "created_at": env.get("created_at"),
        "topic": topic, "partition": record.partition, "offset": record.offset, "envelope": text,
    }


def _write_records(topic: str, records: list[ConsumerRecord], path: Path) -> None:
    write_new_or_same(path, pa.Table.from_pylist([_row(topic, r) for r in records], schema=ROW_SCHEMA))


class ParquetSink(GroupMember):
    def __init__(self, settings: Settings, stop: asyncio.Event, topics: tuple[str, ...],
                 broker: BrokerWatch | None = None) -> None:
        self.topic = TopicNames(settings.kafka.topic_prefix)
        super().__init__("sink", settings, [self.topic(t) for t in topics], self.topic("sink"), broker, stop)
        self.store_dir = settings.storage.store_dir
        self.identity = TopicIdentity(settings)
        self.incarnations: dict[str, str] = {}  # full topic name -> incarnation, learnt on assignment
        self.buffers: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.buffered_since: dict[TopicPartition, float] = {}
        self._flush_now = False

    def flush_now(self) -> None:
        """Write what is buffered at the next turn of the loop, not at the flush interval: a
        finite run whose stages are all done should not wait for it, nor for its poll's timeout."""
        self._flush_now = True
        self.wake()

    @property
    def in_flight(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    async def run(self) -> None:
        # pyarrow imports pandas (when it is installed) the first time it builds a table: ~0.3 s of
        # importing, which on the event loop would stall every stage of the process at the first
        # flush. Done now, on a thread, while the group is joined.
        arrow_ready = asyncio.ensure_future(asyncio.to_thread(pa.Table.from_pylist, [], schema=ROW_SCHEMA))
        await self.start()
        await arrow_ready
        log.info("sink: %s -> %s", ", ".join(self.topics), self.store_dir)
        storage = self.settings.storage
        try:
            while not self.stop_event.is_set() and self.fatal is None:
                batch = await self.poll(storage.sink_batch_size, timeout_ms=100)
                self.set_paused(False)  # resumes partitions that have finished preparing
                for tp, records in self.take_ready(batch).items():
                    if self.offsets.get(tp) is None:
                        continue
                    self.buffers.setdefault(tp, []).extend(records)
                    self.buffered_since.setdefault(tp, time.monotonic())
                now, everything = time.monotonic(), self._flush_now
                self._flush_now = False
                for tp in list(self.buffers):
                    records, since = self.buffers.get(tp), self.buffered_since.get(tp)
                    if records is None or since is None:
                        continue  # revoked (and so flushed) during an earlier flush's await
                    if (everything or len(records) >= storage.sink_batch_size
                            or now - since >= storage.sink_flush_interval):
                        await self.flush(tp)
                # A flush's commit skipped while the broker was away is carried by this one: a
                # partition that gets no more records would otherwise keep its lag for good.
                await self.maybe_commit()
            for tp in list(self.buffers):
                await self.flush(tp)
        finally:
            await self.stop()
            self.identity.close()
        if self.fatal is not None:
            raise self.fatal

    async def flush(self, tp: TopicPartition) -> None:
        records = self.buffers.pop(tp, [])
        self.buffered_since.pop(tp, None)
        tracker = self.offsets.get(tp)
        if not records or tracker is None:
            return
        name = self.topic.unprefixed(tp.topic)
        # Full topic name on disk: pipelines with different prefixes can share a data_dir.
        incarnation = await self._incarnation(tp.topic)
        path = self.store_dir / tp.topic / file_name(tp.topic, incarnation, tp.partition, records[0].offset)
        await asyncio.to_thread(_write_records, name, records, path)  # rows decoded off the event loop too
        metrics.SINK_ROWS.labels(name).inc(len(records))
        for record in records:
            tracker.started(record.offset)
            tracker.finished(record.offset)
        await self.commit({tp})
        log.debug("sink: wrote %d rows to %s", len(records), path)

    async def _incarnation(self, topic: str) -> str:
        if topic not in self.incarnations:
            found = await self.identity.of(sorted({tp.topic for tp in self.offsets} | {topic}))
            if topic not in found:
                raise StoreConflictError(f"topic {topic} is gone from the broker; its records are not stored")
            self.incarnations.update(found)
            SeenIncarnations(self.settings.storage.data_dir).note(found)
        return self.incarnations[topic]

    async def after_assign(self, partitions: set[TopicPartition]) -> None:
        # A (re)assignment may be of a recreated topic: learn its incarnation before the next write
        # (here, while the broker surely answers; else at that write).
        for tp in partitions:
            self.incarnations.pop(tp.topic, None)
        if partitions:
            with contextlib.suppress(OSError, KafkaError, asyncio.TimeoutError):
                await self._incarnation(next(iter(partitions)).topic)

    async def before_revoke(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            await self.flush(tp)
