"""The stage runner: the Kafka loop around a stage.

It polls the stage's input as a consumer-group member, hands each record to the stage's
RecordProcessor (streamer.runtime.processor: decode, attempts, ids and lineage, dead letters),
produces what comes back (acks=all) and only then marks the input finished so its offset can be
committed. Many records are in flight at once; when the stage's concurrency is reached the
partitions are paused while the poll loop keeps the group membership alive.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord

from streamer import metrics
from streamer.config import Settings
from streamer.kafka import produced
from streamer.kafka.clients import TopicNames
from streamer.kafka.group import GroupMember, abandon
from streamer.kafka.health import BROKER_VERDICTS, BrokerWatch
from streamer.llm.client import LLMPool
from streamer.runtime import outcomes
from streamer.runtime.processor import Output, RecordProcessor, Source
from streamer.runtime.stage import BoundStage, Stage, writers_of
from streamer.state.manager import StateLockedError, StateManager
from streamer.state.table import TopicTable
from streamer.storage.generation import LLM_CARD_KEYS, endpoint_of, record_generation

log = logging.getLogger(__name__)

FULL_POLL_INTERVAL = 10.0  # seconds; far below the group's max poll interval (300 s)
# A stage in batch mode waits minutes for its batches: stopping or handing partitions over does not wait
# for them, as whoever takes the records next re-attaches to the same batches (streamer.llm.batch).
BATCH_LANE_WAIT = 2.0


def generation_settings(bound: BoundStage) -> dict[str, Any]:
    """The settings that shape a stage's records: version, LLM endpoint and sampling, options. Never a key."""
    out: dict[str, Any] = {"version": bound.version}
    if bound.prompt is not None:
        llm = bound.settings.llm
        out["llm_endpoint"] = endpoint_of(llm.base_url)
        out["llm"] = {key: getattr(llm, key) for key in LLM_CARD_KEYS}
    options = bound.options.model_dump(mode="json")
    if options:
        out["options"] = options
    return out


