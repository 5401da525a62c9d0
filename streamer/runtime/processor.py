"""One input record through one stage, with no Kafka in sight.

decode and validate the input → call the stage (retrying failed attempts with backoff) → wrap
its outputs in envelopes with deterministic ids and lineage → or, after the last attempt (or at
once for input that can never work), one dead letter with the reason. The stage runner feeds it
records from Kafka and produces what it returns; the test harness (streamer.runtime.testing)
feeds it records directly.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import ValidationError

from streamer import metrics
from streamer.backoff import jittered_backoff
from streamer.llm.results import LLMPermanentError
from streamer.records import DeadLetter, Envelope, Lineage, StageStamp, derived_id, stable_hash
from streamer.runtime.stage import BoundStage, Emit, RecordFailed, RecordLLM, StageContext

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Source:
    """Where an input record was read: named in its dead letter, and the id of an unreadable one."""

    topic: str  # full topic name
    partition: int
    offset: int


@dataclass(frozen=True)
class Output:
    """A record to produce: `topic` is unprefixed, `key` the root id."""

    topic: str
    envelope: Envelope
    value: bytes = field(repr=False)

    @property
    def key(self) -> bytes:
        return self.envelope.root_id.encode()


class RecordProcessor:
    def __init__(self, bound: BoundStage, llm: Any, *, retry_backoff: float, tables: dict[str, Any] | None = None,
                 resources: Callable[[], Any] = lambda: None) -> None:
        self.bound = bound
        self.stage = bound.stage
        self.llm = llm  # streamer.llm.client.LLMClient, or anything with its complete/structured
        self.retry_backoff = retry_backoff
        self.tables = tables or {}
        self.resources = resources  # called per attempt: a stateful stage's state can be rebuilt meanwhile
        # With `prepare`, more records are in flight than `concurrency`; this keeps the processing
        # itself (the LLM calls) at `concurrency`.
        self.processing = asyncio.Semaphore(bound.settings.records_in_flight) if self.stage.prepare else None

    async def process(self, value: bytes | None, source: Source) -> list[Output]:
        envelope: Envelope | None = None
        try:
            envelope, payload = self._decode(value)
            return await self._attempts(envelope, payload)
        except _DeadLetter as dead:
            return [self._dead_letter(value, source, envelope, dead)]

    def _decode(self, value: bytes | None) -> tuple[Envelope, Any]:
        try:
            envelope = Envelope.from_bytes(value or b"")
        except (ValueError, ValidationError) as exc:
            raise _DeadLetter(f"input is not a synthstream record: {_first_line(exc)}", "DecodeError", 1) from None
        model = self.stage.input_model
        try:
            # A stage reads the fields it declares: fields added upstream later do not break it.
            payload = model.model_validate({k: v for k, v in envelope.data.items() if k in model.model_fields})
        except ValidationError as exc:
            raise _DeadLetter(f"input is not a valid {model.__name__}: {_first_line(exc)}", "ValidationError",
                              1) from None
        return envelope, payload

    async def _attempts(self, envelope: Envelope, payload: Any) -> list[Output]:
        attempts = self.bound.settings.attempts
        last: Exception | None = None
        for attempt in range(1, attempts + 1):
            ctx = StageContext(self.stage.name, self.bound.settings, self.bound.options, RecordLLM(self.llm),
                               envelope, attempt, self.bound.prompt, self.tables, self.resources(),
                               output_id=functools.partial(derived_id, envelope.id, self.stage.name,
                                                           self.bound.identity))
            try:
                emits = await self._run(payload, ctx)
                return [self._wrap(envelope, emit, ctx) for emit in emits]
            except asyncio.CancelledError:
                raise
            except (LLMPermanentError, RecordFailed) as exc:  # refused, or a reply will not fit: no point retrying
                metrics.RECORDS_FAILED.labels(self.stage.name).inc()
                raise _DeadLetter(str(exc), type(exc).__name__, attempt) from None
            except Exception as exc:  # noqa: BLE001 - any stage failure is retried, then dead-lettered
                metrics.RECORDS_FAILED.labels(self.stage.name).inc()
                last = exc
                log.debug("stage %s: attempt %d/%d for %s failed: %s", self.stage.name, attempt, attempts,
                          envelope.id, exc)
                if attempt < attempts:
                    await asyncio.sleep(jittered_backoff(attempt - 1, base=self.retry_backoff))
        assert last is not None
        raise _DeadLetter(str(last) or repr(last), type(last).__name__, attempts)

    async def _run(self, payload: Any, ctx: StageContext) -> list[Emit]:
        if self.processing is None:  # no `prepare`
            return await self.stage.process(payload, ctx)
        ctx.prepared = await self.stage.prepare(payload, ctx)
        async with self.processing:
            return await self.stage.process(payload, ctx)

    def _wrap(self, parent: Envelope, emit: Emit, ctx: StageContext) -> Output:
        target = emit.topic or self.stage.output_topics[0]
        if target not in self.stage.output_topics:
            raise ValueError(f"stage {self.stage.name} emitted to undeclared topic {target!r}")
        # New containers, shared contents: the parent's lineage is never changed, and its values are
        # JSON read from the input (nothing mutates them), so the deep copy it was would only cost CPU.
        lineage = parent.lineage.model_copy(update={
            "stages": [*parent.lineage.stages, StageStamp(stage=self.stage.name, version=self.bound.version,
                                                          model=ctx.llm.answered_model)],
            "seed_ids": list(emit.seed_ids if emit.seed_ids is not None else parent.lineage.seed_ids),
            "details": {**parent.lineage.details, **emit.details},
        })
        if ctx.llm.cuts:  # what was left out of the prompt to fit the model's context window
            cuts = dict(lineage.details.get("context_cuts") or {})
            cuts[self.stage.name] = list(ctx.llm.cuts)
            lineage.details["context_cuts"] = cuts
        out = Envelope(
            id=derived_id(parent.id, self.stage.name, self.bound.identity, emit.variant),
            kind=emit.data.kind, root_id=parent.root_id, parent_id=parent.id,
            method=emit.method or parent.method, simulated=parent.simulated or ctx.llm.simulated,
            lineage=lineage, data=emit.data.model_dump(mode="json"),
        )
        return Output(target, out, out.to_bytes())

    def _dead_letter(self, value: bytes | None, source: Source, envelope: Envelope | None,
                     dead: _DeadLetter) -> Output:
        metrics.RECORDS_DLQ.labels(self.stage.name).inc()
        letter = DeadLetter(
            stage=self.stage.name, input_topic=source.topic, partition=source.partition, offset=source.offset,
            error=dead.reason[:4000], error_type=dead.error_type, attempts=dead.attempts,
            input=envelope.model_dump(mode="json") if envelope else
            (value.decode("utf-8", "replace") if value is not None else None),
        )
        parent_id = envelope.id if envelope else stable_hash(source.topic, str(source.partition), str(source.offset))
        root_id = envelope.root_id if envelope else parent_id
        out = Envelope(
            id=derived_id(parent_id, self.stage.name, self.bound.identity, "dlq"), kind=DeadLetter.kind,
            root_id=root_id, parent_id=parent_id, method=envelope.method if envelope else None,
            simulated=envelope.simulated if envelope else False,
            lineage=envelope.lineage if envelope else Lineage(),
            data=letter.model_dump(mode="json"),
        )
        log.warning("stage %s: %s -> dlq after %d attempt(s): %s", self.stage.name, parent_id, dead.attempts,
                    dead.reason[:200])
        return Output("dlq", out, out.to_bytes())


class _DeadLetter(Exception):
    def __init__(self, reason: str, error_type: str, attempts: int) -> None:
        super().__init__(reason)
        self.reason = reason
        self.error_type = error_type
        self.attempts = attempts


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
