"""OpenAI-compatible LLM simulator: a real HTTP server for tests, benchmarks and the offline demo.

It answers `/v1/chat/completions` like a hosted model would, including the parts a client has
to cope with: a requests/min token bucket answered with 429 + Retry-After, injected 500s,
malformed JSON, and truncation at `max_tokens`. Content is built from the prompt's own words
and is deterministic per request, so caches and re-runs behave as they would against a real
model called with a fixed seed. Structured output (`response_format=json_schema`) is filled
from the JSON schema pydantic emits, so a well-formed answer always validates.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import re
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any, AsyncIterator, Callable

from aiohttp import web
from pydantic import BaseModel, Field

SIMULATOR_MODEL = "synthstream-simulator"
SIMULATOR_FINGERPRINT = "synthstream-simulator"

CHARS_PER_TOKEN = 4
# Used when a request has no words at all, so content is never empty.
FALLBACK_WORDS = (
    "synthetic data flows through the stream and every record becomes a useful example "
    "with a clear question and a grounded answer"
).split()
_WORD = re.compile(r"\w[\w'-]*")


class SimulatorSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    latency: float = Field(0.0, ge=0, description="seconds of sleep before answering a (non-429) request")
    rpm: int = Field(0, ge=0, description="requests per minute, 0 = unlimited")
    burst_seconds: float = Field(3.0, gt=0, description="bucket capacity in seconds of rpm")
    error_rate: float = Field(0.0, ge=0, le=1, description="probability of a simulated 500")
    malformed_rate: float = Field(0.0, ge=0, le=1, description="probability of broken JSON when JSON was asked")
    invalid_rate: float = Field(0.0, ge=0, le=1, description="probability of valid JSON that breaks the schema")
    keep_requests: int = Field(200, ge=0, description="recent requests served at GET /requests")
    seed: int | None = Field(None, description="seeds fault injection (error/malformed draws)")


@dataclass
class SimulatorStats:
    """Counters of what the simulator answered; `errors` counts 500s and 400s."""

    requests: int = 0
    completed: int = 0
    rate_limited: int = 0
    errors: int = 0
    malformed: int = 0
    invalid: int = 0
    truncated: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


STATS_KEY = web.AppKey("simulator_stats", SimulatorStats)


# --------------------------------------------------------------------------- rate limit


class TokenBucket:
    """Continuously refilling bucket; starts full so a fresh server accepts a burst."""

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = capacity
        self.level = capacity
        self.clock = clock
        self.stamp = clock()

    def take(self) -> float:
        """Take one token: 0.0 when granted, else the seconds until one will be available."""
        now = self.clock()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return 0.0
        return (1.0 - self.level) / self.rate


def _bucket_for(settings: SimulatorSettings) -> TokenBucket | None:
    if settings.rpm <= 0:
        return None
    rate = settings.rpm / 60.0
    return TokenBucket(rate, max(1.0, rate * settings.burst_seconds))


# --------------------------------------------------------------------------- request parsing


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass
class _ChatRequest:
    model: str
    messages: list[dict[str, Any]]
    temperature: Any
    seed: Any
    max_tokens: int | None
    format_type: str  # "text" | "json_object" | "json_schema"
    schema: dict[str, Any] | None


def _parse_request(body: Any) -> _ChatRequest:
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise _BadRequest("'messages' must be a non-empty array of message objects", "messages")
    if body.get("stream"):
        raise _BadRequest("the simulator does not support streaming", "stream")
    model = body.get("model")
    format_type, schema = _parse_response_format(body.get("response_format"))
    return _ChatRequest(
        model=model if isinstance(model, str) and model else SIMULATOR_MODEL,
        messages=messages,
        temperature=body.get("temperature"),
        seed=body.get("seed"),
        max_tokens=_parse_max_tokens(body),
        format_type=format_type,
        schema=schema,
    )


def _parse_max_tokens(body: dict[str, Any]) -> int | None:
    # Newer clients send max_completion_tokens; it wins when both are present, as on OpenAI.
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(f"'{name}' must be a positive integer", name)
        return value
    return None


def _parse_response_format(fmt: Any) -> tuple[str, dict[str, Any] | None]:
    if fmt is None:
        return "text", None
    if not isinstance(fmt, dict) or fmt.get("type") not in ("text", "json_object", "json_schema"):
        raise _BadRequest("'response_format.type' must be text, json_object or json_schema", "response_format")
    if fmt["type"] != "json_schema":
        return fmt["type"], None
    spec = fmt.get("json_schema")
    if not isinstance(spec, dict):
        raise _BadRequest("'response_format.json_schema' must be an object", "response_format.json_schema")
    schema = spec.get("schema")
    if schema is None:
        return "json_object", None  # a name without a schema only promises "some JSON object"
    if not isinstance(schema, dict):
        raise _BadRequest("'response_format.json_schema.schema' must be an object", "response_format")
    return "json_schema", schema


# --------------------------------------------------------------------------- content


def _message_text(message: dict[str, Any]) -> str:
    """Text of a message whose content is a string or a list of parts (vision-style)."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return ""


