"""A worker process: some stages and/or the sink, one shared producer and LLM pool.

SIGTERM/SIGINT start a graceful stop: every member stops fetching, drains in-flight work
within `runtime.drain_timeout`, commits and leaves its group; whatever is still running at the
deadline is abandoned (it is redelivered later), in every state, waiting for a broker included.
With `until_idle` the worker also stops once every member has caught up with its input and
nothing is in flight.

A broker watch (streamer.kafka.health) decides for the whole process when the broker is gone
for good (exit non-zero after `kafka.unavailable_timeout`) or was replaced (its topics were
recreated: stop at once, commit nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from typing import Sequence

from streamer import metrics
from streamer.metrics import registry as worker_registry
from streamer.config import Settings
from consumers import SINK_TOPICS, TOPICS
from streamer.kafka.clients import TopicNames, ensure_topics, is_tansu, make_producer, use_fast_group_timing
from streamer.kafka.group import GroupMember, abandon, sleep_until
from streamer.kafka.health import BrokerWatch
from streamer.kafka.incarnation import SeenIncarnations, replaced_line
from streamer.llm.batch import BatchRecords
from streamer.llm.cache import ResponseCache
from streamer.llm.client import LLMPool
from streamer.llm.prices import Prices
from streamer.runtime import outcomes
from streamer.runtime.embedding import encoder_summaries
from streamer.runtime.progress import Progress
from streamer.runtime.runner import StageRunner
from streamer.runtime.stage import Stage
from streamer.state.batch_log import BatchLog
from streamer.storage.sink import ParquetSink

log = logging.getLogger(__name__)

LAG_EVERY = 1.0  # seconds between lag refreshes (broker requests per member) for progress
IDLE_EVERY = 0.05  # seconds between idle checks with until_idle (local, no broker requests)


class Worker:
    def __init__(self, settings: Settings, stages: Sequence[Stage], *, sink: bool = True,
                 until_idle: bool = False, progress: bool = True) -> None:
        self.settings = settings
        self.stages = list(stages)
        self.with_sink = sink
        self.until_idle = until_idle
        self.show_progress = progress
        self.stop = asyncio.Event()
        self.members: list[GroupMember] = []

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        # First of all: a stop must be honoured even while the broker is still being waited for.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self._run()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)

    async def _connect(self) -> BrokerWatch | None:
        """The broker reached and every topic in place (None: stopped before that)."""
        topic = TopicNames(self.settings.kafka.topic_prefix)
        broker = BrokerWatch(self.settings, [topic(t) for t in TOPICS])
        if await broker.connect(self.stop) is None:
            return None  # stopped before the broker answered
        if is_tansu(broker.cluster_id):
            use_fast_group_timing(self.settings.kafka)  # else joins wait seconds (clients.py)
        await ensure_topics(self.settings, TOPICS)
        incarnations = await broker.connect(self.stop)  # now that every topic exists
        if incarnations is None:
            return None
        seen = SeenIncarnations(self.settings.storage.data_dir)
        if replaced := seen.replaced(incarnations):
            log.warning("%s", replaced_line(self.settings.kafka.bootstrap_servers, replaced,
                                            self.settings.kafka.topic_prefix))
        seen.note(incarnations)
        return broker

    async def _run(self) -> None:
        broker = await self._connect()
        if broker is None:
            return
        # The cache before the producer: a cache that cannot be opened must not leave a started producer.
        cache = ResponseCache(self.settings.storage.cache_path) if self.stages else None
        batches = None
        if any(s.bind(self.settings).settings.llm.mode == "batch" for s in self.stages):
            batches = BatchRecords.of(self.settings.storage.data_dir, self.settings.kafka.topic_prefix)
        pool = LLMPool(cache, Prices(self.settings.prices), batches)
        producer = make_producer(self.settings.kafka)
        await producer.start()
        batch_log = None
        if batches is not None:  # every worker's batches, from the broker, before a stage may submit one
            batch_log = batches.log = BatchLog(self.settings, batches, producer)
            try:
                await batch_log.start()
            except BaseException:
                await batch_log.stop()
                await producer.stop()
                raise
        self.members = [StageRunner(s, self.settings, producer, pool, self.stop, broker) for s in self.stages]
        if self.with_sink:
            self.members.append(ParquetSink(self.settings, self.stop, SINK_TOPICS, broker=broker))
        metrics.declare_stages([s.name for s in self.stages])
        worker_registry.announce(self.settings, [m.name for m in self.members])  # so `status` finds us
        tasks = [asyncio.create_task(m.run(), name=m.name) for m in self.members]
        for task in tasks:
            task.add_done_callback(self._member_done)
        members_done = asyncio.Event()  # progress goes on through the drain that follows a stop
        # The watch goes on through the shutdown: it tells the members when not to wait for the broker.
        watching = [asyncio.create_task(broker.run()), asyncio.create_task(self._on_verdict(broker))]
        watchers = [asyncio.create_task(self._watch_lag())]
        if self.until_idle:
            watchers.append(asyncio.create_task(self._watch_idle()))
        # Without a display too: it works out what stalled stages wait for, for `status`.
        progress = Progress.of_members(self.members, _done_count, show=self.show_progress)
        observers = [asyncio.create_task(progress.run(members_done))]
        try:
            results = await self._members_finished(tasks)
        finally:
            self.stop.set()
            members_done.set()
            for task in watchers:  # they only watch: one waiting on a broker call must not delay the exit
                task.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
            if observers:  # progress prints its last line; it must not hold up the exit either
                _, late = await asyncio.wait(observers, timeout=2)
                for task in late:
                    task.cancel()
                await asyncio.gather(*observers, return_exceptions=True)
            if batch_log is not None:
                with contextlib.suppress(asyncio.TimeoutError):
                    await broker.unless_away(batch_log.stop(), 5.0)
            try:
                await broker.unless_away(producer.stop(), 5.0)
            except asyncio.TimeoutError:
                abandon(producer)
                log.warning("the broker did not take the last produced records; they are produced again on redelivery")
            for task in watching:
                task.cancel()
            await asyncio.gather(*watching, return_exceptions=True)
            await pool.close()
            for line in encoder_summaries():
                log.info("%s", line)
        if broker.failure is not None:
            raise broker.failure
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    async def _members_finished(self, tasks: list[asyncio.Task[None]]) -> list[BaseException | None]:
        """Wait for the members; once a stop is asked for, give them the drain timeout, no more."""
        everyone = asyncio.ensure_future(asyncio.wait(tasks))
        stopping = asyncio.ensure_future(self.stop.wait())
        await asyncio.wait({everyone, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not everyone.done():
            _, late = await asyncio.wait(tasks, timeout=self.settings.runtime.drain_timeout)
            for task in late:
                log.warning("%s: not stopped by the drain deadline (%.0fs); abandoned, its uncommitted records are "
                            "redelivered", task.get_name(), self.settings.runtime.drain_timeout)
                task.cancel()
            if late:
                await asyncio.wait(late, timeout=2)
        everyone.cancel()
        return [None if not t.done() or t.cancelled() else t.exception() for t in tasks]

    async def _on_verdict(self, broker: BrokerWatch) -> None:
        await broker.failed.wait()  # members read the verdict themselves (GroupMember.fenced)
        self.stop.set()

    def failed_stages(self) -> list[outcomes.Outcome]:
        """Stages of this worker that dead-lettered all they were given, or more than `run.max_dlq_share`."""
        return outcomes.failed_stages([s.name for s in self.stages], self.settings.run.max_dlq_share)

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("received %s: stopping intake, draining in-flight work", sig.name)
        self.stop.set()

    def _member_done(self, task: asyncio.Task[None]) -> None:
        # One member failing stops the others gracefully, so the process exits non-zero cleanly.
        if not task.cancelled() and task.exception() is not None:
            self.stop.set()

    async def _watch_lag(self) -> None:
        """Refresh lag (from the broker) for progress and the lag metric."""
        while not await sleep_until(self.stop, LAG_EVERY):
            for member in self.members:
                await member.lag()

    async def _watch_idle(self) -> None:
        """With until_idle: stop once every member has been caught up for `idle_grace` (judged
        locally, every IDLE_EVERY seconds); the sink is told to write at once when it is the only
        one left with work, so the run ends within a fraction of a second of its last record."""
        quiet_since: float | None = None
        loop = asyncio.get_running_loop()
        while not await sleep_until(self.stop, IDLE_EVERY):
            states = [await m.caught_up() for m in self.members]
            if all(states):
                quiet_since = quiet_since or loop.time()
                if loop.time() - quiet_since >= self.settings.runtime.idle_grace:
                    log.info("all inputs consumed and nothing in flight: stopping")
                    for member in self.members:
                        member.last_lag = 0  # caught up: the last progress line must not show a stale lag
                    self.stop.set()
                continue
            if quiet_since is not None or log.isEnabledFor(logging.DEBUG):
                log.debug("not idle: %s", ", ".join(m.name for m, s in zip(self.members, states) if not s))
            quiet_since = None
            stages_done = all(s for m, s in zip(self.members, states) if not isinstance(m, ParquetSink))
            for member in self.members:
                if stages_done and isinstance(member, ParquetSink) and member.in_flight and await member.read_to_end():
                    member.flush_now()


def _done_count(name: str) -> float:
    if name == "sink":
        return metrics.total(metrics.SINK_ROWS)
    return metrics.total(metrics.RECORDS_DONE, stage=name)
