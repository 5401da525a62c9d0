"""The store: what the sink keeps, and every read of it. This module alone knows the layout.

Layout: `<store_dir>/<prefixed topic>/<topic>-i<incarnation>-p<partition>-o<first offset>.parquet`,
one file per flushed batch of one partition, rows in offset order (streamer.storage.sink writes them;
a redelivered batch rewrites its own file). Columns: id, root_id, kind, method, simulated, created_at,
topic, partition, offset and the envelope as JSON text. A record redelivered into another batch is
stored twice; readers that want one per id say so (`envelopes(unique=True)`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from streamer.kafka.incarnation import short


def file_name(topic: str, incarnation: str, partition: int, first_offset: int) -> str:
    return f"{topic}-i{short(incarnation)}-p{partition:04d}-o{first_offset:012d}.parquet"


def files(store_dir: Path, topic: str, incarnation: str | None = None) -> list[Path]:
    """A (prefixed) topic's files in name order (so offset order within a partition); with
    `incarnation`, only the files of that incarnation of the topic."""
    pattern = f"{topic}-i{short(incarnation)}-*.parquet" if incarnation else "*.parquet"
    return sorted((store_dir / topic).glob(pattern))


def topics(store_dir: Path, prefix: str) -> list[str]:
    """Unprefixed names of the topics the store has a folder for."""
    if not store_dir.is_dir():
        return []
    return sorted(p.name.removeprefix(prefix) for p in store_dir.iterdir() if p.is_dir() and p.name.startswith(prefix))


def column(path: Path, name: str) -> Iterator[Any]:
    """One column of one file, in batches (resume reads ids without parsing envelopes)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=10_000, columns=[name]):
        yield from (v for v in batch.column(0).to_pylist() if v)


def rows(store_dir: Path, topic: str) -> Iterator[dict[str, Any]]:
    """Stored rows of one (prefixed) topic, file by file, never all at once."""
    for path in files(store_dir, topic):
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000):
            yield from batch.to_pylist()


def envelopes(store_dir: Path, topic: str, *, unique: bool = True) -> Iterator[dict[str, Any]]:
    """The stored envelopes of one (prefixed) topic, decoded; one per id unless `unique=False`."""
    seen: set[str] = set()
    for row in rows(store_dir, topic):
        if unique:
            if row["id"] in seen:
                continue
            seen.add(row["id"])
        try:
            yield orjson.loads(row["envelope"])
        except orjson.JSONDecodeError:
            continue


class IdIndex:
    """Which file holds a record id, for every topic of one store: built from the id columns only,
    brought up to date with the files written since (stored files are never moved), so a lookup reads
    one file instead of the whole store."""

    def __init__(self, store_dir: Path) -> None:
        self.store_dir = store_dir
        self.where: dict[str, Path] = {}
        self.indexed: set[Path] = set()
        self._lock = threading.Lock()  # lookups run in worker threads

    def find(self, record_id: str, prefix: str) -> tuple[str, dict[str, Any]] | None:
        """(unprefixed topic, envelope) of the stored record with this id, or None."""
        with self._lock:
            self._catch_up(prefix)
            path = self.where.get(record_id)
        if path is None:
            return None
        for batch in pq.ParquetFile(path).iter_batches(batch_size=1000, columns=["id", "envelope"]):
            for row in batch.to_pylist():
                if row["id"] == record_id:
                    return path.parent.name.removeprefix(prefix), orjson.loads(row["envelope"])
        return None

    def _catch_up(self, prefix: str) -> None:
        for topic in topics(self.store_dir, prefix):
            for path in files(self.store_dir, prefix + topic):
                if path not in self.indexed:
                    for record_id in column(path, "id"):
                        self.where.setdefault(record_id, path)
                    self.indexed.add(path)