def prompt_words(messages: list[dict[str, Any]]) -> list[str]:
    """Words of the user messages, else of the system messages, else the built-in list."""
    for role in ("user", "system"):
        text = " ".join(_message_text(m) for m in messages if m.get("role") == role)
        if words := _WORD.findall(text):
            return words
    return list(FALLBACK_WORDS)


def _content_rng(req: _ChatRequest) -> random.Random:
    # Same request -> same content, like a real model called with a fixed seed.
    key = json.dumps([req.model, req.messages, req.temperature, req.seed], sort_keys=True, default=str)
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _word_run(words: list[str], rng: random.Random, n: int) -> str:
    """`n` contiguous words of the prompt (wrapping around), so output reads like a quote."""
    start = rng.randrange(len(words))
    return " ".join(words[(start + i) % len(words)] for i in range(n))


def _sentence(words: list[str], rng: random.Random) -> str:
    text = _word_run(words, rng, rng.randint(4, 12))
    return text[:1].upper() + text[1:] + "."


def _paragraph(words: list[str], rng: random.Random) -> str:
    # Kept short (at most ~36 words) so modest max_tokens budgets are not hit by plain replies.
    return " ".join(_sentence(words, rng) for _ in range(rng.randint(1, 3)))


def _build_content(req: _ChatRequest) -> str:
    rng = _content_rng(req)
    words = prompt_words(req.messages)
    if req.format_type == "json_schema" and req.schema is not None:
        return json.dumps(fill_schema(req.schema, words, rng), ensure_ascii=False)
    if req.format_type == "json_object":
        return json.dumps({"text": _sentence(words, rng)}, ensure_ascii=False)
    return _paragraph(words, rng)