class StageRunner(GroupMember):
    def __init__(
        self, stage: Stage, settings: Settings, producer: AIOKafkaProducer, pool: LLMPool, stop: asyncio.Event,
        broker: BrokerWatch | None = None,
    ) -> None:
        self.stage = stage
        self.bound = stage.bind(settings)
        self.data_dir = settings.storage.data_dir
        self.topic = TopicNames(settings.kafka.topic_prefix)
        super().__init__(stage.name, settings, [self.topic(stage.input_topic)], self.topic(self.bound.group), broker,
                         stop)
        self.tables = {name: TopicTable(settings, name, model) for name, model in stage.tables.items()}
        self.resources: Any = None
        self.state = (StateManager(stage.state, settings, stage.name, self.bound.settings, self.bound.options)
                      if stage.state else None)
        self._snapshotting = False
        self.producer = producer
        llm = pool.client(self.bound.settings.llm, stage.name, cache_scope=self.bound.settings.version or "")
        self.processor = RecordProcessor(self.bound, llm, retry_backoff=settings.runtime.retry_backoff,
                                         tables=self.tables, resources=self._resources)
        self.tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self.processed_partitions: dict[int, int] = {}
        self.max_in_flight = stage.max_in_flight(self.bound.settings.records_in_flight)
        self._slot_freed = asyncio.Event()  # set when a record finishes: wakes a full loop at once
        self._slot_freed_at: float | None = None
        self.outcome = outcomes.of(stage.name)  # records given and dead-lettered in this process
        self.outcome.idle = lambda: self.in_flight == 0 and self.last_lag == 0
        for table in self.tables.values():
            table.hopeless = functools.partial(self._table_hopeless, table.name)
        self._said_hopeless: set[str] = set()
        self._other_workers = outcomes.OtherWorkers(settings)

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    # Main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        if self.state is not None:
            try:
                self.state.lock()  # before joining: a second writer must not disturb the first one's group
            except StateLockedError:
                abandon(self.consumer)  # never started: nothing to leave, but collected it would say "unclosed"
                raise
        # What this run makes records with, kept beside the store for the dataset card (storage.generation).
        await asyncio.to_thread(record_generation, self.data_dir, self.stage.name, generation_settings(self.bound))
        # Setup first: it may start slow work in the background (the encoder loads in its thread).
        if self.stage.setup is not None:
            self.resources = await self.stage.setup(self.bound.settings, self.bound.options)
        # Joining takes a while (a broker may hold a join for a second or more): it goes on in the
        # background while tables load. No record is taken before both are ready.
        await self.start()
        for table in self.tables.values():
            await table.start()
        log.info("stage %s %s: %s -> %s, concurrency %d, attempts %d", self.stage.name, self.bound.identity,
                 self.stage.input_topic, ", ".join(self.stage.output_topics), self.bound.settings.concurrency,
                 self.bound.settings.attempts)
        try:
            while not self.stop_event.is_set() and self.fatal is None:
                free = self.max_in_flight - self.in_flight
                if free <= 0:
                    # Full: a finished record wakes the loop at once, and the next records are
                    # already in the consumer's buffer. Only when no slot frees for a long while
                    # are the partitions paused and polled, as the group wants a poll now and then
                    # (a paused poll drops the buffer, so it is not done on every wake).
                    await self._wait_for_slot(timeout=FULL_POLL_INTERVAL)
                    free = self.max_in_flight - self.in_flight
                self.set_paused(free <= 0)
                # Only an idle stage's wait is cut short by a stop: a busy one ends its drain later anyway.
                batch = await self.poll(max(1, free), timeout_ms=0 if free <= 0 else 200, wakeable=not self.tasks)
                for tp, records in self.take_ready(batch).items():
                    for record in records:
                        self._start(tp, record)
                await self.maybe_commit()
            await self._drain()
        finally:
            await self.stop()
            for table in self.tables.values():
                await table.stop()
            if self.state is not None:
                self.state.unlock()
            self._log_summary()
        if self.fatal is not None:
            raise self.fatal

    async def _wait_for_slot(self, timeout: float) -> None:
        self._slot_freed.clear()
        waits = {asyncio.ensure_future(self._slot_freed.wait()), asyncio.ensure_future(self.stop_event.wait())}
        _, pending = await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for wait in pending:
            wait.cancel()

    def _start(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        tracker = self.track(tp, record.offset)
        if tracker is None:
            return  # partition was revoked between fetch and now; it will be redelivered
        if self._slot_freed_at is not None:
            # How long a slot freed at the concurrency limit stayed empty (bench/pipeline.py reads it).
            metrics.SLOT_REFILL.labels(self.stage.name).observe(time.monotonic() - self._slot_freed_at)
            self._slot_freed_at = None
        log.debug("stage %s: start %s[%d]@%d", self.stage.name, tp.topic, tp.partition, record.offset)
        task = asyncio.create_task(self._handle(tp, record))
        self.tasks[task] = tp
        metrics.IN_FLIGHT.labels(self.stage.name).set(self.in_flight)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        if self.in_flight >= self.max_in_flight and self._slot_freed_at is None:
            self._slot_freed_at = time.monotonic()
        self.tasks.pop(task, None)
        self._slot_freed.set()
        metrics.IN_FLIGHT.labels(self.stage.name).set(self.in_flight)
        if not task.cancelled() and (exc := task.exception()) is not None and self.fatal is None:
            if not isinstance(exc, BROKER_VERDICTS):  # the broker watch has said it once for everyone
                log.error("stage %s: fatal error, stopping: %s", self.stage.name, exc)
            self.fatal = exc

    async def _drain(self) -> None:
        await self._drain_tasks()
        if self.state is not None and self.state.dirty:
            await self.state.snapshot(broker_away=self.fenced or self.broker_away)

    async def _drain_tasks(self) -> None:
        if not self.tasks:
            return
        if self.fenced or (self.broker is not None and self.broker.failure is not None):
            # The broker is gone or its topics are: nothing finished now could be produced or
            # committed. The LLM answers so far are cached, so redelivered records cost nothing twice.
            for task in list(self.tasks):
                task.cancel()
            await asyncio.wait(list(self.tasks))
            log.info("stage %s: abandoned its in-flight records", self.stage.name)
            return
        deadline = self._wait_limit(self.settings.runtime.drain_budget)
        log.info("stage %s: draining %d in-flight records (up to %.0fs)", self.stage.name, self.in_flight, deadline)
        tasks = list(self.tasks)
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.wait(tasks))}
        if self.broker is not None:  # a verdict on the broker ends the drain: nothing can be produced
            waits.add(asyncio.ensure_future(self.broker.failed.wait()))
        await asyncio.wait(waits, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
        for wait in waits:
            wait.cancel()
        pending = [task for task in tasks if not task.done()]
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)
            log.warning("stage %s: %d records not finished by the drain deadline; they will be redelivered",
                        self.stage.name, len(pending))
        log.info("stage %s: drained %d records", self.stage.name, len(tasks) - len(pending))

    async def before_revoke(self, partitions: set[TopicPartition]) -> None:
        # Give the revoked partitions' records a bounded chance to finish, then abandon them:
        # the new owner redelivers what was not committed, and ids make the repeat harmless.
        mine = [t for t, tp in self.tasks.items() if tp in partitions]
        if mine:
            _, pending = await asyncio.wait(mine, timeout=self._wait_limit(self.settings.runtime.rebalance_wait))
            for task in pending:
                task.cancel()
        if self.state is not None and self.state.dirty:
            await self.state.snapshot(broker_away=self.fenced or self.broker_away)

    async def after_assign(self, partitions: set[TopicPartition]) -> None:
        # A stateful stage (re)builds its state before its input's first record: after a
        # takeover this member must know everything the previous writer decided.
        if self.state is not None and partitions:
            await self.state.restore()

    def _table_hopeless(self, name: str) -> str | None:
        """Why table `name` will stay empty (its writers here dead-letter everything), said once."""
        why = outcomes.hopeless(writers_of(name), self._other_workers.outcome)
        if why is not None and name not in self._said_hopeless:
            self._said_hopeless.add(name)
            log.warning("stage %s: %s will stay empty: %s; its records go to the dlq at once instead of waiting",
                        self.stage.name, name, why)
        return why

    def _wait_limit(self, seconds: float) -> float:
        return min(seconds, BATCH_LANE_WAIT) if self.bound.settings.llm.mode == "batch" else seconds

    # One record ---------------------------------------------------------------------------
    def _resources(self) -> Any:
        return self.state.state if self.state is not None else self.resources

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        started = time.monotonic()
        metrics.RECORDS_IN.labels(self.stage.name).inc()
        tracker = self.offsets.get(tp)
        outputs = await self.processor.process(record.value, Source(tp.topic, tp.partition, record.offset))
        # Outputs acknowledged by the broker before the input may be committed.
        if not await self._produce(outputs):
            return  # stopping while the broker is away: left unfinished, so it is redelivered
        for output in outputs:
            metrics.RECORDS_OUT.labels(self.stage.name, output.topic).inc()
        self.outcome.note(outputs)
        metrics.RECORDS_DONE.labels(self.stage.name).inc()
        metrics.LATENCY.labels(self.stage.name).observe(time.monotonic() - started)
        self.processed_partitions[tp.partition] = self.processed_partitions.get(tp.partition, 0) + 1
        if self.offsets.get(tp) is tracker and tracker is not None:
            tracker.finished(record.offset)
        if self.state is not None and self.state.note_processed() and not self._snapshotting:
            self._snapshotting = True
            try:
                await self.state.snapshot(broker_away=self.fenced or self.broker_away)
            finally:
                self._snapshotting = False

    async def _produce(self, outputs: list[Output]) -> bool:
        """Send and wait for acks; False if given up because the process is stopping. While the
        broker is away, wait for it (the broker watch decides when to give up) and send again:
        a repeat carries the same ids, so it is harmless."""
        while True:
            try:
                if self.broker is None:
                    await self._send(outputs)
                else:
                    await self.broker.unless_away(self._send(outputs))
                return True
            except (KafkaError, asyncio.TimeoutError) as exc:
                retriable = isinstance(exc, (KafkaTimeoutError, asyncio.TimeoutError)) or exc.retriable
                if self.broker is None or self.fenced:
                    raise
                if not retriable:
                    await self.broker.recheck()  # a broker replaced under us explains odd errors best
                    raise
                log.debug("stage %s: producing failed (%s); waiting for the broker", self.stage.name, exc)
                await asyncio.sleep(self.settings.runtime.retry_backoff)
                if not await self.broker.wait_reachable(self.stop_event):
                    return False

    async def _send(self, outputs: list[Output]) -> None:
        sends = [await self.producer.send(self.topic(out.topic), out.value, key=out.key) for out in outputs]
        for metadata in await asyncio.gather(*sends):
            produced.note(metadata)

    def _log_summary(self) -> None:
        parts = ", ".join(f"p{p}={n}" for p, n in sorted(self.processed_partitions.items())) or "none"
        log.info("stage %s: processed records by partition: %s", self.stage.name, parts)

