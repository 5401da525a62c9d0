"""What a stage author writes: a prompt, an output schema and an async function.

A stage knows nothing about Kafka. It receives a typed input record and a `StageContext`
(its settings, its options and an LLM client) and returns zero or more `Emit`s. The runtime
wraps them in envelopes with deterministic ids and lineage, produces them and commits.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterable

from pydantic import BaseModel, ConfigDict

from streamer.config import ConfigError, Settings, StageSettings
from streamer.llm import context
from streamer.llm.results import LLMContextError, LLMResult
from streamer.records import Envelope, RecordData, stable_hash


@dataclass(frozen=True)
class Prompt:
    """A versioned prompt. `version` is bumped by hand on a deliberate change; `digest`
    changes with any edit of the text, so a forgotten bump still changes the stage version.
    `tags` names every tag the stage wraps untrusted text in: no untrusted text may contain any
    of them (see `delimit`)."""

    version: str
    system: str
    user: str
    tags: tuple[str, ...] = ()

    def delimit(self, text: str, tag: str) -> str:
        """Untrusted `text` as a <tag> block of this prompt, defused against all of its tags."""
        if tag not in self.tags:
            raise ValueError(f"tag {tag!r} is not among this prompt's tags {self.tags}")
        return delimit(text, tag, self.tags)

    def defuse(self, text: str) -> str:
        """Untrusted `text` placed inside a block the prompt builds itself (e.g. a worked example)."""
        return defuse(text, self.tags)

    @property
    def digest(self) -> str:
        return stable_hash(self.system, self.user, length=8)

    @property
    def label(self) -> str:
        return f"{self.version}-{self.digest}"

    def messages(self, **fields: Any) -> list[dict[str, str]]:
        return [
            {"role": "system", "content": self.system.format(**fields)},
            {"role": "user", "content": self.user.format(**fields)},
        ]

    @classmethod
    def from_file(cls, path: Path, tags: tuple[str, ...] = ()) -> Prompt:
        """A prompt override: TOML with `version`, `system` and `user` (same placeholders); the
        tags are the stage's, since its code does the wrapping."""
        try:
            raw = tomllib.loads(path.read_text())
            return cls(version=str(raw["version"]), system=raw["system"], user=raw["user"], tags=tags)
        except (OSError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
            raise ConfigError(f"prompt file {path}: needs TOML keys version, system and user ({exc!r})") from None


log = logging.getLogger(__name__)

# Completion budget for answers that are long lists (subjects, syllabi, taxonomies): the usual
# per-call default would truncate them. A larger configured max_tokens still wins.
LIST_OUTPUT_TOKENS = 4096


# Chat-template control tokens of the common model families (ChatML's <|im_start|>, Llama 3's
# <|eot_id|>, Phi's <|end|>, Llama 2 and Mistral's [INST] and <<SYS>>, Gemma's turns, <s>): a
# server that tokenises special tokens in message text would end the user's turn at them.
_CONTROL_TOKEN = re.compile(r"<\|[^<>|\s]{1,48}\|>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>",
                            re.IGNORECASE)


def _spaced(token: str) -> str:
    """`<|im_end|>` -> `< |im_end| >`: still readable, no longer the token."""
    return f"{token[0]} {token[1:-1]} {token[-1]}"


def defuse(text: str, tags: Iterable[str]) -> str:
    """Untrusted text with every opening or closing tag named in `tags` (in any case or spacing)
    and every chat-template control token broken up, so it can neither end the block it sits in
    early nor open another one, nor end the conversation turn."""
    text = _CONTROL_TOKEN.sub(lambda m: _spaced(m.group(0)), text)
    names = sorted({t for t in tags if t}, key=len, reverse=True)
    if names:
        pattern = re.compile(r"<\s*(/?)\s*(" + "|".join(map(re.escape, names)) + r")(?=[\s/>])", re.IGNORECASE)
        text = pattern.sub(lambda m: f"<{m.group(1)} {m.group(2)}", text)
    return text


def delimit(text: str, tag: str, tags: Iterable[str] = ()) -> str:
    """Wrap untrusted text in <tag>…</tag>, defused (see `defuse`) against `tag` and any other
    tags the prompt uses, so the text cannot end the block early and pose as instructions."""
    return f"<{tag}>\n{defuse(text, [tag, *tags])}\n</{tag}>"


@dataclass
class Emit:
    """One output of a stage for one input."""

    data: RecordData
    variant: str | int = 0
    topic: str | None = None  # one of the stage's declared outputs; default: the first
    seed_ids: list[str] | None = None
    details: dict[str, Any] = field(default_factory=dict)  # merged into lineage.details
    method: str | None = None


class NoOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")


StageFn = Callable[[Any, "StageContext"], Awaitable[list[Emit]]]


@dataclass(frozen=True)
class Expected:
    """What a stage's configuration says `handled` inputs must yield (checked by the demo)."""

    low: int
    high: int | None  # None: no upper bound
    llm_calls: int | None = None  # exact, when the configuration fixes it
    rule: str = "one output per input"


def one_each(options: Any, handled: int) -> Expected:
    return Expected(handled, handled)


# Output topic -> the stages declared in this process that write it, so a worker of one stage can
# name the stage to start when a topic it waits for is empty (the runtime cannot import consumers).
_WRITERS: dict[str, dict[str, None]] = {}  # an ordered set per topic


def writers_of(topic: str) -> list[str]:
    return list(_WRITERS.get(topic, []))


@dataclass(frozen=True)
class Stage:
    name: str
    input_topic: str
    output_topics: tuple[str, ...]
    input_model: type[RecordData]
    process: StageFn
    prompt: Prompt | None = None
    concurrency: int = 16
    options_model: type[BaseModel] = NoOptions
    tables: dict[str, type[RecordData]] = field(default_factory=dict)  # topics read whole, by name
    # Called once per process before the first record; its result is `ctx.resources`.
    setup: Callable[[StageSettings, Any], Awaitable[Any]] | None = None
    # A stateful stage's state (streamer.state.manager.StateSpec); the state object is `ctx.resources`.
    state: Any = None
    # Outputs (and LLM calls) its options imply for a number of handled inputs.
    expect: Callable[[Any, int], Expected] = one_each
    description: str = ""
    # CPU-side work done ahead of `process` (e.g. choosing examples with the encoder); its result is
    # `ctx.prepared`. Up to `concurrency` more records prepare while `concurrency` are processed, so
    # that work overlaps the LLM calls instead of holding their slots.
    prepare: StageFn | None = None

    def __post_init__(self) -> None:
        for topic in self.output_topics:  # a stage declared again (dataclasses.replace) is named once
            _WRITERS.setdefault(topic, {})[self.name] = None

    def max_in_flight(self, concurrency: int) -> int:
        """Records in flight for a stage run at `concurrency`: twice that when it prepares ahead."""
        return concurrency * 2 if self.prepare is not None else concurrency

    def bind(self, settings: Settings) -> BoundStage:
        """This stage under `settings`: its options validated, prompt, version and ids resolved once."""
        stage_settings = settings.stage_settings(self.name, default_concurrency=self.concurrency,
                                                 options_model=self.options_model)
        prompt = self.prompt
        if stage_settings.prompt_file is not None:
            prompt = Prompt.from_file(stage_settings.prompt_file, self.prompt.tags if self.prompt else ())
        # Prompt version + text digest (+ the configured stage version): with the model, part of every id.
        label = prompt.label if prompt else "1"
        version = f"{label}+{stage_settings.version}" if stage_settings.version else label
        return BoundStage(
            stage=self, settings=stage_settings, options=stage_settings.options, prompt=prompt, version=version,
            identity=f"{version}@{stage_settings.llm.model}",
            # A stage run under a version has its own group, so it reads its input history from
            # where it chooses while the unversioned workers go on undisturbed.
            group=f"{self.name}@{stage_settings.version}" if stage_settings.version else self.name,
        )


@dataclass(frozen=True)
class BoundStage:
    """A stage with its effective configuration, resolved once by `Stage.bind` and used everywhere."""

    stage: Stage
    settings: StageSettings
    options: Any  # an instance of stage.options_model
    prompt: Prompt | None
    version: str  # prompt version + digest (+ configured version)
    identity: str  # version@model: part of every output id, so a new prompt or model adds new records
    group: str  # consumer group, unprefixed

    @property
    def name(self) -> str:
        return self.stage.name

    def expected(self, handled: int) -> Expected:
        return self.stage.expect(self.options, handled)

    async def resources_in_process(self) -> Any:
        """`ctx.resources` for running the stage without a worker (tests, `estimate`): a stateful
        stage's state made fresh (no changelog to restore from), else what its setup makes."""
        if self.stage.state is not None:
            return self.stage.state.factory(self.settings, self.options)
        if self.stage.setup is not None:
            return await self.stage.setup(self.settings, self.options)
        return None


class RecordFailed(Exception):
    """A failure another attempt cannot mend (e.g. a table that will stay empty): dead-lettered at once."""


# A stage's way of sending less when the prompt does not fit the model's context window: given the
# share of the last prompt that fits, the messages to send instead and what was left out (for the
# record's lineage), or None when nothing more can go. Without one, the runtime cuts the longest
# delimited blocks (documents, examples) of the messages.
Refit = Callable[[float], "tuple[list[dict[str, str]], dict[str, Any]] | None"]


class RecordLLM:
    """The stage's LLM client, remembering per record which model answered and whether it was
    simulated, and what was cut from its prompts to fit the model's context window."""

    def __init__(self, client: Any) -> None:  # streamer.llm.client.LLMClient, or a scripted one
        self._client = client
        self.simulated = False
        self.models: set[str] = set()
        self.calls = 0
        self.cuts: list[dict[str, Any]] = []  # lineage.details["context_cuts"][stage] of the outputs

    @property
    def model(self) -> str:
        return self._client.model

    @property
    def answered_model(self) -> str | None:
        """The model the endpoint said answered this record's calls (several: joined), None without calls."""
        if not self.calls:
            return None
        return ", ".join(sorted(self.models)) or self.model

    def _note(self, result: LLMResult) -> LLMResult:
        self.calls += 1
        self.simulated |= result.simulated
        self.models.add(result.model)
        return result

    async def complete(self, messages: list[dict[str, str]], *, refit: Refit | None = None, **params: Any
                       ) -> LLMResult:
        return self._note(await self._fitted(self._client.complete, messages, refit, params))

    async def structured(self, messages: list[dict[str, str]], model: type[BaseModel], *,
                         refit: Refit | None = None, **params: Any) -> Any:
        """Validated instance of `model`."""
        async def ask(sent: list[dict[str, str]], **p: Any) -> LLMResult:
            return await self._client.structured(sent, model, **p)

        return self._note(await self._fitted(ask, messages, refit, params)).parsed

    async def _fitted(self, ask: Callable[..., Awaitable[LLMResult]], messages: list[dict[str, str]],
                      refit: Refit | None, params: dict[str, Any]) -> LLMResult:
        """The call; when the server says the prompt does not fit its context window, the prompt
        cut (by the stage's `refit`, else its longest delimited blocks) and asked again, up to
        context.MAX_SHRINKS times; then the server's error stands (a dead letter)."""
        for shrink in range(context.MAX_SHRINKS + 1):
            try:
                return await ask(messages, **params)
            except LLMContextError as exc:
                if shrink == context.MAX_SHRINKS:
                    raise
                settings = getattr(self._client, "settings", None)
                max_tokens = exc.max_tokens or params.get("max_tokens") or getattr(settings, "max_tokens", 1024)
                overflow = context.Overflow(exc.limit, exc.prompt_tokens)
                fit = context.fit(overflow, sum(len(m.get("content") or "") for m in messages), int(max_tokens),
                                  getattr(settings, "context_tokens", None))
                if fit.max_tokens is not None:
                    params = {**params, "max_tokens": fit.max_tokens}
                cut: dict[str, Any] = {}
                if fit.share < 1.0:
                    shrunk = refit(fit.share) if refit is not None else context.cut_blocks(messages, fit.share)
                    if shrunk is None:
                        raise  # nothing left to cut: the server's words go to the dead letter
                    messages, cut = shrunk
                self.cuts.append({"limit": fit.limit, "prompt_tokens": exc.prompt_tokens, "share": round(fit.share, 3),
                                  **({"max_tokens": fit.max_tokens} if fit.max_tokens is not None else {}), **cut})
                log.info("prompt over the context window (%s); asking again with %s", str(exc)[:160],
                         f"{fit.share:.0%} of it" + (f", max_tokens {fit.max_tokens}" if fit.max_tokens else ""))
        raise AssertionError("unreachable")

    def list_budget(self) -> int:
        """max_tokens for an answer that is a long list (see LIST_OUTPUT_TOKENS)."""
        return max(self._client.settings.max_tokens, LIST_OUTPUT_TOKENS)


@dataclass
class StageContext:
    stage: str
    settings: StageSettings
    options: Any
    llm: RecordLLM
    record: Envelope
    attempt: int
    prompt: Prompt | None = None
    tables: dict[str, Any] = field(default_factory=dict)  # name -> streamer.state.table.TopicTable
    resources: Any = None
    output_id: Callable[..., str] | None = None  # id the runtime will give output `variant`
    prepared: Any = None  # what the stage's `prepare` returned for this record