def _malform(content: str, rng: random.Random) -> str:
    """Break valid JSON the ways real models do; the result never parses."""
    kinds: list[Callable[[str], str]] = [
        lambda s: s[: max(1, len(s) // 2)],  # cut off mid-object
        lambda s: "Sure! Here is the JSON you asked for:\n" + s,  # prose before the JSON
        lambda s: s + "\n// generated by the model",  # trailing comment
        lambda s: s.replace('"', "'"),  # single quotes
        lambda s: s[:-1] + ",}" if s.endswith("}") else s + ",",  # trailing comma
    ]
    broken = rng.choice(kinds)(content)
    try:
        json.loads(broken)
    except ValueError:
        return broken
    return "Sure! " + content  # e.g. a bare number survived the chosen kind


# --------------------------------------------------------------------------- fill_schema

MAX_DEPTH = 8  # past this, schemas take the shortest way out (null, fewest items)
MAX_RECURSION = 2  # times one $ref may enclose itself before its subtree goes minimal
MAX_VALUES = 5000  # values per document; keeps any schema's answer a sane size
_SHORT_HINTS = frozenset(
    "name names title titles keyword keywords level levels label labels tag tags category categories "
    "concept concepts subtopic subtopics".split()
)


def _break_schema(content: str) -> str:
    """Valid JSON that a schema rejects: the object loses its first field."""
    value = json.loads(content)
    if isinstance(value, dict) and value:
        value.pop(next(iter(value)))
        return json.dumps(value)
    return json.dumps({"unexpected": value})


def fill_schema(schema: dict[str, Any], words: list[str], rng: random.Random) -> Any:
    """A value valid against `schema` (as pydantic v2 emits it), with strings drawn from `words`."""
    return _Filler(schema, words or list(FALLBACK_WORDS), rng).value(schema, "", 0)


def _hint_tokens(name: str) -> set[str]:
    """`keyWords`/`key_words`/`title` -> lower-case tokens, to spot fields that want short values."""
    spaced = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name)
    return {t.lower() for t in re.split(r"[\s_\-.]+", spaced) if t}


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = {**base, **extra}
    if "properties" in base and "properties" in extra:
        merged["properties"] = {**base["properties"], **extra["properties"]}
    if "required" in base and "required" in extra:
        merged["required"] = list(dict.fromkeys([*base["required"], *extra["required"]]))
    return merged


class _Filler:
    def __init__(self, root: dict[str, Any], words: list[str], rng: random.Random) -> None:
        self.root = root
        self.words = words
        self.rng = rng
        self.ref_path: list[str] = []  # $refs being filled, outermost first
        self.budget = MAX_VALUES

    # -- schema plumbing

    def resolve(self, schema: Any) -> dict[str, Any]:
        """Follow `$ref`s and merge `allOf`, keeping sibling keywords (descriptions, bounds)."""
        if not isinstance(schema, dict):
            return {}  # `true` / `items: false` and the like: anything goes
        for _ in range(64):  # a ref chain longer than this is a cycle
            ref = schema.get("$ref")
            if not isinstance(ref, str):
                break
            siblings = {k: v for k, v in schema.items() if k != "$ref"}
            schema = _merge(self._lookup(ref), siblings)
        if isinstance(schema.get("allOf"), list):
            merged: dict[str, Any] = {}
            for part in schema["allOf"]:
                merged = _merge(merged, self.resolve(part))
            schema = _merge(merged, {k: v for k, v in schema.items() if k != "allOf"})
        return schema

    def _lookup(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#"):
            return {}  # remote refs are not fetched
        node: Any = self.root
        for part in ref[1:].split("/")[1:]:
            part = part.replace("~1", "/").replace("~0", "~")
            node = node.get(part) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else {}

    def _is_null(self, schema: Any) -> bool:
        return self.resolve(schema).get("type") == "null"

    def _choose_option(self, options: list[Any], depth: int) -> Any:
        nulls = [o for o in options if self._is_null(o)]
        others = [o for o in options if not self._is_null(o)]
        if nulls and (depth > MAX_DEPTH or not others):
            return nulls[0]
        return others[0] if others else {}

    @staticmethod
    def _type_of(schema: dict[str, Any], depth: int) -> str:
        kind = schema.get("type")
        if isinstance(kind, list):
            non_null = [k for k in kind if k != "null"]
            return "null" if not non_null or (depth > MAX_DEPTH and "null" in kind) else non_null[0]
        if isinstance(kind, str):
            return kind
        if "properties" in schema or "additionalProperties" in schema:
            return "object"
        if "items" in schema or "prefixItems" in schema:
            return "array"
        if any(k in schema for k in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")):
            return "number"
        return "string"

    # -- values

    def value(self, schema: Any, hint: str, depth: int) -> Any:
        self.budget -= 1
        if self.budget < 0:  # a runaway schema: finish with the smallest valid values
            depth = max(depth, MAX_DEPTH + 1)
        ref = schema.get("$ref") if isinstance(schema, dict) else None
        if not isinstance(ref, str):
            return self._value(self.resolve(schema), hint, depth)
        # A recursive model (a tree) may nest into itself a couple of times, then must stop.
        if self.ref_path.count(ref) >= MAX_RECURSION:
            depth = max(depth, MAX_DEPTH + 1)
        self.ref_path.append(ref)
        try:
            return self._value(self.resolve(schema), hint, depth)
        finally:
            self.ref_path.pop()

    def _value(self, schema: dict[str, Any], hint: str, depth: int) -> Any:
        if "const" in schema:
            return schema["const"]
        if isinstance(schema.get("enum"), list) and schema["enum"]:
            return self.rng.choice(schema["enum"])
        for key in ("anyOf", "oneOf"):
            if isinstance(schema.get(key), list) and schema[key]:
                return self.value(self._choose_option(schema[key], depth), hint, depth)
        kind = self._type_of(schema, depth)
        if kind == "object":
            return self.object(schema, depth)
        if kind == "array":
            return self.array(schema, hint, depth)
        if kind == "integer":
            return self.integer(schema)
        if kind == "number":
            return self.number(schema)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self.string(schema, hint)

    def object(self, schema: dict[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if isinstance(properties, dict) and properties:
            # Optional properties too: a fuller answer exercises more of the consumer.
            return {name: self.value(sub, name, depth + 1) for name, sub in properties.items()}
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict) and depth <= MAX_DEPTH:
            # A bare mapping (dict[str, X]): a few entries keyed by prompt words.
            low = int(schema.get("minProperties", 1))
            high = int(schema.get("maxProperties", max(low, 3)))
            count = self.rng.randint(min(low, high), high)
            result: dict[str, Any] = {}
            for _ in range(count * 10):
                if len(result) >= count:
                    break
                result.setdefault(self.rng.choice(self.words), self.value(extra, "", depth + 1))
            return result
        return {}

    def array(self, schema: dict[str, Any], hint: str, depth: int) -> list[Any]:
        prefix = schema.get("prefixItems")
        if isinstance(prefix, list) and prefix:  # tuples
            values = [self.value(p, hint, depth + 1) for p in prefix]
            extra = schema.get("items")
            while isinstance(extra, dict) and len(values) < int(schema.get("minItems", 0)):
                values.append(self.value(extra, hint, depth + 1))
            return values
        count = self._array_length(schema, depth)
        items = schema.get("items", {})
        if not schema.get("uniqueItems"):
            return [self.value(items, hint, depth + 1) for _ in range(count)]
        # Sets: draw until enough distinct values (few enum options may cap it below count).
        seen: dict[str, Any] = {}
        for _ in range(count * 20):
            if len(seen) >= count:
                break
            item = self.value(items, hint, depth + 1)
            seen.setdefault(json.dumps(item, sort_keys=True), item)
        return list(seen.values())

    def _array_length(self, schema: dict[str, Any], depth: int) -> int:
        if depth > MAX_DEPTH:
            return int(schema.get("minItems", 0))
        low = int(schema.get("minItems", 1))
        high = int(schema.get("maxItems", max(low, min(low + 3, 5))))
        return self.rng.randint(min(low, high), high)

    def integer(self, schema: dict[str, Any]) -> int:
        lows = [math.ceil(v) for v in _numbers(schema, "minimum")]
        lows += [math.floor(v) + 1 for v in _numbers(schema, "exclusiveMinimum")]
        highs = [math.floor(v) for v in _numbers(schema, "maximum")]
        highs += [math.ceil(v) - 1 for v in _numbers(schema, "exclusiveMaximum")]
        low, high = _open_range(max(lows, default=None), min(highs, default=None))
        low, high = math.ceil(low), math.floor(high)
        if low > high:
            return low  # unsatisfiable bounds: nothing valid exists
        step = schema.get("multipleOf")
        if isinstance(step, int) and step > 0:
            first, last = math.ceil(low / step) * step, math.floor(high / step) * step
            if first <= last:
                return first + step * self.rng.randint(0, (last - first) // step)
        return self.rng.randint(low, high)

    def number(self, schema: dict[str, Any]) -> float:
        low, high = _open_range(
            max(_numbers(schema, "minimum", "exclusiveMinimum"), default=None),
            min(_numbers(schema, "maximum", "exclusiveMaximum"), default=None),
        )
        # Two decimals read like a model's numbers; unrounded draws are the fallback.
        candidates = [round(self.rng.uniform(low, high), 2) for _ in range(5)]
        candidates += [self.rng.uniform(low, high) for _ in range(5)]
        step = schema.get("multipleOf")
        if isinstance(step, (int, float)) and step > 0:
            first, last = math.ceil(low / step), math.floor(high / step)
            candidates = [round(self.rng.randint(first, last) * step, 10)] if first <= last else []
        for value in candidates:
            if _within(value, schema):
                return value
        return (low + high) / 2

    def string(self, schema: dict[str, Any], hint: str) -> str:
        fmt = schema.get("format")
        if isinstance(fmt, str) and fmt in _FORMATS:
            return _FORMATS[fmt](self)
        if _hint_tokens(hint) & _SHORT_HINTS:
            count = self.rng.randint(1, 3)
        else:
            # Longer prompts give longer strings, up to 20 words.
            count = self.rng.randint(4, max(4, min(20, len(self.words))))
        text = _word_run(self.words, self.rng, count)
        return self._fit_length(text, schema.get("minLength"), schema.get("maxLength"))

    def _fit_length(self, text: str, min_length: Any, max_length: Any) -> str:
        low = int(min_length) if isinstance(min_length, int) else 0
        while len(text) < low:
            text += " " + _word_run(self.words, self.rng, self.rng.randint(1, 5))
        if isinstance(max_length, int) and len(text) > max_length:
            cut = text[:max_length]
            whole_words = cut.rsplit(" ", 1)[0] if " " in cut else cut
            text = whole_words if len(whole_words) >= max(low, 1) else cut
            # A hard cut may end on a space; keep the length but not the trailing whitespace.
            stripped = text.rstrip()
            text = stripped + "x" * (len(text) - len(stripped))
        return text

    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]", "", self.rng.choice(self.words).lower()) or "item"


def _numbers(schema: dict[str, Any], *keys: str) -> list[float]:
    return [schema[k] for k in keys if isinstance(schema.get(k), (int, float)) and not isinstance(schema[k], bool)]


def _open_range(low: float | None, high: float | None) -> tuple[float, float]:
    """Fill in missing bounds: 0..10 when open on both sides, 10 wide when open on one."""
    if low is None and high is None:
        return 0, 10
    if low is None:
        assert high is not None
        return (0 if high >= 0 else high - 10), high
    if high is None:
        return low, max(low, 0) + 10
    return low, high


def _within(value: float, schema: dict[str, Any]) -> bool:
    return (
        all(value >= v for v in _numbers(schema, "minimum"))
        and all(value > v for v in _numbers(schema, "exclusiveMinimum"))
        and all(value <= v for v in _numbers(schema, "maximum"))
        and all(value < v for v in _numbers(schema, "exclusiveMaximum"))
    )


def _fmt_datetime(f: _Filler) -> str:
    r = f.rng
    return f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}T{r.randint(0, 23):02d}:{r.randint(0, 59):02d}:00Z"


_FORMATS: dict[str, Callable[[_Filler], str]] = {
    "date-time": _fmt_datetime,
    "date": lambda f: _fmt_datetime(f)[:10],
    "time": lambda f: _fmt_datetime(f)[11:19],
    "duration": lambda f: f"PT{f.rng.randint(1, 90)}M",
    "uuid": lambda f: str(uuid.UUID(int=f.rng.getrandbits(128), version=4)),
    "email": lambda f: f"{f.slug()}@example.com",
    "uri": lambda f: f"https://example.com/{f.slug()}",
    "ipv4": lambda f: f"192.0.2.{f.rng.randint(1, 254)}",
    "ipv6": lambda f: f"2001:db8::{f.rng.randint(1, 0xFFFF):x}",
}


# --------------------------------------------------------------------------- HTTP


def _error(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=headers)


def _bad_request(message: str, param: str | None = None) -> web.Response:
    return _error(400, {"message": message, "type": "invalid_request_error", "param": param, "code": None})


class _Simulator:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.stats = SimulatorStats()
        self.bucket = _bucket_for(settings)
        # Separate from content RNGs so fault draws never change what a good answer says.
        self.faults = random.Random(settings.seed)
        self.recent: deque[dict[str, Any]] = deque(maxlen=settings.keep_requests)

    async def models(self, _request: web.Request) -> web.Response:
        model = {"id": SIMULATOR_MODEL, "object": "model", "owned_by": "synthstream"}
        return web.json_response({"object": "list", "data": [model]})

    async def stats_view(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats.as_dict())

    async def requests_view(self, _request: web.Request) -> web.Response:
        """What was asked lately: lets a person (or a test) see the exact prompts a stage sends."""
        return web.json_response(list(self.recent))

    async def chat_completions(self, request: web.Request) -> web.Response:
        self.stats.requests += 1
        if self.bucket is not None and (wait := self.bucket.take()) > 0:
            self.stats.rate_limited += 1
            return self._rate_limited(wait)
        if self.settings.latency > 0:
            await asyncio.sleep(self.settings.latency)
        try:
            body = await request.json()
        except ValueError:  # JSONDecodeError and UnicodeDecodeError alike
            self.stats.errors += 1
            return _bad_request("request body is not valid JSON")
        try:
            req = _parse_request(body)
            self.recent.append({"model": req.model, "messages": req.messages})
            content = _build_content(req)
        except _BadRequest as exc:
            self.stats.errors += 1
            return _bad_request(str(exc), exc.param)
        except (ValueError, TypeError, RecursionError) as exc:  # a schema fill_schema cannot follow
            self.stats.errors += 1
            return _bad_request(f"unusable response_format schema: {exc!r}"[:300], "response_format")
        if self.settings.error_rate and self.faults.random() < self.settings.error_rate:
            self.stats.errors += 1
            return _error(500, {"message": "simulated server error", "type": "server_error"})
        return web.json_response(self._completion(req, content))

    def _rate_limited(self, wait: float) -> web.Response:
        headers = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        message = (f"Rate limit reached for requests per minute (RPM): limit {self.settings.rpm}. "
                   f"Please try again in {wait:.3f}s.")
        return _error(429, {"message": message, "type": "rate_limit_error", "code": "rate_limit_exceeded"}, headers)

    def _completion(self, req: _ChatRequest, content: str) -> dict[str, Any]:
        if req.format_type != "text" and self.settings.malformed_rate and (
            self.faults.random() < self.settings.malformed_rate
        ):
            content = _malform(content, self.faults)
            self.stats.malformed += 1
        elif req.format_type != "text" and self.settings.invalid_rate and (
            self.faults.random() < self.settings.invalid_rate
        ):
            content = _break_schema(content)
            self.stats.invalid += 1
        completion_tokens = math.ceil(len(content) / CHARS_PER_TOKEN)
        finish_reason = "stop"
        if req.max_tokens is not None and completion_tokens > req.max_tokens:
            content = content[: req.max_tokens * CHARS_PER_TOKEN]
            completion_tokens = req.max_tokens
            finish_reason = "length"
            self.stats.truncated += 1
        prompt_tokens = math.ceil(sum(len(_message_text(m)) for m in req.messages) / CHARS_PER_TOKEN)
        self.stats.completed += 1
        return {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "system_fingerprint": SIMULATOR_FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
                "logprobs": None,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def create_app(settings: SimulatorSettings) -> web.Application:
    """The simulator as an aiohttp app; `app[STATS_KEY]` is its live SimulatorStats."""
    sim = _Simulator(settings)
    app = web.Application()
    app[STATS_KEY] = sim.stats
    app.router.add_get("/v1/models", sim.models)
    app.router.add_get("/stats", sim.stats_view)
    app.router.add_get("/requests", sim.requests_view)
    app.router.add_post("/v1/chat/completions", sim.chat_completions)
    return app


async def start_simulator(settings: SimulatorSettings) -> tuple[web.AppRunner, int]:
    """Serve on settings.host/port (0 = any free port); returns the runner and the bound port."""
    # In-flight requests get a little time to finish on cleanup, but not aiohttp's default minute.
    runner = web.AppRunner(create_app(settings), access_log=None, shutdown_timeout=min(10.0, settings.latency + 1.0))
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner, int(runner.addresses[0][1])


def run_simulator(settings: SimulatorSettings) -> None:
    """Serve until SIGINT/SIGTERM (blocking)."""
    asyncio.run(_serve_until_signalled(settings))


async def _serve_until_signalled(settings: SimulatorSettings) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    runner, port = await start_simulator(settings)
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    print(f"simulator listening on http://{host}:{port}/v1 (model {SIMULATOR_MODEL})", file=sys.stderr, flush=True)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@contextlib.asynccontextmanager
async def simulated_endpoint(llm: Any, latency: float = 0.2) -> AsyncIterator[str]:
    """Serve the simulator in this process and point `llm` (LLMSettings) at it meanwhile;
    for the offline demo and dry runs. Yields the base URL."""
    runner, port = await start_simulator(SimulatorSettings(port=0, latency=latency))
    saved = (llm.base_url, llm.model, llm.requests_per_minute)
    llm.base_url, llm.model, llm.requests_per_minute = f"http://127.0.0.1:{port}/v1", SIMULATOR_MODEL, 6000
    try:
        yield llm.base_url
    finally:
        llm.base_url, llm.model, llm.requests_per_minute = saved
        await runner.cleanup()
