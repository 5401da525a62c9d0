"""A consumer-group member with manual, rebalance-safe commits of finished offsets.

Shared by the stage runner and the sink: both process records out of band and tell this class
which offsets are finished; it commits the contiguous prefix periodically, when partitions are
revoked and at shutdown, and reports lag for progress and idle detection.

A newly assigned partition is paused, and any record of it that was already fetched is held back,
until its preparation (`after_assign`: e.g. rebuilding a stateful stage's state) has finished: the
consumer keeps fetching while an async rebalance callback awaits, and a record decided against a
half-restored state would be decided differently from the first time.

Every call to the broker here is bounded in time: a dead broker must never keep a worker from
noticing a stop signal, and a member `fenced` after its topics were recreated commits nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Awaitable, TypeVar

from aiokafka import ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaConnectionError, KafkaError

from streamer import metrics
from streamer.config import Settings
from streamer.kafka import produced
from streamer.kafka.clients import make_consumer
from streamer.kafka.reader import TopicReader
from streamer.kafka.health import BrokerReplaced, BrokerWatch
from streamer.kafka.offsets import PartitionOffsets

log = logging.getLogger(__name__)

T = TypeVar("T")

BROKER_CALL_TIMEOUT = 10.0  # a commit or leave that takes longer is retried later or abandoned
AWAY_POLL_MS = 1000  # a poll's wait while the broker is away (GroupMember.poll)
PREPARE_RETRY_AFTER = 1.0  # seconds before preparing partitions again after the broker went away


class GroupMember:
    def __init__(self, name: str, settings: Settings, topics: list[str], group_id: str,
                 broker: BrokerWatch | None = None, stop: asyncio.Event | None = None) -> None:
        self.name = name
        self.stop_event = stop  # set: the member's loop ends; a poll waiting for records wakes at once
        self._woken: asyncio.Future[None] | None = None  # resolved by `wake` (and the stop): a poll's wait ends
        self._stop_watch: asyncio.Task[None] | None = None  # wakes the member when the stop is set
        self._fetch: asyncio.Task[dict[TopicPartition, list[Any]]] | None = None  # a wait a stop or wake cut short
        self.broker = broker
        self.settings = settings
        self.topics = topics
        self.group_id = group_id
        self.offsets: dict[TopicPartition, PartitionOffsets] = {}
        self.last_lag: int | None = None
        self.active = False
        self.joined = False  # given an assignment (maybe empty) at least once
        self.fatal: BaseException | None = None  # set when the member cannot go on; its loop ends
        self.preparing: set[TopicPartition] = set()  # assigned, `after_assign` not yet finished
        self.held: dict[TopicPartition, list[Any]] = {}  # fetched for a preparing partition
        self._last_commit = time.monotonic()
        self._lag_read: asyncio.Task[int | None] | None = None
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
        if self.stop_event is not None:
            self._stop_watch = asyncio.ensure_future(self._wake_on_stop(self.stop_event))

    @property
    def fenced(self) -> bool:
        """True once the topics were recreated under this process: its offsets mean nothing there.
        Read from the watch directly, so no commit can slip in between its verdict and a stop."""
        return self.broker is not None and isinstance(self.broker.failure, BrokerReplaced)

    async def broker_call(self, call: Awaitable[T], timeout: float = BROKER_CALL_TIMEOUT) -> T:
        """A client call that gives up (TimeoutError) after `timeout`, or once the broker is away."""
        if self.broker is None:
            return await asyncio.wait_for(call, timeout)
        return await self.broker.unless_away(call, timeout)

    @property
    def broker_away(self) -> bool:
        return self.broker is not None and not self.broker.reachable.is_set()

    async def stop(self) -> None:
        await self.commit()
        self.active = False
        if self._lag_read is not None:
            # Its requests would meet the connections the stop closes: aiokafka logs an OffsetFetch
            # cut short as an ERROR and marks the coordinator dead, which the leave then waits out.
            self._lag_read.cancel()
            await asyncio.wait([self._lag_read])
        if self._stop_watch is not None:
            self._stop_watch.cancel()
        if self._fetch is not None:
            # What it may have fetched was never started, so never committed: redelivered.
            self._fetch.cancel()
            await asyncio.wait([self._fetch])
            if not self._fetch.cancelled():
                self._fetch.exception()  # seen: the member is done with it
            self._fetch = None
        try:
            # Leaving needs the broker; when it is away there is no one to tell.
            await self.broker_call(self.consumer.stop(), 1.0 if self.broker_away else BROKER_CALL_TIMEOUT)
        except asyncio.TimeoutError:
            abandon(self.consumer)
            log.warning("%s: the broker did not answer while leaving the group; left without it", self.name)

    def _assigned(self, partitions: set[TopicPartition]) -> None:
        self.joined = True
        for tp in partitions:
            self.offsets[tp] = PartitionOffsets()
        self.preparing |= partitions
        with contextlib.suppress(IllegalStateError):
            self.consumer.pause(*partitions)
        if partitions:
            parts = sorted(f"{tp.topic}[{tp.partition}]" for tp in partitions)
            log.info("%s: assigned partitions %s", self.name, " ".join(parts))

    async def _prepare(self, partitions: set[TopicPartition]) -> None:
        while True:
            try:
                await self._restart_recreated(partitions)
                await self.after_assign(partitions)
                break
            except (KafkaConnectionError, OSError) as exc:
                if self.broker is None:
                    self.fatal = self.fatal or exc
                    return
                # The broker went away while preparing (a restart of a durable broker): prepare again
                # once it answers; the broker watch decides when it has been away too long.
                log.warning("%s: the broker went away while preparing partitions (%s); again when it answers",
                            self.name, exc)
                await asyncio.sleep(PREPARE_RETRY_AFTER)  # the watch may not have noticed yet
                try:
                    await self.broker.wait_reachable(asyncio.Event())
                except Exception as verdict:  # noqa: BLE001 - the watch gave up: its verdict is the reason
                    self.fatal = self.fatal or verdict
                    return
            except Exception as exc:  # noqa: BLE001 - aiokafka would only log it; unprepared work must not start
                log.error("%s: preparing partitions failed, stopping: %s", self.name, exc)
                self.fatal = self.fatal or exc
                return
        self.preparing -= partitions  # resumed by the next set_paused, unless the member is full

    def take_ready(self, batch: dict[TopicPartition, list[Any]]) -> dict[TopicPartition, list[Any]]:
        """The records that may start now, in offset order per partition: those held back for a
        partition that has finished preparing, then the new ones; records of a partition still
        preparing are held."""
        ready = {tp: self.held.pop(tp) for tp in list(self.held) if tp not in self.preparing}
        for tp, records in batch.items():
            if tp in self.preparing:
                self.held.setdefault(tp, []).extend(records)
            else:
                ready.setdefault(tp, []).extend(records)
        return ready

    async def _restart_recreated(self, partitions: set[TopicPartition]) -> None:
        """A committed offset beyond a partition's end was committed on an earlier incarnation of
        the topic: say so and read the new one from its beginning (some brokers would otherwise
        wait at that offset forever)."""
        if not partitions:
            return
        tps = sorted(partitions)
        try:
            committed = {tp: await asyncio.wait_for(self.consumer.committed(tp), BROKER_CALL_TIMEOUT) for tp in tps}
            reported = await asyncio.wait_for(self.consumer.end_offsets(tps), BROKER_CALL_TIMEOUT)
            suspects = [tp for tp in tps if (committed[tp] or 0) > reported[tp]]
            if not suspects:
                return
            # Some brokers report less than the true end (end_offsets.py): confirm before acting.
            async with TopicReader(self.settings) as reader:
                ends = await reader.ends(suspects)
        except (KafkaError, asyncio.TimeoutError) as exc:
            log.debug("%s: positions not checked against the topic ends: %s", self.name, exc)
            return
        beyond = [tp for tp in suspects if (committed[tp] or 0) > ends[tp]]
        for tp in beyond:
            self.consumer.seek(tp, 0)
        if beyond:
            log.warning("%s: committed offsets lie beyond the end of %s (%s): those offsets belong to an earlier "
                        "incarnation of the topic (a restarted broker?); reading the new one from its beginning",
                        self.name, " ".join(f"{tp.topic}[{tp.partition}]" for tp in beyond),
                        ", ".join(f"{committed[tp]} > {ends[tp]}" for tp in beyond))

    async def _revoked(self, partitions: set[TopicPartition]) -> None:
        self.joined = False  # a rebalance: not idle while the group re-forms with nothing assigned
        mine = {tp for tp in partitions if tp in self.offsets}
        if not mine:
            return
        await self.before_revoke(mine)
        await self.commit(mine)
        for tp in mine:
            self.offsets.pop(tp, None)
            self.held.pop(tp, None)  # never started: the next owner gets them
            self.preparing.discard(tp)
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
        if self.fenced or self.broker_away:
            return  # fenced: never; away: the next commit after it is back carries these offsets
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
            await self.broker_call(self.consumer.commit(batch))
        except (CommitFailedError, IllegalStateError) as exc:
            # A rebalance is under way; the revoke hook commits what was finished.
            log.warning("%s: commit skipped during rebalance: %s", self.name, exc)
            return
        except asyncio.TimeoutError:
            log.debug("%s: commit timed out; retried with the next one", self.name)
            return
        except KafkaError as exc:
            if not exc.retriable:
                raise
            log.debug("%s: commit failed (%s); retried with the next one", self.name, exc)
            return
        for tp, offset in batch.items():
            if tp in self.offsets:
                self.offsets[tp].committed = offset

    async def maybe_commit(self) -> None:
        if time.monotonic() - self._last_commit >= self.settings.runtime.commit_interval:
            await self.commit()

    async def caught_up(self) -> bool:
        """Judged locally, without asking the broker: nothing in flight or held, and every assigned
        partition read to its end as known from fetch responses and from what this process
        produced itself (produced.py). Offsets finished but not yet committed are committed by
        the member's stop."""
        if not self.active or not self.joined or self.in_flight or self.held or self.preparing:
            return False
        return await self.read_to_end()

    async def read_to_end(self) -> bool:
        for tp in self.consumer.assignment():
            highwater = self.consumer.highwater(tp)
            if highwater is None:
                return False  # no fetch answered yet
            try:
                position = await asyncio.wait_for(self.consumer.position(tp), 0.05)
            except (asyncio.TimeoutError, IllegalStateError):
                return False
            if position < max(highwater, produced.end(tp)):
                return False
        return True

    async def lag(self) -> int | None:
        """Records not yet committed by this group on the partitions this member holds (None: not
        known; the member stopping ends a read under way)."""
        if not self.active:
            return None
        read = self._lag_read = asyncio.ensure_future(self._read_lag())
        try:
            return await read
        except asyncio.CancelledError:
            if asyncio.current_task().cancelling():  # type: ignore[union-attr] - called from a task
                raise  # the caller is cancelled, not just the read
            return None
        finally:
            self._lag_read = None

    async def _read_lag(self) -> int | None:
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
        """Pause every assigned partition, or resume those not still preparing."""
        assignment = set(self.consumer.assignment())
        with contextlib.suppress(IllegalStateError):
            if paused:
                self.consumer.pause(*assignment)
            else:
                self.consumer.resume(*(assignment - self.preparing))

    def wake(self) -> None:
        """End a poll's wait for records now, or the next poll's if none waits: the member's loop has
        work before more records come. The fetch it waited on goes on; the next poll returns its
        records, so a wake can be asked for at any time (only with `stop`; see `poll`)."""
        woken = self._wake_signal()
        if not woken.done():
            woken.set_result(None)

    def _wake_signal(self) -> asyncio.Future[None]:
        if self._woken is None:
            self._woken = asyncio.get_running_loop().create_future()
        return self._woken

    async def _wake_on_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self.wake()

    async def poll(self, max_records: int, timeout_ms: int = 200, *,
                   wakeable: bool = True) -> dict[TopicPartition, list[Any]]:
        """Fetched records, waiting up to `timeout_ms` for some; with `wakeable` a stop or `wake` ends
        the wait early (nothing then). A member given `stop` polls from one task (its loop): a fetch
        left waiting by a wake is the next poll's, up to the `max_records` it was started with. A
        wakeable wait costs a task (~0.1 ms of CPU): a member that is busy anyway need not ask for it."""
        if self.broker_away and timeout_ms:
            # Nothing comes while the broker is away, and records fetched once it is back end the
            # wait anyway: the loop need not turn (and burn CPU beside the reconnects) five times a second.
            timeout_ms = max(timeout_ms, AWAY_POLL_MS)
        elif self.preparing or not self.joined:
            # Partitions being prepared are paused: poll briefly, so they are resumed (and fetched)
            # as soon as they are ready rather than after a whole wait on nothing.
            timeout_ms = min(timeout_ms, 20)
        carried = self._fetch is not None  # left waiting by a wake: bounded by this poll's timeout
        if self.stop_event is None or (not wakeable and not carried):
            return await self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        woken = self._wake_signal()
        if not carried:
            ready = await self.consumer.getmany(timeout_ms=0, max_records=max_records)
            if ready or not timeout_ms or woken.done() or self.stop_event.is_set():
                if woken.done():
                    self._woken = None
                return ready
            # Nothing buffered: wait for records or a wake (the stop's too), whichever comes first.
            # An idle member would otherwise notice a stop only when its poll times out, and the last
            # commit, the leave and the exit of `run --until-idle` wait for the slowest member. The
            # fetch is not cancelled when the wake comes first (a cancelled getmany leaves aiokafka's
            # count of polls under way one too high, and its max.poll.interval check blind): it is
            # the next poll's, or the stop's to end.
            self._fetch = asyncio.ensure_future(self.consumer.getmany(timeout_ms=timeout_ms, max_records=max_records))
        fetch = self._fetch
        await asyncio.wait((fetch, woken), timeout=timeout_ms / 1000 if carried else None,
                           return_when=asyncio.FIRST_COMPLETED)
        if woken.done():
            self._woken = None
        if not fetch.done():
            return {}
        self._fetch = None
        return fetch.result()


class _Listener(ConsumerRebalanceListener):
    def __init__(self, member: GroupMember) -> None:
        self.member = member

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.member._revoked(set(revoked))  # noqa: SLF001 - listener is part of the member

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self.member._assigned(set(assigned))  # noqa: SLF001
        await self.member._prepare(set(assigned))  # noqa: SLF001


async def sleep_until(event: asyncio.Event, seconds: float) -> bool:
    """Sleep up to `seconds`, waking early when `event` is set; True if it was set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
    return event.is_set()


def abandon(client: Any) -> None:
    """A consumer or producer whose stop could not finish (no broker to talk to) is given up:
    mark it closed, or its finaliser reports it as leaked at exit, which it is not."""
    client._closed = True  # noqa: SLF001 - aiokafka has no public way to say this
