"""The storage sink: final topics → Parquet files, committed only once the file is durable.

A file is named by (topic, partition, first offset). After a crash the group resumes at the
first uncommitted offset, which is the first offset of the one file that may have been
written but not committed, so the redelivered batch rewrites that same file instead of adding
rows. Export additionally keeps one row per record id.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from streamer import metrics
from streamer.config import Settings
from streamer.kafka.clients import TopicNames
from streamer.kafka.consumer import GroupMember
from streamer.records import stable_hash

log = logging.getLogger(__name__)

# Final and audit topics: what a person inspects, reports on and exports.
SINK_TOPICS = ("samples", "rejected", "dlq", "seeds.attributed")

ROW_SCHEMA = pa.schema([
    ("id", pa.string()), ("root_id", pa.string()), ("kind", pa.string()), ("method", pa.string()),
    ("simulated", pa.bool_()), ("created_at", pa.float64()),
    ("topic", pa.string()), ("partition", pa.int32()), ("offset", pa.int64()),
    ("envelope", pa.string()),
])


def file_name(topic: str, partition: int, first_offset: int) -> str:
    return f"{topic}-p{partition:04d}-o{first_offset:012d}.parquet"


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


class ParquetSink(GroupMember):
    def __init__(self, settings: Settings, stop: asyncio.Event, topics: tuple[str, ...] = SINK_TOPICS) -> None:
        self.topic = TopicNames(settings.kafka.topic_prefix)
        super().__init__("sink", settings, [self.topic(t) for t in topics], self.topic("sink"))
        self.store_dir = settings.storage.store_dir
        self.stop_event = stop
        self.buffers: dict[TopicPartition, list[ConsumerRecord]] = {}
        self.buffered_since: dict[TopicPartition, float] = {}

    @property
    def in_flight(self) -> int:
        return sum(len(b) for b in self.buffers.values())

    async def run(self) -> None:
        await self.start()
        log.info("sink: %s -> %s", ", ".join(self.topics), self.store_dir)
        storage = self.settings.storage
        try:
            while not self.stop_event.is_set():
                batch = await self.poll(storage.sink_batch_size, timeout_ms=200)
                for tp, records in batch.items():
                    if self.offsets.get(tp) is None:
                        continue
                    self.buffers.setdefault(tp, []).extend(records)
                    self.buffered_since.setdefault(tp, time.monotonic())
                now = time.monotonic()
                for tp in list(self.buffers):
                    if (len(self.buffers[tp]) >= storage.sink_batch_size
                            or now - self.buffered_since[tp] >= storage.sink_flush_interval):
                        await self.flush(tp)
            for tp in list(self.buffers):
                await self.flush(tp)
        finally:
            await self.stop()

    async def flush(self, tp: TopicPartition) -> None:
        records = self.buffers.pop(tp, [])
        self.buffered_since.pop(tp, None)
        tracker = self.offsets.get(tp)
        if not records or tracker is None:
            return
        name = self.topic.unprefixed(tp.topic)
        table = pa.Table.from_pylist([_row(name, r) for r in records], schema=ROW_SCHEMA)
        # Full topic name on disk: pipelines with different prefixes can share a data_dir.
        path = self.store_dir / tp.topic / file_name(tp.topic, tp.partition, records[0].offset)
        await asyncio.to_thread(write_parquet_atomic, path, table)
        metrics.SINK_ROWS.labels(name).inc(len(records))
        for record in records:
            tracker.started(record.offset)
            tracker.finished(record.offset)
        await self.commit({tp})
        log.debug("sink: wrote %d rows to %s", len(records), path)

    async def before_revoke(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            await self.flush(tp)
