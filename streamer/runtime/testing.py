"""Run a stage on one record in-process: no broker, no worker process, a scripted LLM.

    outputs = run_stage(judge.STAGE, record, replies=[{"scores": {...}, "analysis": "..."}],
                        config={"threshold": 5})

This is the stage's real RecordProcessor (decode → attempts → ids and lineage → dead letter) with
`ScriptedLLM` in place of the endpoint: what a stage makes of given LLM replies — its prompt,
its delimiting, thresholds, schema failures ending in a dead letter — is tested here in
milliseconds. Commits, rebalances and kills are for the real-broker tests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

from pydantic import BaseModel, ValidationError

from streamer.config import LLMSettings, Settings
from streamer.llm.replies import content_problem
from streamer.llm.results import LLMOutputError, LLMResult
from streamer.records import Envelope, RecordData, new_root
from streamer.runtime.processor import RecordProcessor, Source
from streamer.runtime.stage import Stage


class ScriptedLLM:
    """Answers from a script, one reply per call, in order; keeps every conversation it was sent.

    A reply is an object or JSON text (for `structured`, validated against the requested model:
    one that does not fit fails like the real client's last re-ask), plain text (for
    `complete`), or an exception to raise."""

    def __init__(self, replies: Iterable[Any] = (), *, model: str = "scripted", simulated: bool = False) -> None:
        self.replies = list(replies)
        self.settings = LLMSettings(model=model)
        self.simulated = simulated
        self.asked: list[list[dict[str, str]]] = []

    @property
    def model(self) -> str:
        return self.settings.model

    def _next(self, messages: list[dict[str, str]]) -> Any:
        self.asked.append(messages)
        if not self.replies:
            raise AssertionError(f"the script has no reply left for call {len(self.asked)}")
        reply = self.replies.pop(0)
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def complete(self, messages: list[dict[str, str]], *, min_words: int = 0, **params: Any) -> LLMResult:
        reply = self._next(messages)
        # The real client's content checks, as its last re-ask fails them.
        if (problem := content_problem(str(reply), messages, min_words)) is not None:
            raise LLMOutputError(f"output failed the content checks: {problem}")
        return LLMResult(str(reply), self.model, self.simulated, False)

    async def structured(self, messages: list[dict[str, str]], model: type[BaseModel], **params: Any) -> LLMResult:
        reply = self._next(messages)
        content = reply if isinstance(reply, str) else json.dumps(
            reply.model_dump(mode="json") if isinstance(reply, BaseModel) else reply)
        try:
            parsed = model.model_validate_json(content)
        except ValidationError as exc:
            raise LLMOutputError(f"output failed schema {model.__name__}: {exc}") from None
        return LLMResult(content, self.model, self.simulated, False, parsed=parsed)


class StaticTable:
    """A table (streamer.state.table.TopicTable) that holds given records and never changes."""

    def __init__(self, envelopes: Iterable[Envelope], model: type[RecordData]) -> None:
        self.rows = {e.id: (e, model.model_validate(e.data)) for e in envelopes}
        self.changes = 1

    async def wait_for(self, count: int, timeout: float) -> bool:
        return len(self.rows) >= count


async def run_stage_async(stage: Stage, record: Envelope | RecordData | bytes, replies: Iterable[Any] = (), *,
                          llm: ScriptedLLM | None = None, config: dict[str, Any] | None = None,
                          tables: dict[str, Any] | None = None, resources: Any = None) -> list[Envelope]:
    """The envelopes the stage makes of `record` (dead letters included), with `config` as its
    `[stages.NAME]` table and `llm` (default: a ScriptedLLM of `replies`) as its endpoint."""
    settings = Settings(stages={stage.name: dict(config or {})})
    bound = stage.bind(settings)
    if resources is None:
        resources = await bound.resources_in_process()
    processor = RecordProcessor(bound, llm or ScriptedLLM(replies), retry_backoff=0.0, tables=tables or {},
                                resources=lambda: resources)
    if isinstance(record, RecordData):
        record = new_root(record)
    value = record.to_bytes() if isinstance(record, Envelope) else record
    outputs = await processor.process(value, Source(settings.kafka.topic_prefix + stage.input_topic, 0, 0))
    return [out.envelope for out in outputs]


def run_stage(stage: Stage, record: Envelope | RecordData | bytes, replies: Iterable[Any] = (),
              **options: Any) -> list[Envelope]:
    """`run_stage_async` for plain (non-async) tests."""
    return asyncio.run(run_stage_async(stage, record, replies, **options))
