"""The stage runner: turns a `Stage` declaration into a consumer-group member.

Per input record: decode and validate, call the stage (retrying failed attempts with backoff),
wrap outputs in envelopes with deterministic ids and lineage, produce them (acks=all), and only
then mark the input finished so its offset can be committed. After the last attempt the record
goes to `dlq` with the reason. Many records are in flight at once; when the stage's concurrency
is reached the partitions are paused while the poll loop keeps the group membership alive.
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
from pydantic import ValidationError

from streamer import metrics
from streamer.backoff import jittered_backoff
from streamer.config import Settings, StageSettings
from streamer.kafka.clients import TopicNames
from streamer.kafka.group import GroupMember
from streamer.kafka.health import BROKER_VERDICTS, BrokerWatch
from streamer.llm.client import LLMPool, LLMRequestError
from streamer.records import DeadLetter, Envelope, Lineage, StageStamp, derived_id, stable_hash
from streamer.runtime.stage import Emit, RecordLLM, Stage, StageContext
from streamer.state.manager import StateManager
from streamer.state.table import TopicTable

log = logging.getLogger(__name__)


class PermanentError(Exception):
    """The input itself is unusable; retrying cannot help."""


class StageRunner(GroupMember):
    def __init__(
        self, stage: Stage, settings: Settings, producer: AIOKafkaProducer, pool: LLMPool, stop: asyncio.Event,
        broker: BrokerWatch | None = None,
    ) -> None:
        self.stage = stage
        self.topic = TopicNames(settings.kafka.topic_prefix)
        self.stage_settings: StageSettings = stage.settings_in(settings)
        super().__init__(stage.name, settings, [self.topic(stage.input_topic)],
                         self.topic(stage.group(self.stage_settings)), broker)
        self.options = stage.options_in(self.stage_settings)
        self.prompt = stage.effective_prompt(self.stage_settings)
        self.version = stage.version(self.stage_settings)
        self.identity = stage.identity(self.stage_settings)
        self.tables = {name: TopicTable(settings, name, model) for name, model in stage.tables.items()}
        self.resources: Any = None
        self.state = (StateManager(stage.state, settings, stage.name, self.stage_settings, self.options)
                      if stage.state else None)
        self._snapshotting = False
        self.producer = producer
        self.llm = pool.client(self.stage_settings.llm, stage.name, cache_scope=self.stage_settings.version or "")
        self.stop_event = stop
        self.tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self.processed_partitions: dict[int, int] = {}

    @property
    def in_flight(self) -> int:
        return len(self.tasks)

    # Main loop ------------------------------------------------------------------------------
    async def run(self) -> None:
        # Tables and resources first: the first record must already see them.
        for table in self.tables.values():
            await table.start()
        if self.stage.setup is not None:
            self.resources = await self.stage.setup(self.stage_settings, self.options)
        if self.state is not None:
            self.state.lock()
        await self.start()
        log.info("stage %s %s: %s -> %s, concurrency %d, attempts %d", self.stage.name, self.identity,
                 self.stage.input_topic, ", ".join(self.stage.output_topics), self.stage_settings.concurrency,
                 self.stage_settings.attempts)
        try:
            while not self.stop_event.is_set() and self.fatal is None:
                free = self.stage_settings.concurrency - self.in_flight
                # Paused partitions keep the group membership alive while we are full.
                self.set_paused(free <= 0)
                batch = await self.poll(max(1, free), timeout_ms=100 if free <= 0 else 200)
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

    def _start(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        tracker = self.track(tp, record.offset)
        if tracker is None:
            return  # partition was revoked between fetch and now; it will be redelivered
        log.debug("stage %s: start %s[%d]@%d", self.stage.name, tp.topic, tp.partition, record.offset)
        task = asyncio.create_task(self._handle(tp, record))
        self.tasks[task] = tp
        metrics.IN_FLIGHT.labels(self.stage.name).set(self.in_flight)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self.tasks.pop(task, None)
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
        deadline = self.settings.runtime.drain_budget
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
            _, pending = await asyncio.wait(mine, timeout=self.settings.runtime.rebalance_wait)
            for task in pending:
                task.cancel()
        if self.state is not None and self.state.dirty:
            await self.state.snapshot(broker_away=self.fenced or self.broker_away)

    async def after_assign(self, partitions: set[TopicPartition]) -> None:
        # A stateful stage (re)builds its state before its input's first record: after a
        # takeover this member must know everything the previous writer decided.
        if self.state is not None and partitions:
            await self.state.restore()

    # One record ---------------------------------------------------------------------------
    async def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        started = time.monotonic()
        metrics.RECORDS_IN.labels(self.stage.name).inc()
        tracker = self.offsets.get(tp)
        envelope: Envelope | None = None
        try:
            envelope, payload = self._decode(record)
            outputs = await self._process(envelope, payload)
        except _DeadLetter as dead:
            outputs = [self._dead_letter(tp, record, envelope, dead)]
        # Outputs acknowledged by the broker before the input may be committed.
        if not await self._produce(outputs):
            return  # stopping while the broker is away: left unfinished, so it is redelivered
        for topic, _, _ in outputs:
            metrics.RECORDS_OUT.labels(self.stage.name, self.topic.unprefixed(topic)).inc()
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

    async def _produce(self, outputs: list[tuple[str, bytes, bytes]]) -> bool:
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

    async def _send(self, outputs: list[tuple[str, bytes, bytes]]) -> None:
        sends = [await self.producer.send(topic, value, key=key) for topic, key, value in outputs]
        await asyncio.gather(*sends)

    def _decode(self, record: ConsumerRecord) -> tuple[Envelope, Any]:
        try:
            envelope = Envelope.from_bytes(record.value)
        except (ValueError, ValidationError) as exc:
            raise _DeadLetter(f"input is not a synthstream record: {_first_line(exc)}", "DecodeError", 1) from None
        try:
            # A stage reads the fields it declares: fields added upstream later do not break it.
            fields = self.stage.input_model.model_fields
            payload = self.stage.input_model.model_validate({k: v for k, v in envelope.data.items() if k in fields})
        except ValidationError as exc:
            raise _DeadLetter(
                f"input is not a valid {self.stage.input_model.__name__}: {_first_line(exc)}", "ValidationError", 1
            ) from None
        return envelope, payload

    async def _process(self, envelope: Envelope, payload: Any) -> list[tuple[str, bytes, bytes]]:
        attempts = self.stage_settings.attempts
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            resources = self.state.state if self.state is not None else self.resources
            ctx = StageContext(self.stage.name, self.stage_settings, self.options, RecordLLM(self.llm),
                               envelope, attempt, self.prompt, self.tables, resources,
                               output_id=functools.partial(derived_id, envelope.id, self.stage.name, self.identity))
            try:
                emits = await self.stage.process(payload, ctx)
                return [self._wrap(envelope, emit, ctx) for emit in emits]
            except asyncio.CancelledError:
                raise
            except LLMRequestError as exc:  # the endpoint refuses this request: no point retrying
                metrics.RECORDS_FAILED.labels(self.stage.name).inc()
                raise _DeadLetter(str(exc), type(exc).__name__, attempt) from None
            except Exception as exc:  # noqa: BLE001 - any stage failure is retried, then dead-lettered
                metrics.RECORDS_FAILED.labels(self.stage.name).inc()
                last = exc
                log.debug("stage %s: attempt %d/%d for %s failed: %s", self.stage.name, attempt, attempts,
                          envelope.id, exc)
                if attempt < attempts:
                    await asyncio.sleep(jittered_backoff(attempt - 1, base=self.settings.runtime.retry_backoff))
        assert last is not None
        raise _DeadLetter(str(last) or repr(last), type(last).__name__, attempts)

    def _wrap(self, parent: Envelope, emit: Emit, ctx: StageContext) -> tuple[str, bytes, bytes]:
        target = emit.topic or self.stage.output_topics[0]
        if target not in self.stage.output_topics:
            raise ValueError(f"stage {self.stage.name} emitted to undeclared topic {target!r}")
        lineage = parent.lineage.model_copy(deep=True)
        lineage.stages.append(StageStamp(stage=self.stage.name, version=self.version,
                                         model=ctx.llm.model if ctx.llm.calls else None))
        if emit.seed_ids is not None:
            lineage.seed_ids = list(emit.seed_ids)
        lineage.details.update(emit.details)
        out = Envelope(
            id=derived_id(parent.id, self.stage.name, self.identity, emit.variant),
            kind=emit.data.kind, root_id=parent.root_id, parent_id=parent.id,
            method=emit.method or parent.method, simulated=parent.simulated or ctx.llm.simulated,
            lineage=lineage, data=emit.data.model_dump(mode="json"),
        )
        return self.topic(target), parent.root_id.encode(), out.to_bytes()

    def _dead_letter(
        self, tp: TopicPartition, record: ConsumerRecord, envelope: Envelope | None, dead: _DeadLetter
    ) -> tuple[str, bytes, bytes]:
        metrics.RECORDS_DLQ.labels(self.stage.name).inc()
        raw = record.value.decode("utf-8", "replace") if record.value is not None else None
        letter = DeadLetter(
            stage=self.stage.name, input_topic=tp.topic, partition=tp.partition, offset=record.offset,
            error=dead.reason[:4000], error_type=dead.error_type, attempts=dead.attempts,
            input=envelope.model_dump(mode="json") if envelope else raw,
        )
        parent_id = envelope.id if envelope else stable_hash(tp.topic, str(tp.partition), str(record.offset))
        root_id = envelope.root_id if envelope else parent_id
        out = Envelope(
            id=derived_id(parent_id, self.stage.name, self.identity, "dlq"), kind=DeadLetter.kind,
            root_id=root_id, parent_id=parent_id, method=envelope.method if envelope else None,
            simulated=envelope.simulated if envelope else False,
            lineage=envelope.lineage if envelope else Lineage(),
            data=letter.model_dump(mode="json"),
        )
        log.warning("stage %s: %s -> dlq after %d attempt(s): %s", self.stage.name, parent_id, dead.attempts,
                    dead.reason[:200])
        return self.topic("dlq"), root_id.encode(), out.to_bytes()

    def _log_summary(self) -> None:
        parts = ", ".join(f"p{p}={n}" for p, n in sorted(self.processed_partitions.items())) or "none"
        log.info("stage %s: processed records by partition: %s", self.stage.name, parts)


class _DeadLetter(Exception):
    def __init__(self, reason: str, error_type: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type
        self.attempts = attempts


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
