"""The simulator's HTTP side: the aiohttp app and its routes, request parsing and validation,
the responses (completions and OpenAI-style errors), counters and the log of recent requests,
and ways to serve it (in this process, or until a signal)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import math
import random
import signal
import sys
import time
import uuid
from collections import deque
from dataclasses import dataclass
from typing import Any, AsyncIterator

from aiohttp import web

from streamer.llm.fingerprint import SIMULATOR_FINGERPRINT
from streamer.llm.simulator import batches, dialects
from streamer.llm.simulator.faults import Faults
from streamer.llm.simulator.schema_fill import fill_schema
from streamer.llm.simulator.settings import SIMULATOR_MODEL, SimulatorSettings, SimulatorStats, answering_model
from streamer.llm.simulator.words import count_tokens, message_text, paragraph, prompt_words, sentence

STATS_KEY = web.AppKey("simulator_stats", SimulatorStats)


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
    format_type: str  # "text" | "json_object" | "json_object_schema" (llama.cpp's) | "json_schema"
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
    if fmt["type"] == "json_object" and isinstance(fmt.get("schema"), dict):
        return "json_object_schema", fmt["schema"]  # llama-cpp-python's way of asking for a schema
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


def _content_rng(req: _ChatRequest) -> random.Random:
    # Same request -> same content, like a real model called with a fixed seed.
    key = json.dumps([req.model, req.messages, req.temperature, req.seed], sort_keys=True, default=str)
    return random.Random(int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big"))


def _build_content(req: _ChatRequest, settings: SimulatorSettings) -> tuple[str, bool]:
    """A good answer: built from the prompt's words, deterministic per request; and whether it is JSON."""
    rng = _content_rng(req)
    words = prompt_words(req.messages)
    format_type, schema = dialects.what_to_write(settings, req.format_type, req.schema, req.messages)
    if format_type == "text" and (word := dialects.code_word(req.messages)) is not None:
        return word, False
    if format_type == "json_schema" and schema is not None:
        return json.dumps(fill_schema(schema, words, rng), ensure_ascii=False), True
    if format_type == "json_object":
        return json.dumps({"text": sentence(words, rng)}, ensure_ascii=False), True
    return paragraph(words, rng), False


# --------------------------------------------------------------------------- HTTP


def _error(status: int, error: dict[str, Any], headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": error}, status=status, headers=headers)


def _bad_request(message: str, param: str | None = None) -> web.Response:
    return _error(400, {"message": message, "type": "invalid_request_error", "param": param, "code": None})


class _Simulator:
    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.stats = SimulatorStats()
        self.faults = Faults(settings, self.stats)
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
        started = time.time()
        self.stats.started(started)
        try:
            return await self._answer(request)
        finally:
            self.stats.ended(time.time(), started)

    async def _answer(self, request: web.Request) -> web.Response:
        if (wait := self.faults.rate_limit_wait()) > 0:
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
            self.recent.append({"model": req.model, "messages": req.messages,
                                "response_format": body.get("response_format"), "temperature": req.temperature,
                                "seed": req.seed, "max_tokens": req.max_tokens})
            if (refused := dialects.refusal(self.settings, req.format_type)) is not None:
                self.stats.refused_format += 1
                status, message = refused
                kind = "server_error" if status >= 500 else "invalid_request_error"
                return _error(status, {"message": message, "type": kind, "param": "response_format", "code": None})
            req.messages = dialects.visible_messages(self.settings, req.messages)
            prompt_tokens = count_tokens(sum(len(message_text(m)) for m in req.messages))
            if (overflow := dialects.context_error(self.settings, prompt_tokens, req.max_tokens)) is not None:
                self.stats.context_exceeded += 1
                return _error(400, {"message": overflow, "type": "invalid_request_error", "param": "messages",
                                    "code": "context_length_exceeded"})
            content, is_json = _build_content(req, self.settings)
        except _BadRequest as exc:
            self.stats.errors += 1
            return _bad_request(str(exc), exc.param)
        except (ValueError, TypeError, RecursionError) as exc:  # a schema fill_schema cannot follow
            self.stats.errors += 1
            return _bad_request(f"unusable response_format schema: {exc!r}"[:300], "response_format")
        if self.faults.server_error():
            return _error(500, {"message": "simulated server error", "type": "server_error"})
        return web.json_response(self._completion(req, content, is_json, prompt_tokens))

    def _rate_limited(self, wait: float) -> web.Response:
        headers = {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(max(1, math.ceil(wait * 1000)))}
        message = (f"Rate limit reached for requests per minute (RPM): limit {self.settings.rpm}. "
                   f"Please try again in {wait:.3f}s.")
        return _error(429, {"message": message, "type": "rate_limit_error", "code": "rate_limit_exceeded"}, headers)

    def _completion(self, req: _ChatRequest, content: str, is_json: bool, prompt_tokens: int) -> dict[str, Any]:
        if is_json:
            content = self.faults.spoil(content)
        content = dialects.dress(self.settings, content, is_json, req.messages)
        content, completion_tokens, finish_reason = self.faults.truncate(content, req.max_tokens)
        message: dict[str, Any] = {"role": "assistant", "content": content}
        if "reasoning_content" in self.settings.quirks:  # DeepSeek-R1 style: the reasoning apart
            message["reasoning_content"] = dialects.REASONING
            completion_tokens += count_tokens(len(dialects.REASONING))
        self.stats.completed += 1
        return {
            "id": f"chatcmpl-sim-{uuid.uuid4().hex[:24]}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": answering_model(req.model),
            "system_fingerprint": SIMULATOR_FINGERPRINT,
            "choices": [{
                "index": 0,
                "message": message,
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
    batches.install(app, settings.batch, sim._answer)  # noqa: SLF001 - batch requests are answered alike
    return app


# --------------------------------------------------------------------------- serving


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
