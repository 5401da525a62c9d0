"""The LLM simulator over real HTTP (in-process server on a free port), and fill_schema."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import random
import re
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Literal, Optional

import aiohttp
import openai
import pytest
import pytest_asyncio
from pydantic import BaseModel, Field, TypeAdapter, ValidationError, conint

from streamer.llm.simulator import (
    SIMULATOR_FINGERPRINT,
    SIMULATOR_MODEL,
    STATS_KEY,
    SimulatorSettings,
    SimulatorStats,
    create_app,
    fill_schema,
    start_simulator,
)

ROOT = Path(__file__).resolve().parents[1]
WORD = re.compile(r"\w[\w'-]*")

DOC = (
    "Apache Kafka partitions let consumers scale horizontally while each partition keeps "
    "strict ordering of its records, and consumer groups rebalance when members join or leave."
)
MESSAGES = [
    {"role": "system", "content": "You write training data. Reply with JSON only."},
    {"role": "user", "content": DOC},
]


# --------------------------------------------------------------------------- models under test


class Step(BaseModel):
    title: str
    detail: str = Field(min_length=12, max_length=120)
    minutes: int = Field(ge=1, le=90)


class Reference(BaseModel):
    label: str
    pages: Optional[conint(ge=1, le=500)] = None


class Lesson(BaseModel):
    name: str
    kind: Literal["lesson"]
    level: Literal["beginner", "intermediate", "advanced"]
    keywords: list[str] = Field(min_length=2, max_length=4)
    steps: list[Step] = Field(min_length=1, max_length=3)
    rating: conint(ge=1, le=5)
    summary: Optional[str] = None
    reference: Optional[Reference] = None
    confidence: float = Field(gt=0, lt=1)


def _json_schema_format(model: type[BaseModel]) -> dict[str, Any]:
    # The shape streamer.llm.client sends.
    return {"type": "json_schema",
            "json_schema": {"name": model.__name__, "schema": model.model_json_schema(), "strict": False}}


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


# --------------------------------------------------------------------------- fixtures

Start = Callable[..., Awaitable[int]]


@pytest_asyncio.fixture
async def simulator() -> AsyncIterator[Start]:
    """Start simulators on free ports with the given settings; returns the port."""
    runners: list[Any] = []

    async def start(**settings: Any) -> int:
        runner, port = await start_simulator(SimulatorSettings(port=0, **settings))
        runners.append(runner)
        return port

    yield start
    for runner in runners:
        await runner.cleanup()


def _client(port: int) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)


async def _post(port: int, body: Any, raw: bool = False) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session:
        kwargs = {"data": body} if raw else {"json": body}
        async with session.post(f"http://127.0.0.1:{port}/v1/chat/completions", **kwargs) as resp:
            return resp.status, dict(resp.headers), await resp.json()


async def _get(port: int, path: str) -> Any:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}") as resp:
            assert resp.status == 200
            return await resp.json()


# --------------------------------------------------------------------------- HTTP behaviour


@pytest.mark.asyncio
async def test_models_lists_the_simulator(simulator: Start) -> None:
    port = await simulator()
    assert await _get(port, "/v1/models") == {
        "object": "list",
        "data": [{"id": SIMULATOR_MODEL, "object": "model", "owned_by": "synthstream"}],
    }
    async with _client(port) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == [SIMULATOR_MODEL]


@pytest.mark.asyncio
async def test_json_schema_answer_validates_and_quotes_the_prompt(simulator: Start) -> None:
    port = await simulator()
    async with _client(port) as client:
        resp = await client.chat.completions.create(
            model="my-model", messages=MESSAGES, temperature=0.7, response_format=_json_schema_format(Lesson)
        )
    assert resp.id.startswith("chatcmpl-sim-")
    assert resp.object == "chat.completion"
    assert resp.model == "synthstream-simulator/my-model"  # answers as itself, never as the model asked for
    assert resp.system_fingerprint == SIMULATOR_FINGERPRINT
    choice = resp.choices[0]
    assert choice.index == 0 and choice.message.role == "assistant" and choice.finish_reason == "stop"
    lesson = Lesson.model_validate_json(choice.message.content)
    assert lesson.reference is not None and lesson.summary is not None  # optional fields are filled too

    prompt_words = set(WORD.findall(DOC))
    free_text = [s for s in _strings(lesson.model_dump()) if s not in ("lesson", lesson.level)]
    used = {w for s in free_text for w in WORD.findall(s)}
    assert used and used <= prompt_words
    # Fields named like titles/keywords get short values, prose fields longer ones.
    assert all(len(k.split()) <= 3 for k in lesson.keywords)
    assert len(lesson.summary.split()) >= 4

    usage = resp.usage
    chars = sum(len(m["content"]) for m in MESSAGES)
    assert usage.prompt_tokens == math.ceil(chars / 4)
    assert usage.completion_tokens == math.ceil(len(choice.message.content) / 4)
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


@pytest.mark.asyncio
async def test_same_request_gives_same_content(simulator: Start) -> None:
    port = await simulator()
    async with _client(port) as client:
        async def ask(**extra: Any) -> str:
            resp = await client.chat.completions.create(model=SIMULATOR_MODEL, messages=MESSAGES, **extra)
            return resp.choices[0].message.content

        fmt = _json_schema_format(Lesson)
        assert await ask(response_format=fmt, seed=1) == await ask(response_format=fmt, seed=1)
        plain = await ask(temperature=0.2)
        assert plain == await ask(temperature=0.2)
        assert plain != await ask(temperature=0.2, seed=7)
    assert set(WORD.findall(plain)) <= set(WORD.findall(DOC)) | {w.capitalize() for w in WORD.findall(DOC)}


@pytest.mark.asyncio
async def test_json_object_answer(simulator: Start) -> None:
    port = await simulator()
    async with _client(port) as client:
        resp = await client.chat.completions.create(
            model=SIMULATOR_MODEL, messages=MESSAGES, response_format={"type": "json_object"}
        )
    payload = json.loads(resp.choices[0].message.content)
    assert list(payload) == ["text"] and isinstance(payload["text"], str) and payload["text"]


@pytest.mark.asyncio
async def test_rate_limit_answers_429_with_retry_after(simulator: Start) -> None:
    port = await simulator(rpm=60, burst_seconds=1)
    body = {"model": SIMULATOR_MODEL, "messages": MESSAGES}
    status, _, _ = await _post(port, body)
    assert status == 200
    status, headers, payload = await _post(port, body)
    assert status == 429
    assert headers["Retry-After"] == "1"
    assert 0 < int(headers["retry-after-ms"]) <= 1000
    assert payload["error"]["type"] == "rate_limit_error"
    assert payload["error"]["code"] == "rate_limit_exceeded"
    assert payload["error"]["message"].startswith("Rate limit reached")

    async with _client(port) as client:
        with pytest.raises(openai.RateLimitError) as err:
            await client.chat.completions.create(model=SIMULATOR_MODEL, messages=MESSAGES)
    assert err.value.response.headers["retry-after-ms"]
    stats = await _get(port, "/stats")
    counters = {k: stats[k] for k in ("requests", "completed", "rate_limited", "errors", "malformed", "invalid",
                                      "truncated")}
    assert counters == {"requests": 3, "completed": 1, "rate_limited": 2, "errors": 0, "malformed": 0, "invalid": 0,
                        "truncated": 0}
    # What benchmarks read: one request at a time here, none left open, times in order.
    assert stats["peak_in_flight"] == 1 and stats["in_flight"] == 0
    assert stats["first_request_at"] <= stats["last_completion_at"] and stats["request_seconds"] > 0


@pytest.mark.asyncio
async def test_error_rate_one_always_fails_with_500(simulator: Start) -> None:
    port = await simulator(error_rate=1.0, seed=3)
    async with _client(port) as client:
        with pytest.raises(openai.InternalServerError) as err:
            await client.chat.completions.create(model=SIMULATOR_MODEL, messages=MESSAGES)
    assert err.value.status_code == 500
    assert err.value.body == {"message": "simulated server error", "type": "server_error"}
    assert (await _get(port, "/stats"))["errors"] == 1


@pytest.mark.asyncio
async def test_malformed_rate_one_breaks_every_json_answer(simulator: Start) -> None:
    port = await simulator(malformed_rate=1.0, seed=5)
    async with _client(port) as client:
        formats: list[dict[str, Any]] = [_json_schema_format(Lesson), {"type": "json_object"}]
        for i in range(12):  # enough draws to hit every kind of breakage
            messages = [{"role": "user", "content": f"{DOC} variant {i}"}]
            resp = await client.chat.completions.create(
                model=SIMULATOR_MODEL, messages=messages, response_format=formats[i % 2]
            )
            with pytest.raises(ValueError):
                json.loads(resp.choices[0].message.content)
        # Plain text was not asked to be JSON, so there is nothing to break.
        plain = await client.chat.completions.create(model=SIMULATOR_MODEL, messages=MESSAGES)
    assert plain.choices[0].finish_reason == "stop"
    stats = await _get(port, "/stats")
    assert stats["malformed"] == 12 and stats["completed"] == 13


@pytest.mark.asyncio
async def test_max_tokens_truncates_with_finish_reason_length(simulator: Start) -> None:
    port = await simulator()
    async with _client(port) as client:
        resp = await client.chat.completions.create(
            model=SIMULATOR_MODEL, messages=MESSAGES, max_tokens=5, response_format=_json_schema_format(Lesson)
        )
        newer = await client.chat.completions.create(
            model=SIMULATOR_MODEL, messages=MESSAGES, max_completion_tokens=3
        )
    assert resp.choices[0].finish_reason == "length"
    assert len(resp.choices[0].message.content) == 20
    assert resp.usage.completion_tokens == 5
    assert resp.usage.prompt_tokens == math.ceil(sum(len(m["content"]) for m in MESSAGES) / 4)
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 5
    assert newer.choices[0].finish_reason == "length" and newer.usage.completion_tokens == 3
    assert (await _get(port, "/stats"))["truncated"] == 2


@pytest.mark.asyncio
async def test_bad_requests_get_400(simulator: Start) -> None:
    port = await simulator()
    for body, raw in [(b"{not json", True), ({"model": "m"}, False), ({"messages": []}, False),
                      ({"messages": MESSAGES, "max_tokens": 0}, False),
                      ({"messages": MESSAGES, "response_format": {"type": "xml"}}, False)]:
        status, _, payload = await _post(port, body, raw=raw)
        assert status == 400, body
        assert payload["error"]["type"] == "invalid_request_error"
    assert (await _get(port, "/stats"))["errors"] == 5


@pytest.mark.asyncio
async def test_latency_delays_answers(simulator: Start) -> None:
    port = await simulator(latency=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with _client(port) as client:
        await asyncio.gather(*(client.chat.completions.create(model=SIMULATOR_MODEL, messages=MESSAGES)
                               for _ in range(5)))
    assert 0.2 <= loop.time() - started < 1.0  # concurrent requests sleep concurrently


def test_create_app_exposes_stats() -> None:
    app = create_app(SimulatorSettings())
    assert isinstance(app[STATS_KEY], SimulatorStats)
    assert app[STATS_KEY].requests == 0


def test_run_simulator_serves_until_sigterm() -> None:
    code = ("from streamer.llm.simulator import SimulatorSettings, run_simulator; "
            "run_simulator(SimulatorSettings(port=0))")
    with subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stderr=subprocess.PIPE, text=True) as proc:
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            pattern = r"simulator listening on http://127\.0\.0\.1:(\d+)/v1 \(model synthstream-simulator\)\n"
            match = re.fullmatch(pattern, line)
            assert match, line
            models = asyncio.run(_get(int(match.group(1)), "/v1/models"))
            assert models["data"][0]["id"] == SIMULATOR_MODEL
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


# --------------------------------------------------------------------------- fill_schema

WORDS = WORD.findall(DOC)


class Node(BaseModel):
    name: str
    children: list[Node] = []
    parent: Optional[Node] = None


class Mixed(BaseModel):
    when: dt.datetime
    day: dt.date
    ident: uuid.UUID
    pair: tuple[int, str]
    tags: set[str] = Field(min_length=2, max_length=4)
    counts: dict[str, int]
    choice: int | str
    nothing: None = None
    flag: bool
    ratio: float = Field(ge=0, le=1)
    tenth: float = Field(multiple_of=0.1, ge=0, le=2)
    even: int = Field(multiple_of=2, gt=3, lt=11)
    negative: int = Field(lt=0)
    shout: str = Field(min_length=300)
    tiny: str = Field(max_length=5)
    exact: str = Field(min_length=7, max_length=7)
    letters: list[Literal["a", "b"]] = Field(min_length=3, max_length=3)
    empty_ok: list[int] = Field(default_factory=list, max_length=0)


@pytest.mark.parametrize("model", [Lesson, Step, Reference, Node, Mixed])
def test_fill_schema_validates_pydantic_models(model: type[BaseModel]) -> None:
    schema = model.model_json_schema()
    for seed in range(40):
        value = fill_schema(schema, WORDS, random.Random(seed))
        # Validation raises on a mismatch; the round trip checks nothing was coerced away.
        assert model.model_validate(value).model_dump(mode="json", exclude_unset=True).keys() <= value.keys()


@pytest.mark.parametrize(
    ("schema", "check"),
    [
        ({"type": "string", "enum": ["x", "y"]}, lambda v: v in ("x", "y")),
        ({"const": 42}, lambda v: v == 42),
        ({"type": "integer", "enum": [3, 5]}, lambda v: v in (3, 5)),
        ({"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 7, "maximum": 7}]}, lambda v: v == 7),
        ({"type": ["null", "boolean"]}, lambda v: isinstance(v, bool)),
        ({"type": "null"}, lambda v: v is None),
        ({"oneOf": [{"type": "number", "exclusiveMinimum": 1, "exclusiveMaximum": 2}]}, lambda v: 1 < v < 2),
        ({"type": "integer", "exclusiveMinimum": 4, "exclusiveMaximum": 6}, lambda v: v == 5),
        ({"type": "integer", "minimum": 100}, lambda v: isinstance(v, int) and v >= 100),
        ({"type": "integer"}, lambda v: 0 <= v <= 10),
        ({"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}},
                    {"properties": {"b": {"type": "boolean"}}}]}, lambda v: set(v) == {"a", "b"}),
        ({"$defs": {"S": {"type": "string", "maxLength": 3}}, "$ref": "#/$defs/S"}, lambda v: 0 < len(v) <= 3),
        ({"type": "array", "items": {"type": "integer"}}, lambda v: 1 <= len(v) <= 4),
        ({"type": "array", "items": {"type": "integer"}, "minItems": 9}, lambda v: len(v) == 9),
        ({"type": "array", "items": {"type": "string"}, "maxItems": 0}, lambda v: v == []),
        ({"type": "object", "properties": {"x": {"type": "string"}}, "additionalProperties": False},
         lambda v: list(v) == ["x"]),
        ({"properties": {"y": {}}}, lambda v: isinstance(v["y"], str)),
        ({"type": "string", "format": "email"}, lambda v: re.fullmatch(r"[a-z0-9]+@example\.com", v)),
        ({}, lambda v: isinstance(v, str) and v),
    ],
)
def test_fill_schema_shapes(schema: dict[str, Any], check: Callable[[Any], Any]) -> None:
    for seed in range(10):
        value = fill_schema(schema, WORDS, random.Random(seed))
        assert check(value), value


def test_fill_schema_strings_come_from_the_words() -> None:
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"]
    value = fill_schema({"type": "object", "properties": {"title": {"type": "string"}, "body": {"type": "string"}}},
                        words, random.Random(0))
    assert 1 <= len(value["title"].split()) <= 3
    assert 4 <= len(value["body"].split()) <= 6  # a six-word prompt caps phrases at six words
    # Contiguous runs of the prompt (wrapping around), not a shuffle.
    body = value["body"].split()
    start = words.index(body[0])
    assert body == [words[(start + i) % len(words)] for i in range(len(body))]


def test_fill_schema_is_deterministic_and_needs_no_words() -> None:
    schema = Lesson.model_json_schema()
    assert fill_schema(schema, WORDS, random.Random(9)) == fill_schema(schema, WORDS, random.Random(9))
    Lesson.model_validate(fill_schema(schema, [], random.Random(1)))


def test_fill_schema_keeps_recursive_models_small() -> None:
    value = fill_schema(Node.model_json_schema(), WORDS, random.Random(2))
    Node.model_validate(value)
    assert len(json.dumps(value)) < 20_000


def test_fill_schema_type_adapter_shapes() -> None:
    for tp in (list[int], dict[str, list[str]], Optional[Step], tuple[str, ...], Literal[1, 2]):
        adapter = TypeAdapter(tp)
        for seed in range(10):
            value = fill_schema(adapter.json_schema(), WORDS, random.Random(seed))
            assert adapter.dump_python(adapter.validate_python(value), mode="json") == value


@pytest.mark.asyncio
async def test_invalid_rate_gives_json_that_breaks_the_schema_and_requests_are_listed():
    class Pair(BaseModel):
        first: str
        second: str

    runner, port = await start_simulator(SimulatorSettings(port=0, invalid_rate=1.0))
    try:
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-test", max_retries=0)
        schema = {"type": "json_schema", "json_schema": {"name": "Pair", "schema": Pair.model_json_schema()}}
        reply = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "<doc>tides</doc>"}], response_format=schema)
        await client.close()
        content = json.loads(reply.choices[0].message.content)
        with pytest.raises(ValidationError):
            Pair.model_validate(content)
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{port}/requests") as resp:
                recent = await resp.json()
        assert recent[-1]["messages"][0]["content"] == "<doc>tides</doc>"
    finally:
        await runner.cleanup()


# --------------------------------------------------------------------------- dialects of real servers


def _schema_prompt(model: type[BaseModel]) -> list[dict[str, Any]]:
    schema = json.dumps(model.model_json_schema())
    return [{"role": "user", "content": f"{DOC}\nReply with a JSON object matching this schema:\n{schema}"}]


@pytest.mark.asyncio
async def test_llama_cpp_dialect_refuses_json_schema_with_500_and_fills_json_object_with_a_schema(
        simulator: Start) -> None:
    port = await simulator(response_format="json_object_schema")
    body = {"model": SIMULATOR_MODEL, "messages": MESSAGES}
    status, _, refused = await _post(port, {**body, "response_format": _json_schema_format(Lesson)})
    assert status == 500 and "Input should be 'text' or 'json_object'" in refused["error"]["message"]
    assert "response_format" in refused["error"]["message"]
    fmt = {"type": "json_object", "schema": Lesson.model_json_schema()}
    status, _, answer = await _post(port, {**body, "response_format": fmt})
    assert status == 200
    Lesson.model_validate_json(answer["choices"][0]["message"]["content"])
    assert (await _get(port, "/stats"))["refused_format"] == 1


@pytest.mark.asyncio
async def test_json_object_only_dialect_refuses_schemas_with_400_and_follows_the_schema_in_the_prompt(
        simulator: Start) -> None:
    port = await simulator(response_format="json_object")
    for fmt in (_json_schema_format(Lesson), {"type": "json_object", "schema": Lesson.model_json_schema()}):
        status, _, refused = await _post(port, {"messages": MESSAGES, "response_format": fmt})
        assert status == 400 and "response_format" in refused["error"]["message"], refused
    status, _, answer = await _post(port, {"messages": _schema_prompt(Lesson), "response_format": {"type": "json_object"}})
    assert status == 200
    Lesson.model_validate_json(answer["choices"][0]["message"]["content"])


@pytest.mark.asyncio
async def test_a_server_that_ignores_response_format_answers_prose_unless_the_prompt_shows_a_schema(
        simulator: Start) -> None:
    port = await simulator(response_format="ignored")
    _, _, prose = await _post(port, {"messages": MESSAGES, "response_format": _json_schema_format(Lesson)})
    with pytest.raises(ValueError):
        json.loads(prose["choices"][0]["message"]["content"])
    _, _, answer = await _post(port, {"messages": _schema_prompt(Lesson), "response_format": _json_schema_format(Lesson)})
    Lesson.model_validate_json(answer["choices"][0]["message"]["content"])


@pytest.mark.asyncio
async def test_quirks_dress_answers_as_real_models_write_them(simulator: Start) -> None:
    port = await simulator(quirks=["control_chars", "second_object", "fence", "prose", "think", "reasoning_content"])
    _, _, answer = await _post(port, {"messages": MESSAGES, "response_format": _json_schema_format(Lesson)})
    message = answer["choices"][0]["message"]
    content = message["content"]
    assert content.startswith("<think>") and "```json\n{" in content and "Sure!" in content
    body = content.split("```json\n", 1)[1].split("\n```", 1)[0]
    first, end = json.JSONDecoder(strict=False).raw_decode(body)
    Lesson.model_validate(first)
    assert body[end:].strip().startswith("{")  # a second object follows
    with pytest.raises(ValueError, match="control character"):
        json.loads(body[:end])
    assert message["reasoning_content"]
    port = await simulator(quirks=["smart_quotes"])
    _, _, answer = await _post(port, {"messages": MESSAGES, "response_format": _json_schema_format(Lesson)})
    assert answer["choices"][0]["message"]["content"].startswith("{“name”")
    port = await simulator(quirks=["empty"])
    _, _, answer = await _post(port, {"messages": MESSAGES})
    assert answer["choices"][0]["message"]["content"] == ""
    port = await simulator(quirks=["echo"])
    _, _, answer = await _post(port, {"messages": MESSAGES})
    assert answer["choices"][0]["message"]["content"] == DOC


@pytest.mark.asyncio
async def test_a_verbose_model_stops_at_max_tokens_and_a_small_context_is_refused(simulator: Start) -> None:
    port = await simulator(answer_tokens=300, context_tokens=200)
    status, _, cut = await _post(port, {"messages": MESSAGES, "max_tokens": 100})
    assert status == 200 and cut["choices"][0]["finish_reason"] == "length"
    assert cut["usage"]["completion_tokens"] == 100
    status, _, refused = await _post(port, {"messages": MESSAGES, "max_tokens": 190})
    assert status == 400 and refused["error"]["code"] == "context_length_exceeded"
    assert "maximum context length is 200 tokens" in refused["error"]["message"]
    stats = await _get(port, "/stats")
    assert stats["context_exceeded"] == 1 and stats["truncated"] == 1


@pytest.mark.asyncio
async def test_a_template_that_drops_the_system_message_neither_sees_nor_counts_it(simulator: Start) -> None:
    long_system = [{"role": "system", "content": "Follow these rules carefully. " * 40}, MESSAGES[1]]
    kept, dropped = await simulator(), await simulator(drop_system=True)
    _, _, with_system = await _post(kept, {"messages": long_system})
    _, _, without = await _post(dropped, {"messages": long_system})
    assert without["usage"]["prompt_tokens"] == math.ceil(len(DOC) / 4)
    assert with_system["usage"]["prompt_tokens"] > without["usage"]["prompt_tokens"] + 250
