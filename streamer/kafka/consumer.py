"""A consumer-group member with manual, rebalance-safe commits of finished offsets.

Shared by the stage runner and the sink: both process records out of band and tell this class
which offsets are finished; it commits the contiguous prefix periodically, when partitions are
revoked and at shutdown, and reports lag for progress and idle detection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError

from streamer import metrics
from streamer.config import Settings
from streamer.kafka.clients import make_consumer
from streamer.kafka.offsets import PartitionOffsets

log = logging.getLogger(__name__)


class GroupMember:
    def __init__(self, name: str, settings: Settings, topics: list[str], group_id: str) -> None:
        self.name = name
        self.settings = settings
        self.topics = topics
        self.group_id = group_id
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        self.last_lag: int | None = None
        self.active = False
        self._last_commit = time.monotonic()
        self.consumer = make_consumer(
            settings.kafka, group_id=group_id, max_poll_records=settings.runtime.max_poll_records
        )

    # Hooks for subclasses -------------------------------------------------------------
    async def before_revoke(self, partitions: set[TopicPartition]) -> None:
        """Finish or abandon work of partitions being taken away (their offsets are committed next)."""

    async def after_assign(self, partitions: set[TopicPartition]) -> None:
        """Prepare for newly assigned partitions before their first record is fetched."""

    # Group membership -------------------------------------------------------------------
    async def start(self) -> None:
        self.consumer.subscribe(self.topics, listener=_Listener(self))
        await self.consumer.start()
        self.active = True

    async def stop(self) -> None:
        await self.commit()
        self.active = False
        await self.consumer.stop()

    def _assigned(self, partitions: set[TopicPartition]) -> None:
        for tp in partitions:
            self.offsets[tp] = PartitionOffsets()
        if partitions:
            parts = sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
            log.info("%s: assigned partitions %s", self.name, " ".join(parts))

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        mine = {tp for tp in partitions if tp in self.offsets}
        if not mine:
            return
        await self.before_revoke(mine)
        await self.commit(mine)
        for tp in mine:
            self.offsets.pop(tp, None)
            with contextlib.suppress(KeyError):  # another member reports its lag from now on
                metrics.CONSUMER_LAG.remove(self.name, tp.topic, str(tp.partition))
        log.info("%s: revoked partitions %s", self.name, " ".join(sorted(f"{tp.topic}[{tp.partition}]" for tp in mine)))

    # Offsets ------------------------------------------------------------------------------
    def track(self, tp: TopicPartition, offset: int) -> PartitionOffsets | None:
        tracker = self.offsets.get(tp)
        if tracker is not None:
            tracker.started(offset)
        return tracker

    async def commit(self, partitions: set[TopicPartition] | None = None) -> None:
        batch: dict[TopicPartition, int] = {}
        for tp, tracker in list(self.offsets.items()):
            if partitions is not None and tp not in partitions:
                continue
            if (offset := tracker.to_commit()) is not None:
                batch[tp] = offset
        self._last_commit = time.monotonic()
        if not batch:
            return
        try:
            await self.consumer.commit(batch)
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way; the revoke hook commits what was finished.
            log.warning("%s: commit skipped during rebalance: %s", self.name, exc)
            return
        for tp, offset in batch.items():
            if tp in self.offsets:
                self.offsets[tp].committed = offset

    async def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.settings.runtime.commit_interval:
            await self.commit()

    async def lag(self) -> int | None:
        """Records not yet committed by this group on the partitions this member holds."""
        if not self.active:
            return None
        assignment = set(self.consumer.assignment())
        if not assignment:
            return None
        try:
            ends = await self.consumer.end_offsets(list(assignment))
            total = 0
            for tp in assignment:
                committed = await self.consumer.committed(tp) or 0
                # Fetches carry the true high watermark; some brokers' end offsets fall short (end_offsets.py).
                lag = max(0, max(ends[tp], self.consumer.highwater(tp) or 0) - committed)
                metrics.CONSUMER_LAG.labels(self.name, tp.topic, str(tp.partition)).set(lag)
                total += lag
        except KafkaError as exc:
            log.debug("%s: lag unavailable: %s", self.name, exc)
            return None
        self.last_lag = total
        return total

    def set_paused(self, paused: bool) -> None:
        assignment = self.consumer.assignment()
        with contextlib.suppress(IllegalStateError):
            if paused:
                self.consumer.pause(*assignment)
            else:
                self.consumer.resume(*assignment)

    async def poll(self, max_records: int, timeout_ms: int = 200) -> dict[TopicPartition, list[Any]]:
        return await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, member: GroupMember) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.member._revoked(set(revoked))  # noqa: SLF001 - listener is part of the member

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.member._assigned(set(assigned))  # noqa: SLF001
        await self.member.after_assign(set(assigned))


async def sleep_until(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, waking early when `event` is set; True if it was set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()
